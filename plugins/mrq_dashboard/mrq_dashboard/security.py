"""The dashboard's protections: HTTP Basic auth on every route, CSRF token on every POST, read-only mode,
security headers, and the refusal to listen on a public address without auth.

* ``--dashboard_httpauth user:password``: every route, static files included, answers 401 without it.
* Every POST needs the header ``X-CSRF-Token`` equal to ``csrf_token`` of ``GET /api/config`` (403 otherwise).
  The token is shared by every dashboard process of one Redis (stored once, ``SET NX``, under the MRQ
  prefix), so it also works behind a load balancer; a page of another site cannot read it (no CORS), so it
  cannot forge the header.
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
from typing import Any

from flask import Flask, Response, jsonify, request

__all__ = ["install", "csrf_token_for", "is_loopback", "CSP", "check_listen_address"]

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


def install(app: Flask, httpauth: str, readonly: bool, csrf_token: Any) -> None:
    """Register the checks and headers on ``app``; ``csrf_token`` is a callable returning the token."""

    @app.before_request
    def check_request() -> Response | tuple[Response, int] | None:
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
