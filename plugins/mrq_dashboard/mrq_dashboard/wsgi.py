"""The dashboard as a WSGI application for another server, e.g. gunicorn with gevent workers::

    gunicorn -k gevent -w 2 -b 127.0.0.1:5555 'mrq_dashboard.wsgi:app'

Configured like every MRQ command but without a command line: ``MRQ_*`` variables and ``mrq-config.py``
(``MRQ_DASHBOARD_HTTPAUTH``, ``MRQ_DASHBOARD_READONLY``, ``MRQ_DASHBOARD_TRUST_PROXY=1`` behind a proxy
that sets ``X-Forwarded-Prefix``...). Several gunicorn workers share the CSRF token through Redis.
"""

from __future__ import annotations

from mrq_dashboard.cli import load_config, make_wsgi_app

__all__ = ["app"]

app = make_wsgi_app(load_config([], prog="mrq_dashboard.wsgi"))
