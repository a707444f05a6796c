"""Property-based HTTP tests of every route of the dashboard's API, driven by its own OpenAPI description
(what schemathesis does, with hypothesis and the spec served at /api/openapi.json): whatever the query
parameters, path parameters and JSON bodies, the answer is JSON, and never a 500."""

from __future__ import annotations

import json
import string
import urllib.parse

import pytest
from conftest import TASKS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mrq.job import queue_job

pytestmark = pytest.mark.filterwarnings("ignore")

#: Text that hits the filters' corners: operators, regex metacharacters, ids, dates, JSON, huge numbers.
TRICKY = st.sampled_from([
    "", " ", "$where", '{"$gt": ""}', '{"$where": "1"}', ".*", "(a+)+$", "[", "\\", "%00", "q/", "*", "tasks.*",
    "0" * 24, "6b0b0000000000000000abcd", "zz", "-1", "0", "1e309", "99999999999999999999", "2026-13-40",
    "2026-11-28T10:00:00", '{"a": 1}', "[1]", "null", "<script>alert(1)</script>", "é", "\ud7ff", "a,b,,c",
    "waiting", "failing", "running", "done", "stopped", "success"])
TEXT = st.one_of(TRICKY, st.text(alphabet=string.printable, max_size=40))
SPEC: dict = {}


def _spec(dashboard) -> dict:
    if not SPEC:
        SPEC.update(dashboard.api("openapi.json"))
    return SPEC


def _routes(method: str) -> list[tuple[str, list[str]]]:
    from mrq_dashboard.openapi import openapi_spec

    paths = openapi_spec("test")["paths"]
    return [(path, [p["name"] for p in ops[method].get("parameters", []) if p.get("in") == "query"])
            for path, ops in paths.items() if method in ops]


def _fill(path: str, values: list[str]) -> str:
    parts = path.split("/")
    it = iter(values)
    return "/".join(urllib.parse.quote(next(it, "x"), safe="") if p.startswith("{") else p for p in parts)


def _check(response, route: str) -> None:
    assert response.status < 500, (route, response.status, response.text[:500])
    if response.status >= 400:
        assert "error" in response.json(), (route, response.text[:500])


@pytest.mark.parametrize("route, params", _routes("get"), ids=[r for r, _ in _routes("get")])
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_get_routes_never_answer_500(dashboard, dash, route, params, data):
    query = {name: data.draw(TEXT, label=name) for name in params if data.draw(st.booleans(), label="use " + name)}
    path_values = [data.draw(TEXT, label="path") for _ in range(route.count("{"))]
    url = _fill(route, path_values) + ("?" + urllib.parse.urlencode(query) if query else "")
    _check(dashboard.get(url), route)


JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT),
                    lambda children: st.one_of(st.lists(children, max_size=3),
                                               st.dictionaries(TEXT, children, max_size=3)), max_leaves=8)


@pytest.mark.parametrize("route", [r for r, _ in _routes("post")])
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_post_routes_never_answer_500(dashboard, dash, route, data):
    job = str(queue_job(TASKS + "Add", {"a": 1, "b": 1}))
    values = [data.draw(st.one_of(st.just(job), TEXT), label="path") for _ in range(route.count("{"))]
    body = data.draw(st.one_of(JSON, st.dictionaries(st.sampled_from(
        ["queue", "status", "path", "worker", "exceptiontype", "id", "params", "after", "before", "$where"]),
        TEXT, max_size=4)), label="body")
    raw = json.dumps(body).encode() if data.draw(st.booleans(), label="valid json") else b"{not json"
    response = dashboard.request("POST", _fill(route, values), raw=raw, headers={"X-CSRF-Token": dashboard.token})
    _check(response, route)
