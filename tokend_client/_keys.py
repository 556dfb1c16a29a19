"""The names of tokend's Redis keys and channel that a subscriber reads.

The subscriber library does not import the server: these are the server's names
(service/keyspace.py) for the same prefix, and a test checks that both agree.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClientKeys:
    """The stream, channel and position keys under one prefix."""

    prefix: str

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    @property
    def channel(self) -> str:
        return f"{self.prefix}:revocations"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}:epoch"

    @property
    def gen(self) -> str:
        return f"{self.prefix}:gen"

    @property
    def fence(self) -> str:
        return f"{self.prefix}:fence"
