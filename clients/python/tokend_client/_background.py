"""A RevocationListener for threaded and forking servers: its own event loop in a thread.

WSGI servers (gunicorn, uWSGI, mod_wsgi) and sync views have no event loop to run the
listener on, and a forking server copies the process after the application was built
(gunicorn ``--preload``) or before (without it). A BackgroundListener runs one
RevocationListener per process in a daemon thread:

- nothing runs in the process that builds it (a gunicorn master with ``--preload`` must
  not fork with a listener thread inside); every process that forks from it starts its
  own listener right after the fork (an ``os.register_at_fork`` hook), with an empty
  deny list that it replays from the streams, never a copy of the parent's;
- a process that built it without forking (gunicorn without ``--preload``, uvicorn, a
  test) starts it on the first request (``ready``); ``start()`` starts it earlier;
- the first request of every process (forked or not) waits up to ``first_wait`` seconds
  for the replay, unless it runs on an event loop, which is never blocked;
- until the replay is done ``ready`` is False, so the integrations answer 503 with
  ``Retry-After``;
- ``stop()`` (also at interpreter exit) stops the listener and joins the thread.

Reads (``ready``, ``is_revoked``) come from request threads while the loop thread
applies events: the deny list's tables are plain dicts updated one key at a time, which
CPython makes safe to read concurrently.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._listener import RevocationListener

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["BackgroundListener"]

log = logging.getLogger("tokend_client.listener")

_STOP_TIMEOUT = 5.0
_instances: weakref.WeakSet[BackgroundListener] = weakref.WeakSet()


class BackgroundListener:
    """One RevocationListener per process, made by ``factory`` and run in a thread."""

    def __init__(
        self, factory: Callable[[], RevocationListener], *, first_wait: float = 5.0
    ) -> None:
        self._factory = factory
        #: Seconds the first request of a process waits for the replay before a 503.
        self.first_wait = first_wait
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._outlive = 0.0
        self._settled: int | None = None  # the process whose first request has waited
        #: The listener of this process (a new one after a fork).
        self.listener = factory()
        _instances.add(self)

    # what a Guard asks

    @property
    def ready(self) -> bool:
        """Whether this process's listener has replayed the deny list. The first call in a
        process starts the listener if need be and, in a thread without a running event
        loop, waits up to ``first_wait`` seconds for the replay (an event loop's thread is
        never blocked: it gets the answer as it is)."""
        pid = os.getpid()
        if self._settled != pid:
            if not _in_event_loop():
                self.wait_ready(self.first_wait)
                self._settled = pid
            else:
                self.start()
                if self.listener.ready:
                    self._settled = pid  # nothing left for settle() to wait for
        return self.listener.ready

    async def settle(self) -> None:
        """For asyncio callers: the first call in a process waits (in a thread, never on
        the loop) for the replay as ``ready`` does in a thread; later calls return at once."""
        if self._settled != os.getpid():
            await asyncio.to_thread(lambda: self.ready)

    def is_revoked(self, claims: dict[str, Any]) -> bool:
        """Whether the claims are denied by an applied event."""
        return self.listener.is_revoked(claims)

    def outlive(self, seconds: float) -> None:
        """Keep deny entries at least ``seconds`` past their ``until`` (in every process)."""
        self._outlive = max(self._outlive, seconds)
        self.listener.outlive(self._outlive)

    @property
    def registry(self) -> CollectorRegistry | None:
        """The listener's Prometheus registry (None without prometheus-client)."""
        return self.listener.registry

    @property
    def on_event(self) -> Callable[[dict[str, Any]], object] | None:
        """The listener's per-event callback (carried over to a forked child's listener)."""
        return self.listener.on_event

    @on_event.setter
    def on_event(self, callback: Callable[[dict[str, Any]], object] | None) -> None:
        self.listener.on_event = callback

    # lifecycle

    def start(self) -> None:
        """Run this process's listener in a daemon thread (idempotent)."""
        with self._lock:
            pid = os.getpid()
            if self._pid == pid and self._thread is not None and self._thread.is_alive():
                return
            if self._pid is not None and self._pid != pid:
                self._forked()  # started in another process: nothing of it is valid here
            self._pid = pid
            _instances.add(self)
            self._started.clear()
            self._thread = threading.Thread(
                target=self._run, name=f"tokend-listener:{self.listener.prefix}", daemon=True
            )
            self._thread.start()
        self._started.wait(_STOP_TIMEOUT)

    def wait_ready(self, timeout: float) -> bool:
        """Block until the deny list is replayed or ``timeout`` seconds pass; whether ready."""
        self.start()
        loop = self._loop
        if loop is None:
            return False
        future = asyncio.run_coroutine_threadsafe(
            asyncio.wait_for(self.listener.wait_ready(), timeout), loop
        )
        try:
            future.result(timeout + 1)
        except (TimeoutError, asyncio.CancelledError):
            future.cancel()
        return self.listener.ready

    def stop(self) -> None:
        """Stop the listener and join its thread (in this process; a no-op elsewhere).
        A stopped BackgroundListener is not started again in a forked child."""
        _instances.discard(self)
        with self._lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None or self._pid != os.getpid():
                return
            if not loop.is_closed():
                try:
                    future = asyncio.run_coroutine_threadsafe(self.listener.close(), loop)
                    future.result(_STOP_TIMEOUT)
                except (RuntimeError, TimeoutError) as exc:
                    log.warning("revocation listener did not stop cleanly: %s", exc)
                loop.call_soon_threadsafe(loop.stop)
            thread.join(_STOP_TIMEOUT)
            self._thread = None

    def _forked(self) -> None:
        """In a child: the parent's thread and loop are not here; start over, empty."""
        callback = self.listener.on_event
        self._thread = None
        self._loop = None
        self.listener = self._factory()
        self.listener.outlive(self._outlive)
        if self.listener.on_event is None:
            self.listener.on_event = callback

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self.listener.start())
            self._started.set()
            loop.run_forever()
        finally:
            self._started.set()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _after_fork_in_child() -> None:
    """Start every BackgroundListener of the parent afresh in the child."""
    for background in list(_instances):
        background.start()


def _stop_all() -> None:
    for background in list(_instances):
        background.stop()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_stop_all)
