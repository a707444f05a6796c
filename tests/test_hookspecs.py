"""Meta-tests of ``mrq/hookspecs.py``: every hook is typed, documented, tested and described in docs/plugins.md."""

from __future__ import annotations

import ast
import inspect
import re
import typing
from pathlib import Path

import pytest

from mrq import hookspecs

ROOT = Path(__file__).resolve().parent.parent
SPECS = {name: func for name, func in inspect.getmembers(hookspecs, inspect.isfunction)
         if name.startswith("mrq_")}
HOOK_NAMES = sorted(SPECS)


def test_there_are_hookspecs():
    assert len(HOOK_NAMES) >= 10
    # Functions named mrq_* are all hookspecs, and every hookspec is named mrq_*.
    for name, func in SPECS.items():
        assert hasattr(func, f"{hookspecs.PROJECT}_spec"), f"{name} is not marked with @hookspec"
    unmarked = [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction)
                if hasattr(f, f"{hookspecs.PROJECT}_spec") and not n.startswith("mrq_")]
    assert not unmarked


@pytest.mark.parametrize("name", HOOK_NAMES)
def test_hookspec_has_a_docstring_documenting_its_arguments(name):
    func = SPECS[name]
    doc = inspect.getdoc(func)
    assert doc and len(doc) > 40, f"{name} has no real docstring"
    for param in inspect.signature(func).parameters:
        assert f":param {param}:" in doc, f"{name} docstring does not document {param!r}"


@pytest.mark.parametrize("name", HOOK_NAMES)
def test_hookspec_is_fully_annotated(name):
    func = SPECS[name]
    sig = inspect.signature(func)
    for param in sig.parameters.values():
        assert param.annotation is not inspect.Parameter.empty, f"{name}({param.name}) has no annotation"
    assert sig.return_annotation is not inspect.Parameter.empty, f"{name} has no return annotation"
    # The annotations (strings, under `from __future__ import annotations`) name real types.
    from bson import ObjectId

    from mrq.config import Config, Option
    from mrq.job import Job
    from mrq.worker import Worker

    namespace = {**vars(hookspecs), "ObjectId": ObjectId, "Config": Config, "Option": Option, "Job": Job,
                 "Worker": Worker}
    hints = typing.get_type_hints(func, globalns=namespace)
    assert set(hints) == set(sig.parameters) | {"return"}


def test_module_docstring_lists_every_hook_in_a_phase():
    doc = hookspecs.__doc__ or ""
    for name in HOOK_NAMES:
        assert f"``{name}``" in doc, f"{name} missing from the phases of the hookspecs module docstring"


def _tested_names() -> set[str]:
    """Strings in the names and bodies of the test functions of tests/test_plugins.py.

    A module-level constant (a list of hook names) counts for the tests whose body uses it.
    """
    tree = ast.parse((ROOT / "tests" / "test_plugins.py").read_text())
    constants: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            strings = {n.value for n in ast.walk(node.value) if isinstance(n, ast.Constant)
                       and isinstance(n.value, str)}
            for target in targets:
                if isinstance(target, ast.Name):
                    constants[target.id] = strings
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            found.add(node.name)
            for sub in ast.walk(node):
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    found.add(sub.value)
                elif isinstance(sub, ast.Name) and sub.id in constants:
                    found |= constants[sub.id]
    return found


@pytest.mark.parametrize("name", HOOK_NAMES)
def test_hook_is_tested_in_test_plugins(name):
    assert any(name in text for text in _tested_names()), \
        f"{name} appears in no test function (name or body) of tests/test_plugins.py"


def _doc_headings() -> list[str]:
    text = (ROOT / "docs" / "plugins.md").read_text()
    return [line for line in text.splitlines() if re.match(r"#{2,4} ", line)]


@pytest.mark.parametrize("name", HOOK_NAMES)
def test_hook_has_a_section_in_docs(name):
    args = ", ".join(inspect.signature(SPECS[name]).parameters)
    signature = f"{name}({args})"
    headings = [h for h in _doc_headings() if name in h]
    assert headings, f"docs/plugins.md has no section heading for {name}"
    assert any(signature in h for h in headings), \
        f"the docs/plugins.md heading of {name} should show its arguments: {signature}; found {headings}"


def test_hook_markers_are_public():
    import mrq.hookspecs as public

    assert public.hookimpl.project_name == "mrq"
    assert public.hookspec.project_name == "mrq"
