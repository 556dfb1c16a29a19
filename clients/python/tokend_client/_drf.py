"""Django REST framework's side of the Django integration: the caller as a user object
and ``TokendAuthentication`` (``tokend_client.django`` builds it on first use, so that
importing it never imports ``rest_framework``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ._guard import Answer, has_scope

if TYPE_CHECKING:
    from rest_framework.authentication import BaseAuthentication

__all__ = ["TokendUser", "make_drf_class"]


class TokendUser:
    """The caller behind a verified token (``request.user`` under TokendAuthentication)."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False

    def __init__(self, claims: dict[str, Any]) -> None:
        self.claims = claims
        self.sub: str | None = claims.get("sub")
        self.pk = self.id = self.username = self.sub

    def get_username(self) -> str | None:
        return self.sub

    def has_scope(self, scope: str | Iterable[str]) -> bool:
        """Whether the token grants every scope asked for."""
        return has_scope(self.claims, scope)

    def has_perm(self, perm: str, obj: object = None) -> bool:
        return False

    def has_perms(self, perms: Iterable[str], obj: object = None) -> bool:
        return False

    def has_module_perms(self, app_label: str) -> bool:
        return False

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokendUser) and other.sub == self.sub

    def __hash__(self) -> int:
        return hash(self.sub)

    def __str__(self) -> str:
        return str(self.sub)

    def __repr__(self) -> str:
        return f"TokendUser(sub={self.sub!r})"


def make_drf_class() -> type[BaseAuthentication]:
    """TokendAuthentication (imports rest_framework: only on first use)."""
    from rest_framework import exceptions
    from rest_framework.authentication import BaseAuthentication

    from .django import _MISSING, _credentials, get_subscriber

    class TokendRefused(exceptions.AuthenticationFailed):  # type: ignore[misc, unused-ignore]
        """A token refused with its RFC 6750 status (401 or 400) and JSON body."""

        def __init__(self, answer: Answer) -> None:
            super().__init__(detail=answer.body)
            self.status_code = answer.status

    class TokendUnavailable(exceptions.APIException):  # type: ignore[misc, unused-ignore]
        """503 with ``Retry-After`` (DRF's handler writes it from ``wait``)."""

        status_code = 503

        def __init__(self, answer: Answer) -> None:
            super().__init__(detail=answer.body)
            self.wait = int(answer.header_dict().get("Retry-After", "1"))

    class TokendAuthentication(BaseAuthentication):  # type: ignore[misc, unused-ignore]
        """DRF authentication by tokend access token: ``request.user`` is a TokendUser,
        ``request.auth`` the claims. Reuses TokendMiddleware's result when it ran."""

        def authenticate(self, request: Any) -> tuple[TokendUser, dict[str, Any]] | None:
            django_request = getattr(request, "_request", request)
            claims = getattr(django_request, "tokend", _MISSING)
            if claims is _MISSING:
                authorization, query_token, dpop_request = _credentials(django_request)
                if not authorization and not query_token:
                    return None
                outcome = get_subscriber().guard.check_sync(
                    authorization, query_token, dpop_request
                )
                if isinstance(outcome, Answer):
                    if outcome.status == 503:
                        raise TokendUnavailable(outcome)
                    django_request._tokend_challenge = outcome.header_dict().get("WWW-Authenticate")
                    raise TokendRefused(outcome)
                claims = outcome
            if claims is None:
                return None
            return TokendUser(claims), claims

        def authenticate_header(self, request: Any) -> str:
            django_request = getattr(request, "_request", request)
            challenge = getattr(django_request, "_tokend_challenge", None)
            return challenge or get_subscriber().guard.challenges

    TokendAuthentication.__module__ = "tokend_client.django"
    TokendRefused.__module__ = TokendUnavailable.__module__ = "tokend_client.django"
    return TokendAuthentication
