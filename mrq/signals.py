"""Stop signals (SIGINT, SIGTERM) that arrive before a process can act on them are remembered, never lost.

Python's own SIGINT handler raises ``KeyboardInterrupt`` wherever the interpreter happens to be. During the start-up
of a worker that can be in the middle of gevent's monkey-patching (which then leaves the interpreter unable to
exit: it hangs at shutdown), or inside a finalizer (``__del__``, a generator being closed, a weakref callback), where
Python prints "Exception ignored in ..." and goes on: the worker then started normally, having lost its stop
request, and supervisord waited for it. So ``mrq-worker`` calls :func:`catch_early` first thing: from then on, a
stop signal only records a request. :func:`install` then hands over to gevent's handlers (which run in a greenlet of
their own, never in the middle of other code) and replays the requests recorded until then, in order.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Mapping
from types import FrameType

__all__ = ["STOP_SIGNALS", "catch_early", "install", "pending"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_pending: list[int] = []


def _remember(signum: int, frame: FrameType | None) -> None:
    _pending.append(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def catch_early() -> None:
    """From now on SIGINT and SIGTERM are recorded, not acted on, until :func:`install` hands them over.

    For a process of its own (``mrq-worker``): the handlers stay until it exits. Does nothing outside the main
    thread.
    """
    if _main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, _remember)


def pending() -> list[int]:
    """The stop signals recorded since :func:`catch_early` and not yet handed to :func:`install`'s handlers."""
    return list(_pending)


def install(handlers: Mapping[int, Callable[[], None]]) -> bool:
    """Handle these signals with gevent (``gevent.signal_handler``), then call the handler of each signal recorded
    since :func:`catch_early`, in the order they came. Returns False (and installs nothing) outside the main thread.

    No signal falls between the two: SIGINT and SIGTERM are blocked while the handlers are swapped
    (``pthread_sigmask`` also runs the Python handlers of signals already received), so one sent meanwhile waits
    in the kernel and reaches gevent's handler when they are unblocked.
    """
    import gevent

    if not _main_thread():
        return False
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, set(handlers))
    try:
        for sig, handler in handlers.items():
            gevent.signal_handler(sig, handler)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    replay = [sig for sig in _pending if sig in handlers]
    _pending.clear()
    for sig in replay:
        handlers[sig]()
    return True
