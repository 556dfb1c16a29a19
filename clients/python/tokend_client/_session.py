"""The client side of tokend's flow: log in, send the access token, refresh it, log out.

    async with TokenSession("http://tokend:8080") as tokend:
        await tokend.login("alice", password)
        async with tokend.get("http://orders:8000/orders") as resp:  # Bearer <access>
            print(await resp.json())

How a request gets its token (the seed's steps 5 to 8):

1. The access token goes in ``Authorization`` on every request. Within ``leeway``
   seconds of its expiry it is refreshed first, so most calls never see a 401; if
   tokend cannot be reached then, the still-valid token is used meanwhile.
2. A 401 whose ``WWW-Authenticate`` carries ``error="invalid_token"`` refreshes and
   repeats the request once (its body must be re-sendable: ``json=``, or ``data=`` as
   bytes, str or a form dict; a streaming body is sent once and its 401 returned,
   though the tokens are refreshed for the next call).
3. Refreshing is ``POST /auth/refresh`` with the refresh token in ``Authorization``;
   the new access token comes back in the ``Authorization`` response header and the
   rotated refresh token in ``X-Refresh-Token``; both go to the store.
4. Single flight: however many requests need a refresh at once, one refresh request
   is made and the others wait for it; a caller whose token was replaced meanwhile
   just uses the new one. (Two refreshes with one refresh token would reach tokend as
   a replay; beyond its grace that is reuse, and reuse ends the session.)
5. A refresh answered 401 means the session is over: the store is cleared and
   ``LoginRequired`` raised, unless ``on_login_required`` logs in again. A 503, 429,
   5xx, timeout or connection error is retried with backoff honouring ``Retry-After``
   (capped); if tokend stays away, ``TokendUnavailable`` is raised and the tokens are
   kept. A refresh whose answer was lost is safe to retry: tokend's reuse grace returns
   the same successor to the same refresh token.

6. DPoP (RFC 9449), with ``dpop=True`` (a P-256 key made on first use, kept next to
   a ``FileTokenStore``'s file) or ``dpop=`` a ``DPoPKey``: login and refresh carry a
   proof, and so does every request with a bound token (``Authorization: DPoP``, the
   proof's ``ath`` the token's hash). A ``DPoP-Nonce`` in any answer goes into the next
   proof to that origin; an answer asking for one is repeated once with it. See
   ``_session_dpop``.

Expiry times are the client's clock at the request plus ``expires_in``, so a client
clock that is off does not matter. Errors of requests to your own APIs (connection
refused, timeouts) are aiohttp's, as with ``aiohttp.ClientSession``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from . import _wire
from ._errors import LoginRequired, TokendClientError, TokendUnavailable
from ._session_dpop import Prover, challenge_error
from ._store import MemoryTokenStore, Tokens, TokenStore

if TYPE_CHECKING:
    from .dpop import DPoPKey

__all__ = ["LoginHook", "TokenSession"]

log = logging.getLogger("tokend_client.session")

Clock = Callable[[], float]
#: ``on_login_required(session)``: log in again (``await session.login(...)``) and return
#: True to retry, or False to let ``LoginRequired`` through.
LoginHook = Callable[["TokenSession"], Awaitable[bool]]

# data= bodies that can be sent a second time (a form dict is encoded anew each time).
_REPLAYABLE_DATA = (bytes, bytearray, str, dict, list, tuple)


class TokenSession:
    """An aiohttp client that keeps a tokend session alive; ``close()`` when done.

    ``base_url`` is tokend's root; relative request URLs resolve against it (``"auth/me"``
    and ``"/auth/me"`` alike when tokend sits at the root). ``store`` keeps the pair
    (``MemoryTokenStore`` by default). ``session`` is an aiohttp session to use (not
    closed here); without one the TokenSession makes and closes its own. ``leeway``
    is how many seconds before expiry the access token is refreshed ahead (a negative
    value uses it past ``expires_in`` and leaves it to tokend's 401). A refresh that
    meets a transient failure is retried ``max_retries`` times, waiting ``Retry-After``
    or ``backoff`` doubling, at most ``max_retry_delay`` seconds; each tokend call
    times out after ``timeout`` seconds. ``clock`` gives epoch seconds. ``dpop``: False,
    True (a new ES256 key; with a ``FileTokenStore`` loaded from, or saved to, a ``0600``
    PEM file next to its file) or a ``DPoPKey`` to sign proofs with.
    """

    def __init__(
        self,
        base_url: str | URL,
        *,
        store: TokenStore | None = None,
        session: aiohttp.ClientSession | None = None,
        leeway: float = 30,
        on_login_required: LoginHook | None = None,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_retry_delay: float = 30,
        timeout: float = 10,
        clock: Clock = time.time,
        dpop: bool | DPoPKey = False,
    ) -> None:
        base = URL(str(base_url))
        if not base.is_absolute():
            raise ValueError(f"base_url must be absolute, got {str(base_url)!r}")
        self.base_url = base if base.path.endswith("/") else base.with_path(base.path + "/")
        self.store: TokenStore = store if store is not None else MemoryTokenStore()
        self.leeway = leeway
        self.on_login_required = on_login_required
        self.max_retries = max(0, max_retries)
        self.backoff = backoff
        self.max_retry_delay = max_retry_delay
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock
        self._session = session
        self._owns_session = session is None
        self._tokens: Tokens | None = None
        self._loaded = False
        self._load_lock = asyncio.Lock()
        self._renewal: asyncio.Task[Tokens] | None = None
        self._dpop = Prover(dpop, self.store)
        #: Refresh requests sent to tokend, retries included.
        self.refreshes = 0
        #: Requests repeated after a 401 ``invalid_token``.
        self.retried = 0

    # lifecycle

    async def __aenter__(self) -> TokenSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop a refresh in flight and close the aiohttp session if it is ours."""
        if self._renewal is not None and not self._renewal.done():
            self._renewal.cancel()
            await asyncio.gather(self._renewal, return_exceptions=True)
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def dpop_key(self) -> DPoPKey | None:
        """The DPoP key once it is in use (None without DPoP, or before the first proof)."""
        return self._dpop.key

    @property
    def tokens(self) -> Tokens | None:
        """The pair in use (``None`` before the store was first read, or when logged out)."""
        return self._tokens

    # logging in and out

    async def login(self, username: str, password: str) -> Tokens:
        """Log in at ``/auth/login`` and store the pair.

        Raises LoginFailed (bad credentials; 429 with ``retry_after``) or
        TokendUnavailable.
        """
        started = self._clock()
        try:
            resp, body = await self._token_call(
                self._endpoint("auth/login"), {}, json={"username": username, "password": password}
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TokendUnavailable(f"cannot reach tokend: {exc or type(exc).__name__}") from exc
        if resp.status != 200:
            raise _wire.login_error(resp, body, self._clock())
        tokens = _wire.pair(resp.headers, _wire.json_object(body), started)
        await self._set(tokens)
        return tokens

    async def login_with(self, obtain: Callable[[], Awaitable[Mapping[str, Any]]]) -> Tokens:
        """Store the pair from another login (social login): ``obtain()`` returns a token
        body (``access_token``, ``refresh_token``, ``expires_in``, ``refresh_expires_in``)."""
        started = self._clock()
        tokens = _wire.pair({}, await obtain(), started)
        await self._set(tokens)
        return tokens

    async def logout(self) -> None:
        """End the session at ``/auth/logout`` and clear the store, whatever tokend says.

        An expired access token is refreshed first, so the session really ends at tokend.
        When tokend cannot be reached the store is cleared all the same and
        TokendUnavailable raised: the tokens are gone here, but the session lives on at
        tokend until it expires.
        """
        try:
            if await self._current() is None:
                return
            resp = await self._request("POST", self._endpoint("auth/logout"), {}, hook=False)
            resp.release()  # 204, or 401 for a session that was already over
            if resp.status in _wire.TRANSIENT_STATUS:
                raise TokendUnavailable(
                    f"tokend answered {resp.status} to the logout",
                    int(_wire.retry_after(resp.headers, self._clock()) or 5),
                )
        except LoginRequired:
            pass  # the session was over already
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TokendUnavailable(f"cannot reach tokend: {exc or type(exc).__name__}") from exc
        finally:
            self._tokens = None
            self._loaded = True
            await self.store.clear()

    async def me(self) -> dict[str, Any]:
        """The caller as tokend sees it (``GET /auth/me``): ``{sub, username, sid, exp}``."""
        try:
            async with self.get(self._endpoint("auth/me"), timeout=self._timeout) as resp:
                body = await resp.read()
                status, headers = resp.status, resp.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TokendUnavailable(f"cannot reach tokend: {exc or type(exc).__name__}") from exc
        if status == 200:
            return _wire.json_object(body)
        if status in _wire.TRANSIENT_STATUS:
            retry = _wire.retry_after(headers, self._clock())
            raise TokendUnavailable(f"tokend answered {status}", int(retry or 5))
        if status == 401:
            raise LoginRequired(_wire.description(body) or "tokend refused the access token")
        raise TokendClientError(f"/auth/me answered {status}: {_wire.description(body)}")

    # requests

    def request(self, method: str, url: str | URL, **kwargs: Any) -> _ResponseContext:
        """Send a request with the access token; ``await`` it or use ``async with``.

        Keywords are aiohttp's (``json``, ``data``, ``params``, ``headers``, ``timeout``,
        ...), except ``auth`` and an ``Authorization`` header: the token is set here,
        for whatever URL is asked for, so send only to services meant to see it.
        Raises LoginRequired when there is no session (and the hook did not make one)
        and TokendUnavailable when a needed refresh could not reach tokend.
        """
        return _ResponseContext(self._request(method, self._url(url), kwargs))

    def get(self, url: str | URL, **kwargs: Any) -> _ResponseContext:
        """``request("GET", url, ...)``."""
        return self.request("GET", url, **kwargs)

    def post(self, url: str | URL, **kwargs: Any) -> _ResponseContext:
        """``request("POST", url, ...)``."""
        return self.request("POST", url, **kwargs)

    def put(self, url: str | URL, **kwargs: Any) -> _ResponseContext:
        """``request("PUT", url, ...)``."""
        return self.request("PUT", url, **kwargs)

    def patch(self, url: str | URL, **kwargs: Any) -> _ResponseContext:
        """``request("PATCH", url, ...)``."""
        return self.request("PATCH", url, **kwargs)

    def delete(self, url: str | URL, **kwargs: Any) -> _ResponseContext:
        """``request("DELETE", url, ...)``."""
        return self.request("DELETE", url, **kwargs)

    async def _request(
        self, method: str, url: URL, kwargs: dict[str, Any], *, hook: bool = True
    ) -> aiohttp.ClientResponse:
        headers: CIMultiDict[str] = CIMultiDict(kwargs.pop("headers", None) or {})
        if "Authorization" in headers or "auth" in kwargs:
            raise ValueError("TokenSession sets the Authorization header itself")
        data = kwargs.get("data")
        replayable = data is None or isinstance(data, _REPLAYABLE_DATA)
        tokens = await self._usable(hook)
        resp = await self._send(method, url, tokens, headers, kwargs, replayable)
        if resp.status != 401 or not (
            _wire.invalid_token(resp) or challenge_error(resp.headers) == "invalid_token"
        ):
            return resp
        if not replayable:
            await resp.read()  # keep the 401 readable for the caller
            await self._renewed(tokens, hook=hook)
            return resp
        resp.release()
        tokens = await self._renewed(tokens, hook=hook)
        self.retried += 1
        return await self._send(method, url, tokens, headers, kwargs, replayable)

    async def _send(
        self,
        method: str,
        url: URL,
        tokens: Tokens,
        headers: CIMultiDict[str],
        kwargs: dict[str, Any],
        replayable: bool,
    ) -> aiohttp.ClientResponse:
        """Send with the token (and a DPoP proof when bound); once more with a nonce asked for."""
        for attempt in (0, 1):
            sent = CIMultiDict(headers)
            sent.update(await self._dpop.resource_headers(method, url, tokens.access_token))
            resp = await self._http().request(method, url, headers=sent, **kwargs)
            again = self._dpop.wants_nonce(url, resp.status, resp.headers)  # notes its nonce
            if attempt or not replayable or not again:
                return resp
            resp.release()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _token_call(
        self, url: URL, headers: dict[str, str], **kwargs: Any
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        """POST to a token endpoint (with a proof when DPoP is on; once more with a nonce
        asked for): the answer, released, and its body."""
        for attempt in (0, 1):
            sent = {**headers, **await self._dpop.token_headers(url)}
            async with self._http().post(
                url, headers=sent, timeout=self._timeout, allow_redirects=False, **kwargs
            ) as resp:
                body = await resp.read()
            if not self._dpop.wants_nonce(url, resp.status, resp.headers, body) or attempt:
                break
        return resp, body

    # keeping the pair fresh

    async def _current(self) -> Tokens | None:
        if not self._loaded:
            async with self._load_lock:
                if not self._loaded:
                    self._tokens = await self.store.load()
                    self._loaded = True
        return self._tokens

    async def _set(self, tokens: Tokens) -> None:
        # Memory first: if the store fails, this process still holds the rotated token.
        self._tokens = tokens
        self._loaded = True
        await self.store.save(tokens)

    async def _usable(self, hook: bool) -> Tokens:
        """Tokens to send now: the current pair, refreshed first when due."""
        tokens = await self._current()
        if tokens is None:
            return await self._renewed(None, hook=hook)
        remaining = tokens.access_expires_at - self._clock()
        if remaining > self.leeway:
            return tokens
        if remaining <= 0:
            return await self._renewed(tokens, hook=hook)
        if asyncio.current_task() is self._renewal:
            return tokens  # the login hook's own request: it cannot wait for itself
        # Refresh ahead: wait for it only while the current token still works, and keep
        # using that token if tokend is unavailable meanwhile.
        task = self._renewal_task(hook)
        done, _ = await asyncio.wait({task}, timeout=remaining)
        if not done:
            return tokens
        if isinstance(task.exception(), TokendUnavailable):
            log.warning("refresh ahead failed (%s); using the current token", task.exception())
            return tokens
        return task.result()

    async def _renewed(self, stale: Tokens | None, *, hook: bool = True) -> Tokens:
        """A pair newer than ``stale``, from the one renewal shared by all callers."""
        current = self._tokens
        if current is not None and current != stale:
            return current  # someone else renewed since this caller looked
        if asyncio.current_task() is self._renewal:
            raise RuntimeError("on_login_required must log in before it sends requests")
        return await asyncio.shield(self._renewal_task(hook))

    def _renewal_task(self, hook: bool) -> asyncio.Task[Tokens]:
        if self._renewal is None or self._renewal.done():
            task = asyncio.create_task(self._renew(hook), name="tokend-client-refresh")
            # Waiters may all have gone (cancelled, or refresh-ahead callers that moved
            # on); its error is still retrieved so asyncio does not report it.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._renewal = task
        return self._renewal

    async def _renew(self, hook: bool) -> Tokens:
        # Another process sharing the store (the CLI's file) may have refreshed already.
        # Adopt its pair when it is newer than ours, or gone (a logout elsewhere).
        stored, ours = await self.store.load(), self._tokens
        if stored is None or ours is None or stored.access_expires_at > ours.access_expires_at:
            self._tokens = stored
            if stored is not None and stored.access_expires_at - self.leeway > self._clock():
                return stored
        tokens = self._tokens
        reason = LoginRequired("not logged in")
        if tokens is not None:
            try:
                return await self._refresh(tokens)
            except LoginRequired as exc:
                reason = exc
                if self._tokens == tokens:
                    self._tokens = None
                    await self.store.clear()
        if self._tokens is not None:
            return self._tokens  # a login happened meanwhile
        hook_fn = self.on_login_required if hook else None
        if hook_fn is not None and await hook_fn(self) and self._tokens is not None:
            return self._tokens
        raise reason

    async def _refresh(self, tokens: Tokens) -> Tokens:
        """Rotate the pair at tokend, retrying transient failures."""
        attempt = 0
        while True:
            try:
                fresh = await self._refresh_once(tokens)
            except _Transient as exc:
                if attempt >= self.max_retries:
                    raise TokendUnavailable(
                        f"refresh failed {attempt + 1} times: {exc}", int(exc.retry_after or 5)
                    ) from exc
                delay = exc.retry_after
                if delay is None:
                    # Jitter spreads the clients that all lost tokend at the same moment.
                    delay = self.backoff * 2**attempt * (1 + random.random() / 4)  # noqa: S311
                delay = min(delay, self.max_retry_delay)
                log.info("refresh: %s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                attempt += 1
                continue
            if self._tokens == tokens:
                await self._set(fresh)
                return fresh
            # A login replaced the session while this refresh was in flight.
            return self._tokens or fresh

    async def _refresh_once(self, tokens: Tokens) -> Tokens:
        started = self._clock()
        self.refreshes += 1
        try:
            resp, body = await self._token_call(
                self._endpoint("auth/refresh"), {"Authorization": f"Bearer {tokens.refresh_token}"}
            )
            status, headers = resp.status, resp.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Transient(f"cannot reach tokend: {exc or type(exc).__name__}") from exc
        if status == 200:
            return _wire.pair(headers, _wire.json_object(body), started)
        if status == 401:
            raise LoginRequired(_wire.description(body) or "refresh token refused, log in again")
        if status in _wire.TRANSIENT_STATUS:
            raise _Transient(f"tokend answered {status}", _wire.retry_after(headers, self._clock()))
        raise TokendClientError(f"refresh answered {status}: {_wire.description(body)}")

    # URLs and the aiohttp session

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _endpoint(self, path: str) -> URL:
        return self.base_url.join(URL(path))

    def _url(self, url: str | URL) -> URL:
        target = URL(str(url))
        return target if target.is_absolute() else self.base_url.join(target)


class _ResponseContext:
    """What ``TokenSession.request`` returns: await it for the response, or use
    ``async with`` to have it released at the end of the block."""

    __slots__ = ("_coro", "_resp")

    def __init__(self, coro: Coroutine[Any, Any, aiohttp.ClientResponse]) -> None:
        self._coro = coro
        self._resp: aiohttp.ClientResponse | None = None

    def __await__(self) -> Generator[Any, None, aiohttp.ClientResponse]:
        return self._coro.__await__()

    async def __aenter__(self) -> aiohttp.ClientResponse:
        self._resp = await self._coro
        return self._resp

    async def __aexit__(self, *exc_info: object) -> None:
        if self._resp is not None:
            self._resp.release()


class _Transient(Exception):
    """A refresh failure worth retrying; ``retry_after`` from tokend, when it said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
