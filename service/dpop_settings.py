"""The DPoP settings (RFC 9449, docs/dpop.md): TOKEND_DPOP, TOKEND_DPOP_NONCE and the
per-client ``dpop_bound_access_tokens`` of TOKEND_OAUTH_CLIENTS.

- ``TOKEND_DPOP`` (``off`` | ``optional`` | ``required``, default ``optional``) governs
  the ``/auth/*`` token requests: ``optional`` binds the tokens of a request with a valid
  proof, ``required`` refuses a request without one, ``off`` binds nothing new (the
  header is ignored; a refresh token bound earlier still needs its key).
- ``TOKEND_DPOP_NONCE=true``: every proof must carry a nonce tokend handed out.
"""

from __future__ import annotations

from typing import Any, Literal

DPoPMode = Literal["off", "optional", "required"]
MODES: tuple[DPoPMode, ...] = ("off", "optional", "required")
DEFAULT_MODE: DPoPMode = "optional"


def mode(raw: str) -> DPoPMode:
    """TOKEND_DPOP."""
    for known in MODES:
        if raw.lower() == known:
            return known
    raise ValueError(f"expected one of {', '.join(MODES)}, got {raw!r}")


def bound_access_tokens(client_id: str, spec: dict[str, Any]) -> bool:
    """A client's ``dpop_bound_access_tokens`` (RFC 9449 section 5.2): a JSON boolean,
    false when absent."""
    value = spec.get("dpop_bound_access_tokens", False)
    if not isinstance(value, bool):
        raise ValueError(
            f"client {client_id!r}: dpop_bound_access_tokens must be true or false, "
            f"got {str(value)[:40]!r}"
        )
    return value
