"""The outbound-activity sentry: what this process connected to, opened or started."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

_RECORDING: list[tuple[str, tuple[Any, ...]]] | None = None
_WATCHED = frozenset({"socket.connect", "open", "subprocess.Popen", "os.system", "os.exec"})


def _audit(event: str, args: tuple[Any, ...]) -> None:
    recording = _RECORDING
    if recording is not None and (event in _WATCHED or event.startswith("os.posix_spawn")):
        recording.append((event, args))


sys.addaudithook(_audit)  # audit hooks cannot be removed; it records only inside ``sentry``


class Activity:
    """What the process did while a sentry watched: connections, file opens, processes."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []

    def connections(self, allowed_ports: set[int]) -> list[Any]:
        """Socket connects to anything but the allowed local ports."""
        found = []
        for event, args in self.events:
            if event != "socket.connect":
                continue
            address = args[1]
            if (
                isinstance(address, tuple)
                and address[0] in ("127.0.0.1", "::1", "localhost")
                and address[1] in allowed_ports
            ):
                continue
            found.append(address)
        return found

    def opened(self, fragment: str) -> list[Any]:
        return [a[0] for e, a in self.events if e == "open" and fragment in str(a[0])]

    def processes(self) -> list[Any]:
        return [(e, a) for e, a in self.events if e != "open" and e != "socket.connect"]


@contextlib.contextmanager
def sentry() -> Iterator[Activity]:
    """Record connects, opens and process starts of this whole process (server included)."""
    global _RECORDING
    activity = Activity()
    _RECORDING = activity.events
    try:
        yield activity
    finally:
        _RECORDING = None
