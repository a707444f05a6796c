"""A host scrape of ~2,000 series from 2 processes' files stays fast (bench/scrape.py; the figure in
docs/performance.md is its best time on an idle-ish machine: the bound here is loose, for a loaded CI)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "scrape.py"


def test_a_scrape_of_2000_series_from_two_processes():
    spec = importlib.util.spec_from_file_location("mrq_metrics_bench_scrape", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(2, 36)
    assert result["series"] >= 2000
    assert result["best_ms"] < 500, result
