"""The plugin-API contract of `lint-imports` (tests/import_contracts.py): what it reads in docs/plugins.md, and that
a broken one names the import to change. `make lint` runs the contracts themselves on the real plugins."""

from __future__ import annotations

from pathlib import Path

from tests.import_contracts import check_files, documented_api

ROOT = Path(__file__).resolve().parent.parent
API = documented_api((ROOT / "docs" / "plugins.md").read_text(encoding="utf-8"))


def test_the_documented_api_is_the_table_of_docs_plugins_md():
    assert API["mrq.hookspecs"] == {"hookimpl", "hookspec"}
    assert API["mrq.context"] is None  # every public name
    assert "mrq.runtime" not in API and "mrq.worker" in API


def test_a_plugin_importing_an_undocumented_name_is_told_which_import_to_change(tmp_path):
    plugin = tmp_path / "mrq_x" / "plugin.py"
    plugin.parent.mkdir()
    plugin.write_text(
        "from mrq.hookspecs import hookimpl\n"
        "from mrq import status as st\n"
        "from mrq.version import __version__\n"
        "from mrq.runtime import get_broker\n"
        "\n"
        "def later():\n"
        "    from mrq.job import _jobs_collection, queue_job\n"
        "    import mrq.worker\n"
        "    from mrq.context import _state\n")
    found = [str(v) for v in check_files([plugin], API, tmp_path)]
    assert found == [
        "mrq_x/plugin.py:4: `from mrq.runtime import get_broker`: get_broker is plugin API in mrq.context: import it "
        "from there, not from mrq.runtime",
        "mrq_x/plugin.py:7: `from mrq.job import _jobs_collection`: mrq.job._jobs_collection is not plugin API: use a "
        'documented name or a hook (docs/plugins.md, "Kernel names a plugin may import"); if plugins need it, '
        "document it there (the kernel then keeps it)",
        "mrq_x/plugin.py:8: `import mrq.worker`: only some names of mrq.worker are plugin API: import them by name "
        '(`from mrq.worker import ...`, see docs/plugins.md, "Kernel names a plugin may import")',
        "mrq_x/plugin.py:9: `from mrq.context import _state`: mrq.context._state is not plugin API: use a documented "
        'name or a hook (docs/plugins.md, "Kernel names a plugin may import"); if plugins need it, document it there '
        "(the kernel then keeps it)",
    ]
