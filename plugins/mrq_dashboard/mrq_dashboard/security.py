"""The dashboard's protections: the Host check, HTTP Basic auth on every route, CSRF token on every POST,
read-only mode, security headers, and the refusal to listen on a public address without auth.

* First of all, a request whose ``Host`` is not allowed (:mod:`mrq_dashboard.hosts`,
  ``--dashboard_allowed_hosts``) answers 400, on every route: with DNS rebinding, a page of another site
  would otherwise be same-origin with the dashboard. Refusals are logged (a warning per host and minute).
* ``--dashboard_httpauth user:password``: every route, static files included, answers 401 without it.
* Every POST needs the header ``X-CSRF-Token`` equal to ``csrf_token`` of ``GET /api/config`` (403 otherwise).
  The token is shared by every dashboard process of one Redis (stored once, ``SET NX``, under the MRQ
  prefix), so it also works behind a load balancer; a page of another site cannot read it (no CORS, and the
  Host check stops DNS rebinding), so it cannot forge the header.
* ``--dashboard_readonly``: every POST answers 403.
* Headers: a Content-Security-Policy allowing scripts, styles and connections to this origin only (no
  inline script, no ``eval``), ``frame-ancestors 'none'`` and ``X-Frame-Options: DENY``,
  ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: same-origin``; API answers are not cached.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
import secrets
import socket
import time
from typing import Any

from flask import Flask, Response, jsonify, request

from mrq_dashboard.hosts import AllowedHosts, host_name

__all__ = ["install", "csrf_token_for", "is_loopback", "CSP", "check_listen_address", "host_refusal"]

log = logging.getLogger("mrq.dashboard")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def csrf_token_for(broker: Any) -> str:
    """The CSRF token of this MRQ installation (created in Redis on first use; per process if Redis fails)."""
    key = broker.key("dashboard", "csrf")
    try:
        broker.redis.set(key, secrets.token_urlsafe(32), nx=True)
        value = broker.redis.get(key)
        return value.decode() if isinstance(value, bytes) else str(value)
    except Exception as exc:  # noqa: BLE001 - still protected, only not shared between processes
        log.warning("Dashboard: could not share the CSRF token through Redis (%s); using one per process", exc)
        return secrets.token_urlsafe(32)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    if not host:  # every interface
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except OSError:
            return False


def check_listen_address(ip: str, httpauth: str, allow_public: bool) -> str | None:
    """Why the dashboard must not listen on ``ip``, or ``None`` if it may."""
    if httpauth or allow_public or is_loopback(ip):
        return None
    return (f"Refusing to serve the dashboard on {ip or 'every interface'} without authentication: anyone who "
            "reaches this port could cancel and requeue your jobs. Set --dashboard_httpauth user:password, or "
            "listen on 127.0.0.1 (the default), or pass --dashboard_allow_public if a proxy in front of it "
            "authenticates users.")


def _authorized(expected: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return False
    try:
        given = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


#: Seconds between two warnings about the same refused Host.
REFUSAL_LOG_INTERVAL = 60.0


def host_refusal(header: str, api: bool) -> Response:
    """The 400 answer to a request whose ``Host`` is not allowed: JSON for the API, plain text otherwise."""
    shown = header if len(header) <= 100 else header[:100] + "..."
    name = host_name(header)
    message = (f"Host {shown!r} is not allowed: this dashboard only answers the names it knows (the check against "
               f"DNS rebinding). If you reach it by this name, add {name or 'the name (without the port)'} to "
               "--dashboard_allowed_hosts (MRQ_DASHBOARD_ALLOWED_HOSTS, or DASHBOARD_ALLOWED_HOSTS in "
               "mrq-config.py) and restart it.")
    response = jsonify({"error": message}) if api else Response(message + "\n", mimetype="text/plain")
    response.status_code = 400
    response.headers["Cache-Control"] = "no-store"
    return response


def install(app: Flask, httpauth: str, readonly: bool, csrf_token: Any,
            allowed_hosts: AllowedHosts | None = None) -> None:
    """Register the checks and headers on ``app``; ``csrf_token`` is a callable returning the token.

    :param allowed_hosts: the Host names answered (``None``: the default, :class:`AllowedHosts` ``()``).
    """
    hosts = AllowedHosts() if allowed_hosts is None else allowed_hosts
    logged: dict[str, tuple[float, int]] = {}  # refused host -> (time of its last warning, refusals since)

    def log_refusal(header: str) -> None:
        key = (host_name(header) or header)[:100]
        now = time.monotonic()
        last, since = logged.get(key, (float("-inf"), 0))
        if now - last < REFUSAL_LOG_INTERVAL:
            logged[key] = (last, since + 1)
            return
        if len(logged) >= 1000:  # many hosts: forget them rather than grow
            logged.clear()
        logged[key] = (now, 0)
        log.warning("Dashboard: refused %s %s from %s: Host %r is not allowed (allowed: %s)%s. A DNS rebinding "
                    "attempt, or a name of the dashboard it does not know: then add it to "
                    "--dashboard_allowed_hosts.", request.method, request.path, request.remote_addr, header[:100],
                    hosts, f"; {since} more refusals of it since the last warning" if since else "")

    @app.before_request
    def check_request() -> Response | tuple[Response, int] | None:
        header = request.environ.get("HTTP_HOST")
        if not hosts.allows(header):  # before anything else: auth, CSRF, static files, the routes
            log_refusal(str(header))
            return host_refusal(str(header), request.path.startswith("/api/"))
        if httpauth and not _authorized(httpauth):
            response = jsonify({"error": "Authentication required (HTTP Basic, --dashboard_httpauth)."})
            response.status_code = 401
            response.headers["WWW-Authenticate"] = 'Basic realm="MRQ dashboard", charset="UTF-8"'
            return response
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            if readonly:
                return jsonify({"error": "This dashboard is read-only (--dashboard_readonly)."}), 403
            given = request.headers.get("X-CSRF-Token", "")
            if not given or not hmac.compare_digest(given.encode(), str(csrf_token()).encode()):
                return jsonify({"error": "Missing or wrong X-CSRF-Token header: send the csrf_token of "
                                         "GET /api/config with every POST."}), 403
        return None

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        if request.path.startswith("/api/") or response.mimetype == "text/html":
            response.headers["Cache-Control"] = "no-store"
        if request.method == "POST":  # every action, refused ones included: who, what, on what, how it went
            auth = request.authorization
            body = request.get_data(cache=True, as_text=True)[:500] if request.content_length else ""
            log.info("Dashboard action: %s %s%s%s by %s from %s -> %d", request.method, request.path,
                     f"?{request.query_string.decode()}" if request.query_string else "",
                     f" {body}" if body else "", auth.username if auth and auth.username else "-",
                     request.remote_addr, response.status_code)
        return response
