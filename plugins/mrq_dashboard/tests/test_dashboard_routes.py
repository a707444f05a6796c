"""The dashboard's hook ``mrq_dashboard_routes``: a plugin's GET route, behind the Host check and the auth of every
route; malformed routes and routes the dashboard (or another plugin) already serves are left out."""

from __future__ import annotations

import textwrap

import pytest
from conftest import DashboardProcess

ROUTES_PLUGIN = textwrap.dedent('''
    from mrq.hookspecs import hookimpl

    def health(args):
        return "ok " + args.get("x", ""), 200, {"Content-Type": "text/plain; charset=utf-8"}

    def teapot(args):
        return b"short and stout", 418, {"Content-Type": "text/plain"}

    @hookimpl(optionalhook=True)
    def mrq_dashboard_routes():
        return [{"rule": "/healthz", "name": "health", "view": health},
                {"rule": "/tea/pot", "name": "teapot", "view": teapot},
                {"rule": "/api/overview", "name": "hijack", "view": teapot},   # the dashboard's own: left out
                {"rule": "/healthz", "name": "health", "view": teapot},        # taken by the first one
                {"rule": "no-slash", "name": "bad", "view": health},           # malformed
                {"rule": "/x", "name": "Bad Name", "view": health}]
''')


@pytest.fixture(scope="module")
def with_routes(dashboard_urls, tmp_path_factory):
    folder = tmp_path_factory.mktemp("routes")
    (folder / "myproject_routes").mkdir()
    (folder / "myproject_routes" / "__init__.py").write_text("")
    (folder / "myproject_routes" / "plugin.py").write_text(ROUTES_PLUGIN)
    server = DashboardProcess(dashboard_urls, ("--plugins", "myproject_routes.plugin", "--dashboard_httpauth", "u:p"),
                              env={"PYTHONPATH": str(folder)}, auth="u:p")
    yield server
    server.stop()


def test_a_plugin_route_answers_get_behind_the_auth(with_routes, dash):
    response = with_routes.get("/healthz?x=1")
    assert (response.status, response.text) == (200, "ok 1")
    assert response.headers["Content-Type"].startswith("text/plain")
    assert with_routes.get("/tea/pot").status == 418
    assert with_routes.get("/healthz", auth=None).status == 401                       # the dashboard's auth
    assert with_routes.get("/healthz", headers={"Host": "evil.example"}).status == 400  # and its Host check
    assert with_routes.request("POST", "/healthz", body={}).status in (403, 405)       # GET only


def test_routes_taken_or_malformed_are_left_out(with_routes, dash):
    assert with_routes.api("overview")["panels"] == []  # still the dashboard's
    assert with_routes.get("/x").status == 404
    log = "".join(with_routes.stderr)
    assert "route /api/overview (hijack) of a plugin is taken" in log
    assert "route /healthz (health) of a plugin is taken" in log
    assert "route 'no-slash' needs a rule" in log
