"""The Django integration: a middleware, a view decorator and a DRF authentication class.

Configured from ``settings.TOKEND``, a dict of tokend's ``TOKEND_*`` names without the
prefix (the same names and values as the environment of every other integration)::

    TOKEND = {
        "ISSUER": "https://auth.example.com",
        "AUDIENCE": "orders",
        "JWKS_URL": "https://auth.example.com/.well-known/jwks.json",
        "REDIS_URL": "redis://redis:6379/0",   # REDIS_MODE, REDIS_SENTINELS...: as tokend's
        "REDIS_PREFIX": "tokend",
        # this integration's own:
        "EXEMPT": ["/healthz"],   # paths never checked
        "REQUIRE": False,         # True: no credentials → 401 on every path but EXEMPT
        "FIRST_WAIT": 5,          # seconds a process's first request waits for the replay
        "PUBLIC_URL": "https://api.example.com",   # DPoP: the URL clients call (a proxy's)
    }
    MIDDLEWARE = [..., "tokend_client.django.TokendMiddleware"]

``TokendMiddleware`` checks every request that carries credentials (an ``Authorization``
header, or ``access_token`` in the query string, which is refused): a refusal is
answered at once (RFC 6750 JSON, see ``_guard.py``), verified claims go to
``request.tokend``, and a request without credentials gets ``request.tokend = None`` for
the view to decide (``tokend_required``), unless ``REQUIRE`` is set. A DPoP proof
(``Authorization: DPoP``) is checked against the request's method and ``PUBLIC_URL`` + its
path, or without ``PUBLIC_URL`` ``request.scheme`` and ``request.get_host()``. It works in WSGI
and ASGI stacks (sync views and ``async def`` views); the async path never blocks the
event loop.

One Subscriber per process (``get_subscriber()``): its revocation follower runs in a
thread of each worker process (started after a fork, or by the first request, which
waits up to ``FIRST_WAIT`` seconds for the deny list's replay and is answered 503 with
``Retry-After`` if it is not done by then).

``TokendAuthentication`` (Django REST framework) is defined when first asked for, so
importing this module does not import ``rest_framework``.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, overload

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, JsonResponse

from ._background import BackgroundListener
from ._drf import TokendUser
from ._guard import Answer, DPoPRequest, dpop_path, has_scope
from ._subscriber import Subscriber, SubscriberSettings

if TYPE_CHECKING:
    from rest_framework.authentication import BaseAuthentication

    TokendAuthentication: type[BaseAuthentication]  # made on first use: see __getattr__

__all__ = [
    "TokendAuthentication",
    "TokendMiddleware",
    "TokendUser",
    "get_subscriber",
    "health_view",
    "render",
    "reset",
    "tokend_required",
]

log = logging.getLogger("tokend_client.django")

#: The keys of ``settings.TOKEND`` that are this integration's, not SubscriberSettings'.
_OWN_KEYS = frozenset({"EXEMPT", "REQUIRE", "FIRST_WAIT"})
_MISSING: Any = object()

View = TypeVar("View", bound=Callable[..., Any])


# --- configuration: one Subscriber per process ------------------------------------------


@dataclass(frozen=True)
class _Config:
    env: tuple[tuple[str, str], ...]
    exempt: frozenset[str]
    require: bool
    first_wait: float | None


@dataclass
class _State:
    config: _Config
    subscriber: Subscriber
    raw: object = None  # the settings.TOKEND object the config was read from


_lock = threading.Lock()
_state: _State | None = None


def _read_config() -> _Config:
    raw = getattr(settings, "TOKEND", None)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured("settings.TOKEND must be a dict of TOKEND_* names")
    env = tuple(
        sorted(
            (f"TOKEND_{key}", str(value))
            for key, value in raw.items()
            if key not in _OWN_KEYS and value is not None
        )
    )
    exempt = raw.get("EXEMPT", ())
    if isinstance(exempt, str):
        exempt = (exempt,)
    first_wait = raw.get("FIRST_WAIT")
    try:
        wait = None if first_wait is None else float(first_wait)
    except (TypeError, ValueError):
        raise ImproperlyConfigured(f"TOKEND['FIRST_WAIT']: not a number: {first_wait!r}") from None
    return _Config(env, frozenset(exempt), bool(raw.get("REQUIRE", False)), wait)


def _current() -> _State:
    """This process's Subscriber for the current ``settings.TOKEND`` (built on first use;
    rebuilt, the old one stopped, when the setting is replaced by another value, as
    ``override_settings`` does in tests; the same object is not read again)."""
    global _state
    state = _state
    raw = getattr(settings, "TOKEND", None)
    if state is not None and raw is state.raw:  # every request: no re-reading the setting
        return state
    config = _read_config()
    if state is not None and state.config == config:
        state.raw = raw
        return state
    with _lock:
        state = _state
        if state is not None and state.config == config:
            return state
        try:
            subscriber = Subscriber(SubscriberSettings.from_env(dict(config.env)), threaded=True)
        except ValueError as exc:
            raise ImproperlyConfigured(f"settings.TOKEND: {exc}") from None
        if config.first_wait is not None and isinstance(subscriber.listener, BackgroundListener):
            subscriber.listener.first_wait = config.first_wait
        new = _State(config, subscriber, raw)
        old, _state = _state, new
    if old is not None and isinstance(old.subscriber.listener, BackgroundListener):
        old.subscriber.listener.stop()
    return new


def get_subscriber() -> Subscriber:
    """This process's Subscriber (verifier, listener, guard), from ``settings.TOKEND``."""
    return _current().subscriber


def reset() -> None:
    """Stop this process's Subscriber and forget it (the next request builds a new one)."""
    global _state
    with _lock:
        old, _state = _state, None
    if old is not None and isinstance(old.subscriber.listener, BackgroundListener):
        old.subscriber.listener.stop()


# --- the request ------------------------------------------------------------------------


Credentials = tuple[list[str], bool, Callable[[], DPoPRequest]]


def dpop_request(request: HttpRequest) -> DPoPRequest:
    """The request's side of a DPoP proof check (only asked for with the DPoP scheme)."""
    proof = request.META.get("HTTP_DPOP")
    return DPoPRequest(
        request.method or "GET",
        f"{request.scheme}://{request.get_host()}",
        dpop_path(request.path),
        [] if proof is None else [proof],
    )


def _credentials(request: HttpRequest) -> Credentials:
    """The ``Authorization`` values (Django keeps one, duplicates joined by commas),
    whether the query string carries ``access_token``, and the DPoP side of the request."""
    header = request.META.get("HTTP_AUTHORIZATION")
    return (
        ([] if header is None else [header]),
        "access_token" in request.GET,
        lambda: dpop_request(request),
    )


def render(answer: Answer) -> JsonResponse:
    """An Answer as a Django response: its status, JSON body and headers."""
    return JsonResponse(answer.body, status=answer.status, headers=answer.header_dict())


def _outcome_response(
    request: HttpRequest, outcome: dict[str, Any] | Answer | None
) -> JsonResponse | None:
    """Store the claims (or None) on the request; a refusal as a response."""
    if isinstance(outcome, Answer):
        if outcome.status == 503:
            log.warning("%s %s: %s", request.method, request.path, outcome.description)
        return render(outcome)
    request.tokend = outcome  # type: ignore[attr-defined, unused-ignore]
    return None


class TokendMiddleware:
    """Verifies the request's bearer token: ``request.tokend`` is its claims, or None
    without credentials; a bad, expired or revoked token is answered here."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self._async:
            return self.__acall__(request)
        state = _current()
        todo = _precheck(request, state)
        if isinstance(todo, tuple):
            todo = _outcome_response(request, state.subscriber.guard.check_sync(*todo))
        return todo if todo is not None else self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> Any:
        state = _current()
        todo = _precheck(request, state)
        if isinstance(todo, tuple):
            todo = _outcome_response(request, await state.subscriber.guard.check(*todo))
        return todo if todo is not None else await self.get_response(request)


def _precheck(request: HttpRequest, state: _State) -> Credentials | JsonResponse | None:
    """The credentials to check; None: pass the request on (``request.tokend`` None); or
    the answer (no credentials under ``REQUIRE``)."""
    if request.path_info not in state.config.exempt:
        credentials = _credentials(request)
        if credentials[0] or credentials[1]:
            return credentials
        if state.config.require:
            return render(state.subscriber.guard.required())
    request.tokend = None  # type: ignore[attr-defined, unused-ignore]
    return None


# --- the view decorator -----------------------------------------------------------------


def _judge(
    request: HttpRequest, state: _State, scope: str | Iterable[str] | None
) -> JsonResponse | None:
    claims = request.tokend  # type: ignore[attr-defined, unused-ignore]
    guard = state.subscriber.guard
    if claims is None:
        return render(guard.required())
    if scope is not None and not has_scope(claims, scope):
        return render(guard.forbidden(scope))
    return None


@overload
def tokend_required(view: View, *, scope: str | Iterable[str] | None = None) -> View: ...


@overload
def tokend_required(
    view: None = None, *, scope: str | Iterable[str] | None = None
) -> Callable[[View], View]: ...


def tokend_required(
    view: View | None = None, *, scope: str | Iterable[str] | None = None
) -> View | Callable[[View], View]:
    """A view that needs a valid token (and every scope in ``scope``): 401 with the
    ``WWW-Authenticate: Bearer realm=...`` challenge without one, 403
    ``insufficient_scope`` without the scope. For sync and ``async def`` views, with or
    without parentheses. Without TokendMiddleware it checks the token itself."""

    def decorate(view: View) -> View:
        if iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                state = _current()
                if getattr(request, "tokend", _MISSING) is _MISSING:
                    outcome = await state.subscriber.guard.check(*_credentials(request))
                    refusal = _outcome_response(request, outcome)
                    if refusal is not None:
                        return refusal
                refusal = _judge(request, state, scope)
                return refusal if refusal is not None else await view(request, *args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            state = _current()
            if getattr(request, "tokend", _MISSING) is _MISSING:
                outcome = state.subscriber.guard.check_sync(*_credentials(request))
                refusal = _outcome_response(request, outcome)
                if refusal is not None:
                    return refusal
            refusal = _judge(request, state, scope)
            return refusal if refusal is not None else view(request, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate if view is None else decorate(view)


def health_view(request: HttpRequest) -> HttpResponse:
    """``/healthz``: 200 ``{"status": "ok", "last_event": ...}`` once the deny list is
    replayed, else 503 ``{"status": "starting"}`` (a sync view)."""
    status, body = get_subscriber().health()
    return JsonResponse(body, status=status)


# --- Django REST framework: in _drf.py, built on first use --------------------------


def __getattr__(name: str) -> Any:
    if name == "TokendAuthentication":
        from ._drf import make_drf_class

        value = make_drf_class()
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
