"""The Host names the dashboard answers (``--dashboard_allowed_hosts``): the defence against DNS rebinding.

A page of ``http://evil.example:5555`` whose name the attacker rebinds to 127.0.0.1 is same-origin with the
dashboard for the browser: it could read ``csrf_token`` from ``/api/config`` and act. The browser still
sends ``Host: evil.example:5555``, so the dashboard answers 400 to every Host it does not know:

* always allowed: ``localhost`` and ``*.localhost`` (they resolve to loopback only), IP addresses (a page
  whose address is an IP is served by that IP: rebinding needs a name), and a request without ``Host``
  (HTTP/1.0 clients; no browser sends one);
* the name of ``--dashboard_ip`` if it is a name; when it is every interface (``0.0.0.0``, ``::``), the
  machine's host name and fully qualified name as it knows them (``socket.gethostname()``,
  ``socket.getfqdn()``);
* the entries of ``--dashboard_allowed_hosts``: ``mrq.example.com`` (that name), ``.example.com`` (the domain
  and its subdomains), IP addresses (accepted, and allowed anyway); ``*`` turns the check off (a proxy in
  front checks Host).

The port of a Host is ignored; names are compared in lower case, without a final dot. This module imports
nothing but the standard library: the option's check runs in every process that enables the plugin.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable

__all__ = ["AllowedHosts", "LOOPBACK_NAMES", "check_allowed_hosts", "host_name", "normalize_host_entry"]

#: Allowed whatever the configuration: they resolve to the loopback interface only (RFC 6761).
LOOPBACK_NAMES = ("localhost", ".localhost")
_EVERY_INTERFACE = ("", "0.0.0.0", "::")
_NAME = re.compile(r"^[a-z0-9_-]+(?:\.[a-z0-9_-]+)*$")
_HOST_HEADER = re.compile(r"^(?:\[(?P<ip6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9_.-]+))(?::[0-9]{1,5})?$")
_FORMS = ("use a host name (mrq.example.com), a domain with its subdomains (.example.com), an IP address, "
          "or * to turn the check off")


def _ip(text: str) -> str | None:
    """``text`` as a normalized IP address, or ``None`` if it is not one."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def normalize_host_entry(entry: str) -> str:
    """One entry of ``--dashboard_allowed_hosts`` in the form :class:`AllowedHosts` compares.

    :raises ValueError: the entry is not a name, a ``.domain``, an IP address or ``*`` (the message says why).
    """
    text = str(entry).strip().lower()
    if text == "*":
        return text
    if "/" in text:
        raise ValueError(f"{entry!r} is a URL or a path, not a host name: give the name alone ({_FORMS})")
    if text.startswith("*."):
        raise ValueError(f"{entry!r}: write '{text[1:]}' for the domain {text[2:]} and its subdomains")
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    ip = _ip(bare)
    if ip is not None:
        return ip
    if ":" in text:
        name = text.rsplit(":", 1)[0]
        raise ValueError(f"{entry!r} has a port: the port of a Host is ignored, write {name!r}")
    if not text.isascii():
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"{entry!r} is not a valid internationalized domain name ({_FORMS})") from None
    dot = "." if text.startswith(".") else ""
    name = text[len(dot):].rstrip(".")
    if not _NAME.match(name):
        raise ValueError(f"{entry!r} is not a host name ({_FORMS})")
    return dot + name


def check_allowed_hosts(entries: Iterable[str]) -> None:
    """The option's check: raises ``ValueError`` naming the first unusable entry."""
    for entry in entries:
        normalize_host_entry(entry)


def host_name(header: str) -> str | None:
    """The name or IP address of a ``Host`` header value, port and final dot removed; ``None`` if malformed."""
    match = _HOST_HEADER.match(header.strip().lower())
    if match is None:
        return None
    if match["ip6"]:
        return _ip(match["ip6"])
    name = match["name"].rstrip(".")
    if _ip(name) is not None:
        return _ip(name)
    return name if _NAME.match(name) else None


def _machine_names() -> set[str]:
    """This machine's names as it knows them (``gethostname``, ``getfqdn``), those that are host names."""
    names = set()
    for lookup in (socket.gethostname, socket.getfqdn):
        try:
            name = lookup().strip().lower().rstrip(".")
        except OSError:
            continue
        if _NAME.match(name) and _ip(name) is None:
            names.add(name)
    return names


class AllowedHosts:
    """Which ``Host`` headers the dashboard answers (see the module's documentation).

    :param entries: the values of ``--dashboard_allowed_hosts`` (checked: ``ValueError`` on a bad one).
    :param listen_ip: ``--dashboard_ip``: its name if it is one; every interface adds the machine's names.
    """

    def __init__(self, entries: Iterable[str] = (), listen_ip: str = "127.0.0.1") -> None:
        normalized = [normalize_host_entry(entry) for entry in entries]
        self.any = "*" in normalized
        names = set(LOOPBACK_NAMES) | {entry for entry in normalized if entry != "*" and _ip(entry) is None}
        listen = (listen_ip or "").strip().lower().strip("[]")
        if listen in _EVERY_INTERFACE:
            names |= _machine_names()
        elif _ip(listen) is None and _NAME.match(listen.rstrip(".")):
            names.add(listen.rstrip("."))
        self.names = frozenset(name for name in names if not name.startswith("."))
        self.domains = tuple(sorted(name for name in names if name.startswith(".")))

    def allows(self, header: str | None) -> bool:
        """Whether a request with this ``Host`` header value (``None``: no header) is answered."""
        if self.any or not header:
            return True
        host = host_name(header)
        if host is None:
            return False
        if _ip(host) is not None or host in self.names:
            return True
        return any(host == domain[1:] or host.endswith(domain) for domain in self.domains)

    def __str__(self) -> str:
        if self.any:
            return "* (no check)"
        return ", ".join(sorted(self.names) + list(self.domains)) + ", IP addresses"
