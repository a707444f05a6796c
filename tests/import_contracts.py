"""Import-linter contract type ``plugin_api`` (``lint-imports``, configured in pyproject.toml).

Each plugin may import, from the kernel, only the names that docs/plugins.md lists in its table "Kernel names a
plugin may import". The plugins' source files are read with :mod:`ast` (imports inside functions included, as
grimp sees them); a broken contract names each import to change, with its file and line, and where the name is
plugin API instead when it is somewhere else (``mrq.runtime.get_broker`` -> ``mrq.context``).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from importlinter import Contract, ContractCheck, fields, output

__all__ = ["PluginApiContract", "Violation", "documented_api", "check_files", "API_HEADING"]

API_HEADING = "### Kernel names a plugin may import"
_ROW = re.compile(r"^\|\s*`(mrq(?:\.\w+)*)`\s*\|(.*)\|\s*$")
#: The cell of a module whose every public name (its ``__all__``) is plugin API.
EVERY_NAME = "every public name"


def documented_api(doc: str) -> dict[str, frozenset[str] | None]:
    """The table under :data:`API_HEADING`: module -> the names a plugin may import (``None``: every public name)."""
    if API_HEADING not in doc:
        raise ValueError(f"no section {API_HEADING!r} in the plugin documentation")
    api: dict[str, frozenset[str] | None] = {}
    for line in doc.split(API_HEADING, 1)[1].splitlines()[1:]:
        if line.startswith("#"):
            break
        row = _ROW.match(line.strip())
        if row:
            module, cell = row.groups()
            api[module] = None if EVERY_NAME in cell else frozenset(re.findall(r"`([\w.]+)`", cell))
    if not api:
        raise ValueError(f"the section {API_HEADING!r} has no table row | `mrq.module` | `name`, ... |")
    return api


@dataclass(frozen=True)
class Violation:
    """One import of a plugin that is not plugin API."""

    file: str
    line: int
    statement: str
    module: str
    name: str | None  # None: the whole module (``import mrq.x``, ``from mrq import x``)
    hint: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: `{self.statement}`: {self.hint}"


def _kernel_imports(tree: ast.AST) -> Iterator[tuple[int, str, str | None, str]]:
    """(line, module, name or None for a whole module, statement) of each absolute import of ``mrq``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "mrq" or alias.name.startswith("mrq."):
                    yield node.lineno, alias.name, None, f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module != "mrq" and not node.module.startswith("mrq."):
                continue
            for alias in node.names:
                statement = f"from {node.module} import {alias.name}"
                submodule = f"{node.module}.{alias.name}"
                if importlib.util.find_spec(node.module) and _is_module(submodule):
                    yield node.lineno, submodule, None, statement
                else:
                    yield node.lineno, node.module, alias.name, statement


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _public(module: str) -> frozenset[str]:
    """The public names of a kernel module: its ``__all__``."""
    return frozenset(getattr(importlib.import_module(module), "__all__", ()))


def _allowed(api: dict[str, frozenset[str] | None], module: str, name: str | None) -> bool:
    if module not in api:
        return False
    names = api[module]
    if name is None:
        return names is None
    return name in (_public(module) if names is None else names)


def _offered_by(api: dict[str, frozenset[str] | None], name: str) -> list[str]:
    """The API modules where ``name`` may be imported from."""
    return [module for module in sorted(api) if _allowed(api, module, name)]


def _hint(api: dict[str, frozenset[str] | None], module: str, name: str | None) -> str:
    where = 'docs/plugins.md, "Kernel names a plugin may import"'
    if name is None:
        if module in api:
            return (f"only some names of {module} are plugin API: import them by name "
                    f"(`from {module} import ...`, see {where})")
        return f"{module} is not plugin API ({where})"
    other = [m for m in _offered_by(api, name) if m != module]
    if other:
        return f"{name} is plugin API in {' or '.join(other)}: import it from there, not from {module}"
    what = f"{module}.{name} is not plugin API" if module in api else f"{module} is not plugin API"
    return (f"{what}: use a documented name or a hook ({where}); if plugins need it, document it there "
            "(the kernel then keeps it)")


def check_files(files: Iterable[Path], api: dict[str, frozenset[str] | None], root: Path) -> list[Violation]:
    """The imports of ``files`` that ``api`` does not allow."""
    found = []
    for path in sorted(files):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for line, module, name, statement in _kernel_imports(tree):
            if not _allowed(api, module, name):
                found.append(Violation(os.path.relpath(path, root), line, statement, module, name,
                                       _hint(api, module, name)))
    return found


def _package_files(package: str) -> list[Path]:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"plugin package {package!r} is not importable (install it: make venv)")
    return [p for folder in spec.submodule_search_locations for p in Path(folder).rglob("*.py")]


class PluginApiContract(Contract):
    """Plugins import from the kernel only the names the plugin documentation lists.

    Options: ``plugins`` (their top-level packages), ``api_doc`` (the Markdown file with the table).
    """

    type_name = "plugin_api"

    plugins = fields.ListField(subfield=fields.StringField())
    api_doc = fields.StringField()

    def check(self, graph: Any, verbose: bool) -> ContractCheck:
        api = documented_api(Path(str(self.api_doc)).read_text(encoding="utf-8"))
        files = [p for package in self.plugins for p in _package_files(str(package))]  # type: ignore[attr-defined]
        violations = check_files(files, api, Path.cwd())
        return ContractCheck(kept=not violations, metadata={"violations": violations})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for violation in check.metadata["violations"]:
            output.print_error(str(violation), bold=False)
        output.new_line()
        output.print("Plugins cooperate with the kernel through hooks and the names of that table only, so that "
                     "the kernel's other modules can change without breaking them.")
