"""TokenSession's DPoP half (RFC 9449): which key signs, the proofs, the server's nonces.

- The key: a given ``DPoPKey``, or with ``dpop=True`` one made on first use (ES256). When
  the store is a ``FileTokenStore`` that key lives next to the tokens file, a PEM file of
  its own (``0600``, one per store key, see ``key_path``), so the next process signs with
  the key the tokens are bound to.
- A token is bound when its claims carry ``cnf.jkt`` (tokend's access tokens are JWTs;
  read here without verification, only to pick the scheme): bound → ``Authorization:
  DPoP`` and a proof with ``ath``; unbound → ``Bearer`` as before.
- Nonces: every answer's ``DPoP-Nonce`` is remembered per origin and goes into the next
  proof to that origin; an answer asking for one (``use_dpop_nonce``: 400 at token
  endpoints, 401 with a DPoP challenge at resources) is repeated once with it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from yarl import URL

from . import _wire
from ._errors import TokendClientError
from ._store import FileTokenStore, TokenStore
from .dpop import bound_jkt

if TYPE_CHECKING:
    from .dpop import DPoPKey

__all__ = ["Prover", "bound_jkt", "key_path"]

NONCE_ERROR = "use_dpop_nonce"


def key_path(store: FileTokenStore) -> Path:
    """The PEM file of the DPoP key that goes with ``store``'s tokens."""
    return store.dpop_key_path


def _origin(url: URL) -> str:
    return str(url.origin())


def _htu(url: URL) -> str:
    return str(url.with_query(None).with_fragment(None))


class Prover:
    """Proofs for one TokenSession: ``option`` is its ``dpop=`` (False, True or a key)."""

    def __init__(self, option: bool | DPoPKey, store: TokenStore) -> None:
        self.enabled = option is not False
        self._key: DPoPKey | None = None if isinstance(option, bool) else option
        on_file = store if isinstance(store, FileTokenStore) else None
        self._path = key_path(on_file) if option is True and on_file is not None else None
        self._lock = asyncio.Lock()
        self._nonces: dict[str, str] = {}

    @property
    def key(self) -> DPoPKey | None:
        """The key, once made or loaded (a given key at once)."""
        return self._key

    async def ensure_key(self) -> DPoPKey:
        """The key, loaded from its file or made (and saved) on first use."""
        if self._key is None:
            async with self._lock:
                if self._key is None:
                    self._key = await asyncio.to_thread(self._load_or_make)
        return self._key

    def _load_or_make(self) -> DPoPKey:
        from .dpop import DPoPKey

        path = self._path
        if path is not None and path.exists():
            try:
                return DPoPKey.load(path)
            except (OSError, ValueError) as exc:
                raise TokendClientError(f"cannot read the DPoP key {path}: {exc}") from exc
        key = DPoPKey.generate("ES256")
        if path is not None:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            key.save(path)
        return key

    async def token_headers(self, url: URL) -> dict[str, str]:
        """``{"DPoP": proof}`` for a POST to a tokend token endpoint; {} with DPoP off."""
        if not self.enabled:
            return {}
        key = await self.ensure_key()
        return {"DPoP": key.proof("POST", _htu(url), nonce=self._nonces.get(_origin(url)))}

    async def resource_headers(self, method: str, url: URL, access_token: str) -> dict[str, str]:
        """``Authorization`` (and ``DPoP`` for a bound token) for a request to ``url``."""
        jkt = bound_jkt(access_token)
        if jkt is None:
            return {"Authorization": f"Bearer {access_token}"}
        if not self.enabled:
            raise TokendClientError(
                "the access token is DPoP-bound but this TokenSession has no DPoP key (dpop=)"
            )
        key = await self.ensure_key()
        if key.jkt != jkt:
            raise TokendClientError(
                f"the access token is bound to DPoP key {jkt}, this session holds {key.jkt}"
            )
        nonce = self._nonces.get(_origin(url))
        proof = key.proof(method.upper(), _htu(url), access_token=access_token, nonce=nonce)
        return {"Authorization": f"DPoP {access_token}", "DPoP": proof}

    def wants_nonce(
        self, url: URL, status: int, headers: Mapping[str, str], body: bytes | None = None
    ) -> bool:
        """Remember the answer's ``DPoP-Nonce``; whether it asks to repeat with it."""
        nonce = headers.get("DPoP-Nonce")
        if nonce:
            self._nonces[_origin(url)] = nonce
        if not self.enabled or not nonce or status not in (400, 401):
            return False
        if challenge_error(headers) == NONCE_ERROR:
            return True
        return body is not None and _error_code(body) == NONCE_ERROR


def challenge_error(headers: Any) -> str | None:
    """The ``error`` of a ``WWW-Authenticate: DPoP`` challenge, if any."""
    values = headers.getall("WWW-Authenticate", []) if hasattr(headers, "getall") else []
    for header in values:
        for scheme, params in _wire.challenges(header):
            if scheme == "dpop" and "error" in params:
                return params["error"]
    return None


def _error_code(body: bytes) -> str | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    code = document.get("error") if isinstance(document, dict) else None
    return code if isinstance(code, str) else None
