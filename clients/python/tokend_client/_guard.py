"""The framework-independent request check: one access token in, claims or an answer out.

Every integration (aiohttp, ASGI, Django, Flask) hands the request's ``Authorization``
header values, whether its query string carries ``access_token`` and a callable giving
the request's DPoP side (:class:`DPoPRequest`: method, origin, path, ``DPoP`` headers;
called only for the ``DPoP`` scheme) to a Guard and gets back the verified, unrevoked
claims, ``None`` (no credentials: the view decides), or an :class:`Answer`, the RFC 6750
section 3 refusal as plain data that the adapter renders:

- a malformed or ambiguous ``Authorization`` header → 400 ``invalid_request``;
- a token that is invalid, expired or revoked → 401 ``invalid_token`` with an
  ``error_description``;
- no credentials where a token is required → 401 with ``WWW-Authenticate: Bearer
  realm="..."`` and no error code (``Guard.required``);
- a valid token without a required scope → 403 ``insufficient_scope`` (``Guard.forbidden``);
- no signing keys, or no replayed deny list yet → 503 with ``Retry-After``.

DPoP (RFC 9449; the proof checks are ``dpop.verify_proof``'s, not the Guard's): a token
whose claims bind it to a key (``cnf.jkt``) is accepted only as ``Authorization: DPoP
<token>`` with exactly one ``DPoP`` proof header, for this request's method and ``htu``
(``public_url`` + the request path, or without it the request's own origin and path),
``ath`` of this token, signed by the bound key, its ``jti`` not seen before in this
process (a bounded MemoryReplayCache, entries kept for the proof's iat window). A bound
token sent as Bearer, an unbound one sent as DPoP and a bad proof are 401
``invalid_token``; the challenge says ``error="invalid_dpop_proof"`` for the proof
failures (RFC 9449 section 7.1). Every 401 challenge is one ``WWW-Authenticate`` value
with both schemes: ``Bearer realm="...", DPoP algs="ES256 EdDSA RS256 PS256"``. The
verified-token cache remembers only the token's verification: the proof is checked on
every request.

Bodies are JSON ``{"error", "error_description"}`` with ``Cache-Control: no-store``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from . import dpop
from ._errors import InvalidToken, JWKSUnavailable, TokendClientError, TokenRevoked
from ._verifier import TokenVerifier

__all__ = [
    "Answer",
    "DPoPRequest",
    "DenySource",
    "Guard",
    "check_public_url",
    "dpop_path",
    "has_scope",
]

log = logging.getLogger("tokend_client.guard")

# RFC 6750 section 2.1 b64token
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# WSGI servers (gunicorn, Werkzeug) join repeated headers with commas: split where another
# ``scheme credentials`` begins. A comma is never part of a Bearer token, so a valid one is
# never split, and two joined headers are refused as two.
_JOINED = re.compile(r",\s*(?=[!#$%&'*+.^_`|~0-9A-Za-z-]+ )")
#: Seconds a proof's ``iat`` may lie in the past (its ``jti`` is remembered that long).
DPOP_MAX_AGE = 300.0
# what a path keeps unescaped (RFC 3986 pchar and "/"); "%" too: an escaped path stays as it is
_PATH_SAFE = "/!$&'()*+,;=:@-._~%"


@dataclass(frozen=True, slots=True)
class DPoPRequest:
    """What a DPoP proof is checked against: the request's method, its origin
    (``scheme://host[:port]`` as the framework sees it: used without ``public_url``), its
    path (percent-encoded, no query: ``dpop_path``) and every ``DPoP`` header value."""

    method: str
    origin: str
    path: str
    proofs: Sequence[str]


def dpop_path(path: str) -> str:
    """A decoded request path as a client's URL has it (percent-encoded; an already
    encoded one unchanged)."""
    return quote(path, safe=_PATH_SAFE)


def check_public_url(value: str, name: str = "public_url") -> str:
    """``value`` checked as the service's public URL (``https://api.example.com``,
    optionally with a path prefix), without a trailing slash; "" stays "" (ValueError
    names ``name``)."""
    value = value.strip()
    if not value:
        return ""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name}: an http(s) URL with a host, got {value!r}")
    if parts.query or parts.fragment or "@" in parts.netloc or value.endswith(("?", "#")):
        raise ValueError(f"{name}: no user, query or fragment, got {value!r}")
    try:
        parts.port  # noqa: B018 (a bad port raises)
    except ValueError:
        raise ValueError(f"{name}: a bad port in {value!r}") from None
    return value.rstrip("/")


class DenySource(Protocol):
    """What a Guard asks about revocations: a RevocationListener or a BackgroundListener."""

    @property
    def ready(self) -> bool: ...

    def is_revoked(self, claims: dict[str, Any]) -> bool: ...

    def outlive(self, seconds: float) -> None: ...

    async def settle(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Answer:
    """A refusal: the HTTP status, the JSON body's two members and the response headers."""

    status: int
    error: str
    description: str
    headers: tuple[tuple[str, str], ...]

    @property
    def body(self) -> dict[str, str]:
        """The JSON body as a dict."""
        return {"error": self.error, "error_description": self.description}

    def json(self) -> bytes:
        """The JSON body, encoded."""
        return json.dumps(self.body).encode()

    def header_dict(self) -> dict[str, str]:
        """The headers as a dict (``Content-Type`` not included)."""
        return dict(self.headers)


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', "'")


def has_scope(claims: dict[str, Any], scope: str | Iterable[str]) -> bool:
    """Whether the token's ``scope`` claim (space-separated) holds every scope asked for."""
    wanted = scope.split() if isinstance(scope, str) else list(scope)
    granted = claims.get("scope")
    have = set(granted.split()) if isinstance(granted, str) else set()
    return all(s in have for s in wanted)


class Guard:
    """Checks one request's bearer token against a verifier and, optionally, a deny list.

    With a ``deny`` source, requests that carry a token get 503 until its first replay is
    done: a service that has not read the deny list yet must not accept revoked tokens.
    The deny source keeps its entries for the verifier's ``exp_leeway`` past their
    ``until``, so no leeway lets a revoked token back in.
    """

    def __init__(
        self,
        verifier: TokenVerifier,
        deny: DenySource | None = None,
        *,
        realm: str = "tokend",
        public_url: str = "",
        replay: dpop.MemoryReplayCache | None = None,
    ) -> None:
        self.verifier = verifier
        self.deny = deny
        if deny is not None:
            deny.outlive(verifier.exp_leeway)
        self.realm = realm
        #: the Bearer challenge alone (DRF's ``authenticate_header`` and the like)
        self.challenge = f'Bearer realm="{_quote(realm)}"'
        self.dpop_challenge = f'DPoP algs="{" ".join(dpop.ALGORITHMS)}"'
        #: every 401's challenges, one header value: Bearer and DPoP
        self.challenges = f"{self.challenge}, {self.dpop_challenge}"
        self.public_url = check_public_url(public_url)
        #: the jti of every proof accepted by this process, for the proof's iat window
        self.replay = replay if replay is not None else dpop.MemoryReplayCache()
        self.clock: Callable[[], float] = time.time

    # the answers

    def _answer(self, status: int, error: str, description: str, *extra: tuple[str, str]) -> Answer:
        return Answer(status, error, description, (*extra, ("Cache-Control", "no-store")))

    def required(self) -> Answer:
        """No credentials where a token is required: 401 with the bare challenges."""
        return self._answer(
            401, "unauthorized", "authentication required", ("WWW-Authenticate", self.challenges)
        )

    def bad_request(self, description: str) -> Answer:
        """A malformed ``Authorization``: 400 ``invalid_request``."""
        header = (
            f'{self.challenge}, error="invalid_request", error_description="{_quote(description)}"'
        )
        return self._answer(400, "invalid_request", description, ("WWW-Authenticate", header))

    def invalid(self, error: TokendClientError) -> Answer:
        """A bearer token that does not pass: 401 ``invalid_token``."""
        text = _quote(error.description)
        header = (
            f'{self.challenge}, error="invalid_token", error_description="{text}", '
            f"{self.dpop_challenge}"
        )
        return self._answer(401, "invalid_token", error.description, ("WWW-Authenticate", header))

    def invalid_dpop(self, description: str, error: str = "invalid_token") -> Answer:
        """A request with the DPoP scheme that does not pass: 401 ``invalid_token``, the
        DPoP challenge carrying ``error`` (``invalid_dpop_proof`` for a bad proof)."""
        header = f'{self.challenges}, error="{error}", error_description="{_quote(description)}"'
        return self._answer(401, "invalid_token", description, ("WWW-Authenticate", header))

    def forbidden(self, scope: str | Iterable[str]) -> Answer:
        """A valid token without the scope asked for: 403 ``insufficient_scope``."""
        wanted = scope if isinstance(scope, str) else " ".join(scope)
        header = (
            f'{self.challenge}, error="insufficient_scope", '
            f'error_description="token lacks scope", scope="{_quote(wanted)}"'
        )
        return self._answer(
            403, "insufficient_scope", "token lacks scope", ("WWW-Authenticate", header)
        )

    def unavailable(self, description: str, retry_after: int, code: str) -> Answer:
        """The subscriber cannot decide yet: 503 with ``Retry-After``."""
        return self._answer(503, code, description, ("Retry-After", str(retry_after)))

    # the check

    def _credentials(
        self, authorization: Sequence[str], query_token: bool
    ) -> tuple[str, bool] | Answer | None:
        """The request's one access token (its b64token syntax not checked yet) and
        whether it came with the DPoP scheme, None without any, an Answer when the header
        is malformed or ambiguous (or a token is in the URL). ``authorization`` is every
        ``Authorization`` value the request carries, or the one a WSGI server joined them
        into."""
        if len(authorization) == 1 and "," in authorization[0]:
            authorization = _JOINED.split(authorization[0])
        if len(authorization) > 1:
            return self.bad_request("more than one Authorization header")
        if query_token:
            return self.bad_request(
                "tokens in the URL are not accepted; use the Authorization header"
            )
        if not authorization:
            return None
        scheme, sep, credentials = authorization[0].partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            if not sep or not credentials:
                return self.bad_request("Bearer scheme without a token")
            return credentials, False
        if scheme == "dpop":
            if not sep or not credentials:
                return self.bad_request("DPoP scheme without a token")
            return credentials, True
        return self.bad_request("Authorization must use the Bearer or DPoP scheme")

    def _cached(
        self, authorization: Sequence[str], query_token: bool
    ) -> tuple[tuple[str, bool] | Answer | None, dict[str, Any] | None]:
        """The token (and its scheme), and its claims when the verifier remembers it. A
        remembered token passed the b64token check when it was first verified (only
        base64url JWS are ever remembered), so a hit skips it."""
        credentials = self._credentials(authorization, query_token)
        if not isinstance(credentials, tuple):
            return credentials, None
        claims = self.verifier.cached(credentials[0])
        if claims is None and not _B64TOKEN.fullmatch(credentials[0]):
            scheme = "DPoP" if credentials[1] else "Bearer"
            return self.bad_request(f"Authorization must be '{scheme} <one token>'"), None
        return credentials, claims

    async def check(
        self,
        authorization: Sequence[str],
        query_token: bool = False,
        dpop_request: Callable[[], DPoPRequest] | None = None,
    ) -> dict[str, Any] | Answer | None:
        """Claims, None (no credentials) or the refusal, for asyncio code.
        ``dpop_request`` is called for a request with the DPoP scheme only."""
        found, claims = self._cached(authorization, query_token)
        if not isinstance(found, tuple):
            return found
        if claims is None:
            try:
                claims = await self.verifier.verify(found[0])
            except TokendClientError as exc:
                return self._refusal(exc, found[1])
        if (refusal := self._binding(found, claims, dpop_request)) is not None:
            return refusal
        if self.deny is not None and not self.deny.ready:
            await self.deny.settle()  # a process's first request waits for the replay
        return self._judge(claims)

    def check_sync(
        self,
        authorization: Sequence[str],
        query_token: bool = False,
        dpop_request: Callable[[], DPoPRequest] | None = None,
    ) -> dict[str, Any] | Answer | None:
        """``check`` for threads: it may block on a JWKS fetch."""
        found, claims = self._cached(authorization, query_token)
        if not isinstance(found, tuple):
            return found
        if claims is None:
            try:
                claims = self.verifier.verify_sync(found[0])
            except TokendClientError as exc:
                return self._refusal(exc, found[1])
        if (refusal := self._binding(found, claims, dpop_request)) is not None:
            return refusal
        return self._judge(claims)

    # DPoP

    def _binding(
        self,
        found: tuple[str, bool],
        claims: dict[str, Any],
        dpop_request: Callable[[], DPoPRequest] | None,
    ) -> Answer | None:
        """None when the token is presented as its binding asks (a bearer token as Bearer,
        a bound one as DPoP with a good proof by its key), else the refusal."""
        cnf = claims.get("cnf")
        if not found[1]:  # Bearer: the fast path, one dict lookup
            if cnf is None:
                return None
            return self.invalid(InvalidToken("DPoP-bound token presented as a bearer token"))
        jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
        if not isinstance(jkt, str) or not jkt:
            return self.invalid_dpop("DPoP scheme used with a token not bound to a key")
        if dpop_request is None:
            return self.invalid_dpop("DPoP proofs are not checked here", "invalid_dpop_proof")
        return self._proof(found[0], jkt, dpop_request())

    def htu(self, request: DPoPRequest) -> str:
        """The URL a proof for ``request`` must name: ``public_url`` + the request's path,
        or its own origin + path."""
        return f"{self.public_url or request.origin}{request.path}"

    def _proof(self, token: str, jkt: str, request: DPoPRequest) -> Answer | None:
        proofs = [p.strip() for value in request.proofs for p in value.split(",") if p.strip()]
        if not proofs:
            return self.invalid_dpop("DPoP proof missing", "invalid_dpop_proof")
        if len(proofs) > 1:
            return self.invalid_dpop("more than one DPoP proof", "invalid_dpop_proof")
        now = self.clock()
        try:
            proof = dpop.verify_proof(
                proofs[0],
                method=request.method,
                url=self.htu(request),
                now=now,
                access_token=token,
                max_age=DPOP_MAX_AGE,
            )
        except dpop.DPoPError as exc:
            return self.invalid_dpop(f"DPoP proof refused: {exc}", "invalid_dpop_proof")
        if proof.jkt != jkt:
            return self.invalid_dpop(
                "DPoP proof signed by another key than the token is bound to", "invalid_dpop_proof"
            )
        # kept a second past the last instant verify_proof accepts the iat (iat + max_age)
        if self.replay.seen(proof.jkt, proof.jti, proof.iat + DPOP_MAX_AGE + 1, now):
            return self.invalid_dpop("DPoP proof replayed (jti seen before)", "invalid_dpop_proof")
        return None

    def _refusal(self, exc: TokendClientError, dpop_scheme: bool = False) -> Answer:
        if isinstance(exc, InvalidToken):
            return self.invalid_dpop(exc.description) if dpop_scheme else self.invalid(exc)
        if isinstance(exc, JWKSUnavailable):
            log.warning("token not verified: %s", exc.description)
            return self.unavailable(exc.description, exc.retry_after, exc.code)
        raise exc

    def _judge(self, claims: dict[str, Any]) -> dict[str, Any] | Answer:
        if self.deny is not None:
            if not self.deny.ready:
                return self.unavailable(
                    "revocation list not loaded yet", 1, "temporarily_unavailable"
                )
            if self.deny.is_revoked(claims):
                return self.invalid(TokenRevoked())
        return claims
