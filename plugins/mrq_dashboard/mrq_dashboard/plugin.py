"""The MRQ hooks of mrq-dashboard (entry point ``dashboard``): its hookspecs and its options.

``mrq-dashboard`` enables this plugin by itself (and the plugins of the configuration, as any command).
"""

from __future__ import annotations

from typing import Any

from mrq.config import Option
from mrq.exceptions import ConfigError
from mrq.hookspecs import hookimpl

from mrq_dashboard.hookspecs import DashboardSpecs
from mrq_dashboard.hosts import check_allowed_hosts

COMMANDS = ("dashboard",)


@hookimpl
def mrq_add_hookspecs(plugin_manager: Any) -> None:
    plugin_manager.add_hookspecs(DashboardSpecs)


@hookimpl
def mrq_add_options() -> list[Option]:
    d = COMMANDS
    return [
        Option("dashboard_port", int, 5555, "Port of the dashboard's HTTP server.", commands=d),
        Option("dashboard_ip", str, "127.0.0.1",
               "Address the dashboard listens on (0.0.0.0 = every interface; needs --dashboard_httpauth).",
               commands=d),
        Option("dashboard_httpauth", str, "",
               "HTTP Basic credentials 'user:password' required on every route ('' = none; loopback only).",
               commands=d),
        Option("dashboard_queue", str, "",
               "Run bulk cancel/requeue as a job on this queue (a worker must listen on it) instead of in the "
               "dashboard request ('' = in the dashboard, the default).", commands=d),
        Option("dashboard_readonly", bool, False,
               "Read-only dashboard: every POST is refused (403) and the action buttons are hidden.", commands=d),
        Option("dashboard_allowed_hosts", list, [],
               "Host names the dashboard answers, besides localhost, *.localhost, IP addresses and the name of "
               "--dashboard_ip (the machine's names when it is 0.0.0.0 or ::): 'mrq.example.com', "
               "'.example.com' (the domain and its subdomains); '*' = no check (a proxy checks Host). Other "
               "names get a 400: the defence against DNS rebinding.", commands=d, check=check_allowed_hosts),
        Option("dashboard_allow_public", bool, False,
               "Allow listening on a non-loopback address without --dashboard_httpauth (anyone who reaches "
               "the port controls your jobs).", commands=d),
        Option("dashboard_cache_ttl", float, 10.0,
               "Seconds between two computations of the counts that scan jobs (statuses, task paths, "
               "exceptions); shared by every request of the process (0 = on every request).", commands=d),
        Option("dashboard_autorefresh", float, 5.0,
               "Default refresh interval of the pages in seconds (0 = off); each page has a selector.",
               commands=d),
        Option("dashboard_trust_proxy", bool, False,
               "Trust X-Forwarded-For/-Proto/-Host/-Prefix headers (behind a reverse proxy, for a path prefix).",
               commands=d),
        Option("dashboard_indexes", bool, True,
               "Create the indexes the dashboard's job lists need at start (see the plugin's README).",
               commands=d),
    ]


@hookimpl
def mrq_configure(config: Any) -> None:
    if config.get("_command") != "dashboard":
        return
    port = config.get("dashboard_port")
    if port is not None and not 0 <= int(port) <= 65535:
        raise ConfigError(f"--dashboard_port {port} is not a TCP port (0-65535).")
    auth = config.get("dashboard_httpauth") or ""
    if auth and (":" not in auth or not auth.split(":", 1)[0]):
        raise ConfigError("--dashboard_httpauth must be 'user:password' (a user name, a colon, the password).")
    for name in ("dashboard_cache_ttl", "dashboard_autorefresh"):
        if float(config.get(name) or 0) < 0:
            raise ConfigError(f"--{name} is {config.get(name)}: use a number of seconds >= 0.")
