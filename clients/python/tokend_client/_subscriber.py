"""One subscriber, whatever the framework: its settings, verifier, deny list and Guard.

    settings = SubscriberSettings.from_env(os.environ)      # or Django's / Flask's config
    subscriber = Subscriber(settings, threaded=True)         # WSGI: the listener in a thread
    outcome = subscriber.guard.check_sync(request_authorization_values)

Every integration builds one Subscriber from the same settings, named as tokend names
them (``TOKEND_ISSUER``, ``TOKEND_REDIS_URL``...; Django's ``settings.TOKEND`` drops the
``TOKEND_`` prefix), and adapts only the request and the answer. An asyncio app runs the
RevocationListener on its own loop (``start``/``close`` in its lifespan); a threaded one
(``threaded=True``) gets a BackgroundListener, one per process, started after a fork.
The listener keeps deny entries ``exp_leeway`` seconds past their ``until``, so the
leeway on ``exp`` never outlives a revocation, and ``key.rotated`` makes the verifier
refetch the JWKS. ``TOKEND_PUBLIC_URL`` (e.g. ``https://api.example.com``) is the service's
URL as its clients call it, behind a proxy: DPoP proofs must name it + the request path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._background import BackgroundListener
from ._guard import Guard, check_public_url
from ._listener import RevocationListener
from ._verifier import MAX_EXP_LEEWAY, TokenVerifier
from .redis_target import RedisTarget

__all__ = ["Subscriber", "SubscriberSettings", "refresh_on_rotation"]


def _number(env: Mapping[str, Any], name: str, default: float) -> float:
    raw = str(env.get(name, "")).strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}: expected a number, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name}: must be >= 0, got {raw!r}")
    return value


@dataclass(frozen=True)
class SubscriberSettings:
    """Where tokend is and how strictly to check its tokens."""

    issuer: str = "http://127.0.0.1:8080"
    audience: str = "tokend"
    jwks_url: str = ""  # default: the issuer's /.well-known/jwks.json
    # None: verify only, follow no revocations
    redis: RedisTarget | None = field(default_factory=RedisTarget)
    redis_prefix: str = "tokend"
    jwks_cache_ttl: float = 300
    jwks_min_refetch: float = 30
    verify_cache_size: int = 10_000
    leeway: float = 30
    exp_leeway: float = 0
    realm: str = "tokend"
    # DPoP proofs name this + the request path; "": the request's own scheme and host
    public_url: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "public_url", check_public_url(self.public_url))

    @classmethod
    def from_env(cls, env: Mapping[str, Any]) -> SubscriberSettings:
        """The settings that ``TOKEND_*`` names in ``env`` give (ValueError names a bad one)."""

        def text(name: str, default: str) -> str:
            return str(env.get(name, "") or "").strip() or default

        exp_leeway = _number(env, "TOKEND_EXP_LEEWAY", cls.exp_leeway)
        if exp_leeway > MAX_EXP_LEEWAY:
            raise ValueError(
                f"TOKEND_EXP_LEEWAY: at most {MAX_EXP_LEEWAY} seconds, got {exp_leeway:g}"
            )
        strings = {name: str(value) for name, value in env.items() if value is not None}
        issuer = text("TOKEND_ISSUER", cls.issuer)
        return cls(
            issuer=issuer,
            audience=text("TOKEND_AUDIENCE", cls.audience),
            jwks_url=text("TOKEND_JWKS_URL", f"{issuer.rstrip('/')}/.well-known/jwks.json"),
            redis=RedisTarget.from_env(strings),
            redis_prefix=text("TOKEND_REDIS_PREFIX", cls.redis_prefix),
            jwks_cache_ttl=_number(env, "TOKEND_JWKS_CACHE_TTL", cls.jwks_cache_ttl),
            jwks_min_refetch=_number(env, "TOKEND_JWKS_MIN_REFETCH", cls.jwks_min_refetch),
            verify_cache_size=int(_number(env, "TOKEND_VERIFY_CACHE_SIZE", cls.verify_cache_size)),
            leeway=_number(env, "TOKEND_LEEWAY", cls.leeway),
            exp_leeway=exp_leeway,
            realm=text("TOKEND_REALM", cls.realm),
            public_url=check_public_url(text("TOKEND_PUBLIC_URL", ""), "TOKEND_PUBLIC_URL"),
        )

    def verifier(self) -> TokenVerifier:
        """A TokenVerifier for these settings."""
        return TokenVerifier(
            self.jwks_url or f"{self.issuer.rstrip('/')}/.well-known/jwks.json",
            issuer=self.issuer,
            audience=self.audience,
            cache_ttl=self.jwks_cache_ttl,
            min_refetch_interval=self.jwks_min_refetch,
            leeway=self.leeway,
            exp_leeway=self.exp_leeway,
            cache_size=self.verify_cache_size,
        )

    def listener(self, **options: Any) -> RevocationListener:
        """A RevocationListener for these settings (``options`` go to its constructor)."""
        if self.redis is None:
            raise ValueError("no Redis to follow revocations from")
        options.setdefault("retention_margin", self.exp_leeway)
        return RevocationListener(self.redis, prefix=self.redis_prefix, **options)


def refresh_on_rotation(verifier: TokenVerifier) -> Callable[[dict[str, Any]], None]:
    """A listener ``on_event`` that makes ``verifier`` refetch the JWKS on ``key.rotated``."""

    def on_event(event: dict[str, Any]) -> None:
        if event.get("type") == "key.rotated":
            verifier.request_refresh()

    return on_event


class Subscriber:
    """A verifier, the deny list that follows tokend (unless ``settings.redis`` is None)
    and the Guard over both."""

    def __init__(self, settings: SubscriberSettings, *, threaded: bool) -> None:
        self.settings = settings
        self.verifier = settings.verifier()
        self.listener: RevocationListener | BackgroundListener | None = None
        if settings.redis is not None:

            def make() -> RevocationListener:
                return settings.listener(on_event=refresh_on_rotation(self.verifier))

            self.listener = BackgroundListener(make) if threaded else make()
        self.guard = Guard(
            self.verifier, self.listener, realm=settings.realm, public_url=settings.public_url
        )

    @property
    def ready(self) -> bool:
        """Whether the deny list is replayed (always, without one)."""
        return self.listener is None or self.listener.ready

    def health(self) -> tuple[int, dict[str, Any]]:
        """What ``/healthz`` answers: 200 once the deny list is replayed, else 503."""
        if not self.ready:
            return 503, {"status": "starting"}
        listener = self.listener
        if isinstance(listener, BackgroundListener):
            listener = listener.listener
        return 200, {"status": "ok", "last_event": None if listener is None else listener.last_id}

    async def start(self) -> None:
        """Start the listener on the running loop (asyncio apps; threaded ones start theirs)."""
        if isinstance(self.listener, RevocationListener):
            await self.listener.start()
        elif self.listener is not None:
            self.listener.start()

    async def close(self) -> None:
        """Stop the listener and close the verifier."""
        if isinstance(self.listener, RevocationListener):
            await self.listener.close()
        elif self.listener is not None:
            self.listener.stop()
        await self.verifier.close()
