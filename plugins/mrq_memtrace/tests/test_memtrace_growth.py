"""Per-job growth helpers, in this process."""

from __future__ import annotations

import re

from mrq_memtrace.growth import clean_caches, growth, type_counts


class Kept:
    pass


def test_growth_lists_the_types_that_grew_largest_first():
    before = {"dict": 10, "a.B": 5, "list": 3}
    after = {"dict": 12, "a.B": 105, "list": 1, "new.Type": 7}
    assert growth(before, after, 2) == [{"type": "a.B", "count": 105, "delta": 100},
                                        {"type": "new.Type", "count": 7, "delta": 7}]
    assert growth(after, after, 5) == []


def test_type_counts_see_instances_of_a_class_by_its_full_name():
    name = f"{__name__}.Kept"
    before = type_counts()
    kept = [Kept() for _ in range(250)]
    after = type_counts()
    assert after[name] - before.get(name, 0) == 250
    assert "dict" in after and "builtins.dict" not in after
    del kept


def test_clean_caches_empties_the_regex_cache():
    re.compile(r"memtrace-\d+-cache-probe")
    assert re._cache  # type: ignore[attr-defined]
    clean_caches()
    assert not re._cache  # type: ignore[attr-defined]
