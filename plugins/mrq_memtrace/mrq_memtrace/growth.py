"""Per-job memory growth (``--trace_memory``): object counts by type before and after a job (objgraph), the
process's resident memory difference, and a back-reference chain graph of a leaked object.

Only meaningful when jobs do not overlap (``--greenlets 1``): everything that appears in the process during
the job is charged to it.
"""

from __future__ import annotations

import copyreg
import fnmatch
import gc
import linecache
import os
import random
import re
import shutil
import subprocess
import urllib.parse
from typing import Any

import objgraph
import psutil

__all__ = ["clean_caches", "type_counts", "growth", "rss", "backref_graph", "GRAPHVIZ_HINT"]

GRAPHVIZ_HINT = ("graphviz's `dot` is not on PATH: install graphviz (Debian/Ubuntu: apt-get install graphviz; "
                 "macOS: brew install graphviz) to get a PNG, or render the .dot file elsewhere")

_process = psutil.Process()


def clean_caches() -> None:
    """Empty the standard library's caches, so that what they keep does not pass for a leak."""
    re.purge()
    linecache.clearcache()
    urllib.parse.clear_cache()
    copyreg.clear_extension_cache()
    compile_pattern = getattr(fnmatch, "_compile_pattern", None)
    if compile_pattern is not None and hasattr(compile_pattern, "cache_clear"):
        compile_pattern.cache_clear()


def type_counts() -> dict[str, int]:
    """Number of objects tracked by the garbage collector, by type (``module.Class``; builtins unprefixed)."""
    gc.collect()
    counts = objgraph.typestats(shortnames=False)
    return {name.removeprefix("builtins."): n for name, n in counts.items()}


def growth(before: dict[str, int], after: dict[str, int], limit: int) -> list[dict[str, Any]]:
    """The ``limit`` types whose count grew most: ``type``, ``count`` (after), ``delta``; largest first."""
    grown = [(name, count, count - before.get(name, 0)) for name, count in after.items()
             if count > before.get(name, 0)]
    grown.sort(key=lambda g: (-g[2], g[0]))
    return [{"type": name, "count": count, "delta": delta} for name, count, delta in grown[:limit]]


def rss() -> int:
    """Resident memory of the process, in bytes."""
    return int(_process.memory_info().rss)


def backref_graph(type_name: str, folder: str, name: str) -> tuple[str | None, str]:
    """Draw the chain of references that keeps a random object of type ``type_name`` alive, from a module.

    Writes ``folder/name.png`` when graphviz's ``dot`` is installed, else ``folder/name.dot``.
    :return: (path written or None, a sentence for the log).
    """
    objects = objgraph.by_type(type_name)
    if not objects:
        return None, f"no object of type {type_name!r} in memory: nothing to draw"
    target = random.choice(objects)
    chain = objgraph.find_backref_chain(target, objgraph.is_proper_module, extra_ignore=(id(objects),))
    del objects
    os.makedirs(folder, exist_ok=True)
    dot_path = os.path.join(folder, re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".dot")
    with open(dot_path, "w", encoding="utf-8") as f:
        objgraph.show_chain(chain, output=f, shortnames=False)
    del chain, target
    dot = shutil.which("dot")
    if dot is None:
        return dot_path, f"wrote {dot_path}; {GRAPHVIZ_HINT}"
    png_path = dot_path[:-4] + ".png"
    proc = subprocess.run([dot, "-Tpng", "-o", png_path, dot_path], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return dot_path, f"wrote {dot_path}; dot failed ({proc.returncode}): {proc.stderr.strip()[:300]}"
    os.remove(dot_path)
    return png_path, f"wrote {png_path}"
