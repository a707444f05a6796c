"""The dashboard's own hooks, through which other plugins add pages, panels, job columns and routes.

The dashboard declares them with MRQ's ``mrq_add_hookspecs`` hook. A plugin implements them with
``mrq.hookspecs.hookimpl``; mark the implementations ``optionalhook=True`` so the plugin still loads in a
process where the dashboard is not enabled (a worker)::

    from mrq.hookspecs import hookimpl

    @hookimpl(optionalhook=True)
    def mrq_dashboard_panels(page, job):
        if page == "overview":
            return [{"title": "Deploy", "rows": [["version", "2026.11.3"]]}]
        return []

Everything a plugin returns is shown as **text** (never as HTML), so job data in a panel cannot inject
markup. A cell or value may be a plain value, or ``{"text": ..., "link": "jobs?path=tasks.Add"}``: a link
to a page of the dashboard (a relative path; anything else is shown without its link).
"""

from __future__ import annotations

from typing import Any

from mrq.hookspecs import hookspec

__all__ = ["DashboardSpecs"]


class DashboardSpecs:
    """Hooks called by the dashboard process (``mrq-dashboard``), on each request that needs them."""

    @hookspec
    def mrq_dashboard_pages(self) -> list[dict[str, Any]]:
        """Pages to add to the dashboard's menu.

        :return: a list of dicts:

            * ``name``: the page's path, ``[a-z0-9_-]+`` (served at ``/p/<name>``, data at ``/api/p/<name>``);
            * ``title``: the menu entry and heading;
            * ``fetch``: a callable ``fetch(args)`` taking the page's query arguments (a dict of text) and
              returning ``{"columns": [titles], "rows": [[cells]]}`` (optionally ``"text"``: a paragraph
              above the table). Called in the dashboard process, with MRQ's context set up (use
              ``mrq.context.connections``);
            * ``description`` (optional): one sentence under the heading.
        """

    @hookspec
    def mrq_dashboard_panels(self, page: str, job: dict[str, Any] | None) -> list[dict[str, Any]]:
        """Panels to add to a page of the dashboard.

        :param page: ``"overview"`` or ``"job"``.
        :param job: on the job page, the job document (ids and dates are still BSON types); else ``None``.
        :return: a list of ``{"title": str, "rows": [[label, value], ...]}`` or ``{"title": str, "text": str}``.
        """

    @hookspec
    def mrq_dashboard_job_columns(self) -> list[dict[str, Any]]:
        """Columns to add to the jobs list.

        :return: a list of ``{"name": str, "title": str, "field": "dotted.path.in.the.job.document"}``; the
            value at ``field`` is shown as text (JSON for objects).
        """

    @hookspec
    def mrq_dashboard_routes(self) -> list[dict[str, Any]]:
        """Routes of your own, answered by the dashboard (behind its Host check and ``--dashboard_httpauth``, like
        every route): a Prometheus ``/metrics``, a health check, an export.

        :return: a list of dicts:

            * ``rule``: the path, ``/`` then ``[A-Za-z0-9_./-]`` (``/metrics``); one the dashboard serves itself
              (``/``, ``/api/...``, ``/static/...``, its pages) is refused, logged, and the dashboard's stays;
            * ``name``: a name for the route, ``[a-z0-9_-]+`` (unique across plugins);
            * ``view``: a callable ``view(args)`` taking the query arguments (a dict of text) and returning
              ``(body, status, headers)``: ``bytes`` or ``str``, an HTTP status code, a dict of headers
              (``Content-Type`` at least). Called per ``GET`` request (no other method), in the dashboard
              process, with MRQ's context set up.

        Called once, when the dashboard's application is created. What a route answers is sent as it is: unlike
        pages and panels, a route is not shown inside the dashboard's pages, so escaping is the view's concern.
        """
