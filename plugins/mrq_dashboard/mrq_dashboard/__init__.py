"""mrq-dashboard: see and control every MRQ job, queue and worker from a browser, or through its JSON API.

``mrq-dashboard`` serves it (:mod:`mrq_dashboard.cli`); :func:`mrq_dashboard.app.create_app` builds the Flask
application (for gunicorn: :mod:`mrq_dashboard.wsgi`). Other plugins add pages, panels and job columns through
the hooks of :mod:`mrq_dashboard.hookspecs`.
"""

__version__ = "1.0.0"
