"""The Flask integration: the ``Tokend`` extension and its ``required`` decorator.

    app.config.update(TOKEND_ISSUER=..., TOKEND_REDIS_URL=...)   # the TOKEND_* names
    tokend = Tokend(app)                 # or Tokend() and tokend.init_app(app) later

    @app.get("/orders")
    @tokend.required(scope="orders:read")
    def orders():
        return {"user": current_claims()["sub"]}

Every request's ``Authorization`` goes through the Guard (``_guard.py``) before the
view: a malformed header → 400 ``invalid_request``, a bad, expired or revoked token →
401 ``invalid_token``, no keys or no replayed deny list yet → 503 with ``Retry-After``;
the claims of a valid token are in ``g.tokend`` (None without credentials). Config
``TOKEND_REQUIRE`` (true/false) makes no credentials a 401 on every path but those in
``TOKEND_EXEMPT`` (a list, or paths separated by commas or spaces). The revocation
follower runs in a thread, one per process, started after a fork (``_background.py``).
A DPoP proof (``Authorization: DPoP``) is checked against the request's method and
``TOKEND_PUBLIC_URL`` + its path, or without it ``request.scheme`` and ``request.host``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

from flask import Flask, Response, current_app, g, request

from ._guard import Answer, DPoPRequest, dpop_path, has_scope
from ._subscriber import Subscriber, SubscriberSettings

__all__ = ["Tokend", "current_claims", "render"]

log = logging.getLogger("tokend_client.flask")

F = TypeVar("F", bound=Callable[..., Any])


def render(answer: Answer) -> Response:
    """The Flask response of a Guard answer (JSON, its status and headers)."""
    return Response(
        answer.json(),
        status=answer.status,
        headers=answer.header_dict(),
        content_type="application/json; charset=utf-8",
    )


def dpop_request() -> DPoPRequest:
    """The current request's side of a DPoP proof check (asked for with the DPoP scheme)."""
    return DPoPRequest(
        request.method,
        f"{request.scheme}://{request.host}",
        dpop_path(request.script_root + request.path),
        request.headers.getlist("DPoP"),
    )


def current_claims() -> dict[str, Any] | None:
    """The verified claims of the current request (None without credentials)."""
    claims: dict[str, Any] | None = g.get("tokend")
    return claims


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _paths(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.replace(",", " ").split())
    return frozenset(str(path) for path in value or ())


def _subscriber() -> Subscriber:
    subscriber = current_app.extensions.get("tokend")
    if not isinstance(subscriber, Subscriber):
        raise RuntimeError("tokend_client.flask: call Tokend(app) or init_app(app) first")
    return subscriber


class Tokend:
    """The extension: one Subscriber per app in ``app.extensions["tokend"]``."""

    def __init__(self, app: Flask | None = None, *, subscriber: Subscriber | None = None) -> None:
        self._given = subscriber
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Build the app's Subscriber from ``app.config`` (ValueError names a bad setting)
        and check every request's credentials before its view."""
        subscriber = self._given or Subscriber(
            SubscriberSettings.from_env(app.config), threaded=True
        )
        require = _flag(app.config.get("TOKEND_REQUIRE", False))
        exempt = _paths(app.config.get("TOKEND_EXEMPT", ()))
        app.extensions["tokend"] = subscriber

        def check_credentials() -> Response | None:
            g.tokend = None
            if request.path in exempt:
                return None
            # repeated headers come joined with commas: the Guard splits them
            outcome = subscriber.guard.check_sync(
                request.headers.getlist("Authorization"),
                "access_token" in request.args,
                dpop_request,
            )
            if outcome is None and require:
                outcome = subscriber.guard.required()
            if isinstance(outcome, Answer):
                if outcome.status == 503:
                    log.warning("%s %s: %s", request.method, request.path, outcome.description)
                return render(outcome)
            g.tokend = outcome
            return None

        app.before_request(check_credentials)

    @staticmethod
    def subscriber() -> Subscriber:
        """The current app's Subscriber (its verifier, listener, guard and health)."""
        return _subscriber()

    @overload
    def required(self, view: F, /) -> F: ...

    @overload
    def required(
        self, view: None = None, /, *, scope: str | Iterable[str] | None = None
    ) -> Callable[[F], F]: ...

    def required(
        self, view: F | None = None, /, *, scope: str | Iterable[str] | None = None
    ) -> F | Callable[[F], F]:
        """A view decorator: no credentials → 401 with the bare ``WWW-Authenticate``
        challenge; a token without every ``scope`` → 403 ``insufficient_scope``.
        Use it bare (``@tokend.required``) or with a scope (``@tokend.required(scope="x")``)."""
        wanted = None if scope is None else scope if isinstance(scope, str) else tuple(scope)

        def decorate(view: F) -> F:
            @functools.wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                claims = current_claims()
                if claims is None:
                    return render(_subscriber().guard.required())
                if wanted is not None and not has_scope(claims, wanted):
                    return render(_subscriber().guard.forbidden(wanted))
                return view(*args, **kwargs)

            return wrapper  # type: ignore[return-value]

        return decorate if view is None else decorate(view)
