"""Typed replies of the Lua scripts in service/lua/, one decoder per script.

Each script's header lists its replies; a reply is a list whose first element is a
status (or a count). The decoders turn it into a status-tagged value, so no caller reads
a position that shifts with the status. ``['stale']`` never reaches a decoder: the fence
(``run_checked``) handles it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

#: The data position a write reported: (gen, epoch) as Redis returned them.
Reported = tuple[Any, Any]


@dataclass(frozen=True)
class Rotation:
    """What a refresh did: ``status`` is rotated, grace, ahead (rotated from a token newer
    than the recorded state: a lost write rolled forward), reuse, expired, unknown, fenced,
    revoked (ended by its user's revocation mark), mismatch (another user's session) or
    scope (a requested scope beyond the grant, in ``scope``; nothing changed).

    On reuse, ``reuse_kind`` is ``concurrent`` (within the grace window of the last
    rotation: most likely a client's own race) or ``replay``, and ``other_ip`` and
    ``other_ua`` are those of the session's last legitimate use.
    """

    status: str
    uid: str = ""
    jti: str = ""
    iat: int = 0
    exp: int = 0
    client_id: str = ""
    scope: str = ""
    auth: float = 0.0
    #: The rotation number of the refresh token ``jti`` (its ``rot`` claim).
    rot: int = 1
    #: The partition's last fence time (None: never fenced); see issuing.after_fence.
    fence: float | None = None
    reuse_kind: str = ""
    other_ip: str = ""
    other_ua: str = ""


def rotation(result: list[Any]) -> tuple[Rotation, Reported | None]:
    """rotate.lua's reply and the position it reports."""
    status = result[0]
    if status in ("rotated", "grace", "ahead"):
        _, uid, jti, iat, exp, cid, scope, gen, epoch, auth, n, fence = result
        rot = Rotation(
            status,
            uid,
            jti,
            int(iat),
            int(exp),
            cid or "",
            scope or "",
            float(auth or 0),
            rot=int(n),
            fence=float(fence) if fence else None,
        )
        return rot, (gen, epoch)
    if status == "scope":
        _, uid, granted = result
        return Rotation(status, uid, scope=granted or ""), None
    if status == "reuse":
        _, uid, gen, epoch, kind, ip, ua = result
        return Rotation(status, uid, reuse_kind=kind, other_ip=ip, other_ua=ua), (gen, epoch)
    return Rotation(status, result[1] if len(result) > 1 else ""), None


@dataclass(frozen=True)
class Peek:
    """peek.lua's verdict on a refresh token: ``status`` current or grace (it may still
    refresh the session, granted ``client_id`` and ``scope``), else expired, fenced,
    revoked, reuse, mismatch or unknown."""

    status: str
    uid: str = ""
    client_id: str = ""
    scope: str = ""

    @property
    def live(self) -> bool:
        return self.status in ("current", "grace")


def peek(result: list[Any]) -> Peek:
    """peek.lua's reply."""
    if result[0] in ("current", "grace", "ahead"):
        _, uid, cid, scope = result
        return Peek(result[0], uid, cid or "", scope or "")
    return Peek(result[0], result[1] if len(result) > 1 else "")


@dataclass(frozen=True)
class CreateReply:
    """create.lua's reply: ``ok`` (``evicted``: the sessions ended for the per-user cap),
    ``full`` (the cap needs victims: nothing written) or ``revoked`` (the user was revoked
    since the credentials were checked: nothing written)."""

    status: Literal["ok", "full", "revoked"]
    reported: Reported | None = None
    evicted: tuple[str, ...] = ()
    #: The partition's last fence (all.revoked) time, None when it was never fenced.
    fence: float | None = None


def created(result: list[Any]) -> CreateReply:
    """create.lua's reply."""
    if result[0] == "ok":
        fence = float(result[3]) if result[3] else None
        return CreateReply("ok", (result[1], result[2]), tuple(result[4:]), fence)
    if result[0] in ("full", "revoked"):
        return CreateReply(result[0])
    raise ValueError(f"create.lua: unexpected reply {result[0]!r}")


@dataclass(frozen=True)
class Revocation:
    """A revocation script's reply (revoke.lua, revoke_token.lua, revoke_user.lua):
    how many things it revoked, the position of its write (None when it wrote nothing)
    and, for revoke_user.lua, the time of the user's mark."""

    count: int
    reported: Reported | None = None
    mark_at: str = ""


def revocation(result: list[Any]) -> Revocation:
    """revoke.lua's, revoke_token.lua's or revoke_user.lua's reply."""
    if len(result) >= 3:
        mark = str(result[3]) if len(result) > 3 else ""
        return Revocation(int(result[0]), (result[1], result[2]), mark)
    return Revocation(int(result[0]))


def expired(result: Any) -> int:
    """expire.lua's reply: how many sessions ended with a session.expired."""
    return int(result)


def emitted(result: Any) -> str:
    """emit.lua's reply: the event's stream id."""
    return result.decode() if isinstance(result, bytes) else str(result)


@dataclass(frozen=True)
class Fencing:
    """fence.lua's reply: ``fenced`` at (epoch, gen), or ``raced`` (another process
    changed the epoch first; ``epoch`` is the one it found, 0 when none)."""

    status: Literal["fenced", "raced"]
    epoch: int = 0
    gen: int = 0


def fencing(result: list[Any]) -> Fencing:
    """fence.lua's reply."""
    if result[0] == "fenced":
        return Fencing("fenced", int(result[1]), int(result[2]))
    return Fencing("raced", int(result[1] or 0))
