"""The dashboard's hooks, implemented by other plugins: the third-party panel of docs/plugins.md (run as it is
written there), a page and a job column; and that such a plugin still loads where the dashboard is not."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from conftest import TASKS, DashboardProcess
from mrq.config import get_config
from mrq.job import queue_job

DOCS = Path(__file__).parents[3] / "docs" / "plugins.md"

OTHER_PLUGIN = textwrap.dedent('''
    from mrq.hookspecs import hookimpl

    def fetch(args):
        link = {"text": "failed jobs", "link": "jobs?status=failed"}
        return {"columns": ["name", "link"], "rows": [["<b>bold?</b>", link]], "text": "arg=" + args.get("x", "")}

    @hookimpl(optionalhook=True)
    def mrq_dashboard_pages():
        return [{"name": "extra", "title": "Extra page", "fetch": fetch}, {"name": "Bad Name!", "fetch": fetch}]

    @hookimpl(optionalhook=True)
    def mrq_dashboard_job_columns():
        return [{"name": "a", "title": "Param a", "field": "params.a"}]
''')


def _docs_panel() -> str:
    text = DOCS.read_text()
    block = re.search(r'```python\n("""myproject/mrq_deploy_panel\.py.*?)```', text, re.S)
    assert block, "the third-party panel example is missing from docs/plugins.md"
    return block.group(1)


@pytest.fixture(scope="module")
def with_plugins(dashboard_urls, tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugins")
    (folder / "myproject").mkdir()
    (folder / "myproject" / "__init__.py").write_text("")
    (folder / "myproject" / "mrq_deploy_panel.py").write_text(_docs_panel())
    (folder / "myproject" / "other_dashboard_plugin.py").write_text(OTHER_PLUGIN)
    plugins = "myproject.mrq_deploy_panel,myproject.other_dashboard_plugin"
    # As docs/plugins.md says: `mrq-dashboard --plugins myproject.mrq_deploy_panel` from the project's folder.
    server = DashboardProcess(dashboard_urls, ("--plugins", plugins), env={"RELEASE": "2026.11.3"}, cwd=folder)
    yield server
    server.stop()


def test_the_documented_panel_appears_on_the_overview_and_failed_job_pages(with_plugins, dash):
    panels = with_plugins.api("overview")["panels"]
    assert panels[0]["title"] == "Deploy" and panels[0]["rows"][0] == ["release", "2026.11.3"]
    job = queue_job(TASKS + "Add", {"a": 1, "b": 1})
    assert with_plugins.api(f"jobs/{job}")["panels"] == []               # only for failed jobs
    from mrq.context import connections
    connections.mongodb_jobs["mrq_jobs"].update_one({"_id": job}, {"$set": {"status": "failed"}})
    assert "2026.11.3" in with_plugins.api(f"jobs/{job}")["panels"][0]["text"]


def test_pages_and_columns_of_another_plugin(with_plugins, dash):
    config = with_plugins.api("config")
    assert config["pages"] == [{"name": "extra", "title": "Extra page"}]         # the malformed one is dropped
    assert config["columns"] == [{"name": "a", "title": "Param a", "field": "params.a"}]
    page = with_plugins.api("p/extra?x=1")
    assert page["columns"] == ["name", "link"] and page["text"] == "arg=1"
    assert page["rows"][0][0] == "<b>bold?</b>"                                  # data: the browser shows text
    assert with_plugins.get("/p/extra").status == 200 and "Extra page" in with_plugins.get("/").text
    assert with_plugins.get("/api/p/nothing").status == 404
    queue_job(TASKS + "Add", {"a": 42, "b": 1})
    assert with_plugins.api("jobs")["jobs"][0]["extra"] == {"a": 42}


def test_a_plugin_implementing_dashboard_hooks_loads_without_the_dashboard(tmp_path, monkeypatch):
    (tmp_path / "myproject_x").mkdir()
    (tmp_path / "myproject_x" / "mrq_deploy_panel.py").write_text(_docs_panel())
    monkeypatch.syspath_prepend(str(tmp_path))
    config = get_config("worker", argv=[], env={}, extra={"plugins": ["myproject_x.mrq_deploy_panel"]})
    assert "myproject_x.mrq_deploy_panel" in config.plugin_manager.enabled
