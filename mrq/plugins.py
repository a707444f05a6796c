"""Plugin manager: finds entry points of group ``mrq.plugins`` and registers them with pluggy.

A plugin is enabled by name (``--plugins a,b``, ``MRQ_PLUGINS``, ``PLUGINS = [...]``):
either the name of an installed entry point (``memtrace``) or the dotted path of
a module or object (``myproject.mrq_plugin``), handy for a plugin that is not packaged.
Entry points are listed and loaded with stevedore: only the plugins named are imported.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from collections.abc import Iterable
from typing import Any

import pluggy

from mrq import hookspecs
from mrq.exceptions import PluginError

__all__ = ["PluginManager", "ENTRY_POINT_GROUP", "FLAG_ENTRY_POINT_GROUP", "installed_plugins",
           "installed_plugin_flags"]

ENTRY_POINT_GROUP = "mrq.plugins"
#: Activation flags: an entry point ``trace_memory = memtrace`` of this group makes ``--trace_memory``
#: (or ``MRQ_TRACE_MEMORY``, ``TRACE_MEMORY``) enable the installed plugin ``memtrace``.
FLAG_ENTRY_POINT_GROUP = "mrq.plugin_flags"
log = logging.getLogger("mrq.plugins")


def _entry_points(group: str) -> list[Any]:
    """The entry points of ``group``, nothing imported, listed by stevedore.

    stevedore keeps the entry points of every installed distribution in an on-disk cache
    (``~/.cache/python-entrypoints``) keyed by ``sys.path`` and the modification times of the path entries and
    of each distribution's ``entry_points.txt``: a distribution installed after a first run changes the key, so
    the next process sees it. Its per-process memo of a group ignores changes of ``sys.path``; it is dropped
    first, and the on-disk cache keeps a re-read cheap.
    """
    from stevedore import ExtensionManager, NamedExtensionManager

    ExtensionManager.ENTRY_POINT_CACHE.pop(group, None)
    return list(NamedExtensionManager(group, names=[], on_missing_entrypoints_callback=None).list_entry_points())


def installed_plugins() -> dict[str, Any]:
    """Entry points of group ``mrq.plugins``, by name (nothing is imported)."""
    found: dict[str, Any] = {}
    for ep in _entry_points(ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def installed_plugin_flags() -> dict[str, str]:
    """Activation flags declared by installed distributions: option name -> plugin name.

    Read from the entry points of group ``mrq.plugin_flags`` without importing anything, so that a flag
    can enable a plugin that is not loaded yet (the plugin itself declares the option with
    ``mrq_add_options``, once it is enabled).
    """
    found: dict[str, str] = {}
    for ep in _entry_points(FLAG_ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value.strip())
    return found


def _versions() -> dict[str, str]:
    """Version of the distribution of each installed plugin, by plugin name (``importlib.metadata``)."""
    from importlib.metadata import entry_points

    found: dict[str, str] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        found.setdefault(ep.name, getattr(dist, "version", "") or "")
    return found


def _load(names: list[str]) -> dict[str, Any]:
    """Import the installed plugins ``names`` (and no other) with stevedore; raise :class:`PluginError` for an
    unknown name (listing the installed ones) or a plugin that fails to import."""
    from stevedore import NamedExtensionManager

    missing: list[str] = []
    failed: dict[str, BaseException] = {}
    manager = NamedExtensionManager(
        ENTRY_POINT_GROUP, names=names, on_missing_entrypoints_callback=missing.extend,
        on_load_failure_callback=lambda _manager, ep, exc: failed.setdefault(ep.name, exc))
    for name in names:
        if name in failed:
            exc = failed[name]
            raise PluginError(f"Plugin {name!r} failed to import: {type(exc).__name__}: {exc}") from exc
        if name in missing:
            listing = ", ".join(sorted(installed_plugins())) or "none"
            raise PluginError(
                f"Unknown plugin {name!r}. Installed plugins: {listing}. Install it (for example "
                f"`pip install mrq-{name}`) or give the dotted path of a module (`mypackage.myplugin`).")
    return {ext.name: ext.plugin for ext in manager.extensions}


class PluginManager:
    """The plugins of one process: MRQ's hookspecs, the kernel's own hooks, and the enabled plugins.

    ``manager.hook.<name>(**kwargs)`` calls a hook. ``MRQ_TRACE_PLUGINS=1`` logs
    every hook call with its arguments and result (logger ``mrq.plugins``).
    """

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.enabled: list[str] = []
        self._versions: dict[str, str] = {}
        from mrq.task import KernelHooks  # the kernel's own implementation of mrq_job_execute
        self.pm.register(KernelHooks(), name="mrq.kernel")
        # Historic: every plugin registered from now on gets called, at its registration.
        self.pm.hook.mrq_add_hookspecs.call_historic(kwargs={"plugin_manager": self.pm})
        if os.environ.get("MRQ_TRACE_PLUGINS"):
            self.pm.trace.root.setwriter(lambda msg: log.warning(msg.rstrip()))
            self.pm.enable_tracing()

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def enable(self, names: Iterable[str]) -> None:
        """Load and register plugins by name; raise :class:`PluginError` naming an unknown one.

        Installed plugins are imported by stevedore (only the ones named), dotted paths with importlib.
        """
        wanted: list[str] = []
        for name in names:
            if name not in self.enabled and name not in wanted:
                wanted.append(name)
        by_entry_point = [n for n in wanted if "." not in n and ":" not in n]
        loaded = _load(by_entry_point) if by_entry_point else {}
        versions = _versions() if by_entry_point else {}
        for name in wanted:
            if name in loaded:
                self._versions[name] = versions.get(name, "")
                plugin = loaded[name]
            else:
                plugin = self._import_path(name)
            self.register(plugin, name, check=False)
        # Checked once all are registered: a plugin may implement a hook declared (mrq_add_hookspecs)
        # by a plugin enabled after it.
        self._check_pending()
        self._declare_statuses()

    def register(self, plugin: Any, name: str, check: bool = True) -> None:
        """Register a plugin object (module, class or instance) under ``name``."""
        if inspect.isclass(plugin):
            plugin = plugin()
        try:
            self.pm.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginError(f"Plugin {name!r} could not be registered: {exc}") from exc
        self.enabled.append(name)
        if check:
            self._check_pending()
            self._declare_statuses()

    def _declare_statuses(self) -> None:
        """Add the statuses of the enabled plugins (``mrq_job_statuses``) to :mod:`mrq.status`."""
        from mrq import status

        for impl in self.pm.hook.mrq_job_statuses.get_hookimpls():
            name = self.pm.get_name(impl.plugin) or repr(impl.plugin)
            declared = impl.function()
            if not isinstance(declared, list):
                raise PluginError(f"Plugin {name!r}: mrq_job_statuses must return a list of "
                                  f"{{'name': ..., 'kind': 'waiting' | 'final'}}, not {declared!r:.100}.")
            for entry in declared:
                try:
                    status.declare(entry["name"], entry["kind"], plugin=f"plugin {name!r}")
                except (ValueError, KeyError, TypeError) as exc:
                    raise PluginError(f"Plugin {name!r} declares a bad status {entry!r:.100}: {exc}") from None

    def _check_pending(self) -> None:
        """Unregister the plugins implementing a hook nobody declared, and raise PluginError."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            name = self.pm.get_name(exc.plugin) or repr(exc.plugin)
            self.pm.unregister(exc.plugin)
            if name in self.enabled:
                self.enabled.remove(name)
            raise PluginError(f"Plugin {name!r} implements a hook MRQ does not know: {exc}. "
                              "See docs/plugins.md for the list of hooks.") from exc

    @staticmethod
    def _import_path(path: str) -> Any:
        module_name, _, attr = path.partition(":")
        try:
            obj = importlib.import_module(module_name)
        except ImportError as exc:
            raise PluginError(f"Plugin {path!r} could not be imported: {exc}. Check the dotted path and "
                              "that its package is on the Python path.") from exc
        if not attr:
            return obj
        try:
            return getattr(obj, attr)
        except AttributeError:
            raise PluginError(f"Plugin {path!r}: module {module_name!r} has no attribute {attr!r}. Check the "
                              "name after the ':' (module:object).") from None

    def plugin_options(self, taken: Iterable[str] = ()) -> list[Any]:
        """Options added by the enabled plugins (``mrq_add_options``); a name in ``taken`` (the kernel's options,
        passed by :func:`mrq.config.get_config`) or added twice raises :class:`PluginError`."""
        taken = set(taken)
        options = []
        for group in self.hook.mrq_add_options():
            for opt in group or []:
                if opt.name in taken:
                    raise PluginError(f"Option {opt.name!r} added by a plugin is already defined; "
                                      "plugins should prefix their options with their name.")
                taken.add(opt.name)
                options.append(opt)
        return options

    def describe(self) -> list[dict[str, Any]]:
        """One entry per installed or enabled plugin: name, version, enabled, hooks."""
        rows: dict[str, dict[str, Any]] = {}
        versions = _versions()
        for name, ep in installed_plugins().items():
            rows[name] = {"name": name, "version": versions.get(name, ""), "enabled": False, "hooks": [],
                          "source": ep.value}
        for name in self.enabled:
            plugin = self.pm.get_plugin(name)
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            row = rows.setdefault(name, {"name": name, "version": self._versions.get(name, ""),
                                         "source": name})
            row.update(enabled=True, hooks=hooks)
        return sorted(rows.values(), key=lambda r: r["name"])


def print_plugins(manager: PluginManager) -> None:
    """Print the installed and enabled plugins (``--list-plugins``, ``mrq-plugins``)."""
    rows = manager.describe()
    if not rows:
        print("No MRQ plugins installed (entry-point group 'mrq.plugins').")
    for row in rows:
        state = "enabled" if row["enabled"] else "disabled"
        print(f"{row['name']} {row['version'] or '-'} [{state}] ({row['source']})")
        if row["hooks"]:
            print("    hooks: " + ", ".join(row["hooks"]))
