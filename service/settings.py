"""Settings: one frozen object built once from the environment and passed down."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from tokend_client.redis_target import RedisTarget

from . import browser_settings, dpop_settings
from .dpop_settings import DPoPMode
from .errors import ConfigError
from .webhook_settings import WebhookEndpoint, backchannel_endpoint_id, parse_webhooks

# The event log's partitions: each is one hash slot of a Redis Cluster.
MAX_PARTITIONS = 256

T = TypeVar("T")

SIGNING_ALGS = ("EdDSA", "ES256", "RS256")


@dataclass(frozen=True)
class OAuthClient:
    """A registered OAuth client; ``secret`` is None for a public client."""

    client_id: str
    secret: str | None = None
    # OpenID Connect Back-Channel Logout 1.0 (tokend as the OP; workers/backchannel.py):
    # where a logout token is POSTed when a session of this client ends.
    backchannel_logout_uri: str | None = None
    # RFC 9449 section 5.2: every token request of this client needs a DPoP proof.
    dpop_bound_access_tokens: bool = False

    @property
    def confidential(self) -> bool:
        return self.secret is not None


@dataclass(frozen=True)
class OIDCProvider:
    """An external OpenID Connect provider used for social login."""

    name: str
    issuer: str
    client_id: str
    client_secret: str
    scopes: str = "openid profile email"


@dataclass(frozen=True)
class Settings:
    """Every tunable of tokend; see the README's settings table."""

    host: str = "127.0.0.1"
    port: int = 8080
    redis_prefix: str = "tokend"
    redis_pool_size: int = 64
    redis_pool_timeout: float = 2.0
    # standalone | cluster | sentinel, and where (tokend_client/redis_target.py reads the env)
    redis: RedisTarget = field(default_factory=RedisTarget)
    # Event-log partitions (fixed when a deployment is created; every user lives in one)
    redis_partitions: int = 16
    # Replicas that must have a revocation or a login before it is answered (Redis WAIT)
    redis_replica_acks: int = 0
    redis_replica_ack_timeout: int = 1000
    processes: int = 1
    database_url: str = "sqlite+aiosqlite:///./tokend.db"
    issuer: str = "http://127.0.0.1:8080"
    audience: str = "tokend"
    access_ttl: int = 900
    refresh_idle_ttl: int = 1_209_600
    refresh_absolute_ttl: int = 7_776_000
    refresh_reuse_grace: int = 10
    signing_alg: str = "EdDSA"
    leeway: int = 30
    login_failures_per_user: int = 10
    login_failures_per_ip: int = 100
    login_failure_window: int = 900
    # Successful logins per user per window, and sessions a user may hold at once (past
    # it, a login ends the least recently used one; 0: no cap).
    logins_per_user: int = 60
    max_sessions_per_user: int = 100
    registrations_per_ip: int = 20
    registration_open: bool = True
    key_encryption_key: str | None = None
    argon2_time_cost: int = 2
    argon2_memory_kib: int = 19_456
    argon2_parallelism: int = 1
    # Threads hashing passwords: by default one core fewer than the machine has, so a
    # login storm never takes the event loop's core (refreshes keep their latency).
    hash_workers: int = field(default_factory=lambda: max(1, (os.cpu_count() or 2) - 1))
    key_rotation_period: int = 30 * 86_400
    key_publish_delay: int = 900
    trust_forwarded_for: bool = False
    # Proxies whose X-Forwarded-For entries are believed; set, it implies
    # trust_forwarded_for (see service.http.request.client_info).
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    worker_metrics_port: int = 0
    oauth_clients: Mapping[str, OAuthClient] = field(default_factory=dict)
    oidc_providers: Mapping[str, OIDCProvider] = field(default_factory=dict)
    oidc_return_to: tuple[str, ...] = ()
    # Social-login flow starts (each writes a Redis record) per client IP and
    # TOKEND_LOGIN_FAILURE_WINDOW.
    oidc_starts_per_ip: int = 60
    # Signed webhooks (docs/webhooks.md): endpoints, attempts per event before it becomes a
    # dead letter, how long the event streams keep what an endpoint has not received,
    # the per-request timeout and the first retry's delay (seconds).
    webhooks: tuple[WebhookEndpoint, ...] = ()
    webhook_max_attempts: int = 8
    webhook_retention: int = 7 * 86_400
    webhook_timeout: float = 5.0
    webhook_backoff: float = 1.0
    # Browsers (docs/browser.md): the refresh token in an HttpOnly cookie instead of the
    # body, and the origins whose pages may call tokend with it (CORS, the CSRF check).
    refresh_cookie: bool = False
    allowed_origins: tuple[str, ...] = ()
    # DPoP (docs/dpop.md): the policy of the /auth/* token requests, and server nonces.
    dpop: DPoPMode = dpop_settings.DEFAULT_MODE
    dpop_nonce: bool = False

    @property
    def browser_origins(self) -> frozenset[str]:
        """TOKEND_ALLOWED_ORIGINS and, always, the issuer's own origin."""
        return frozenset((*self.allowed_origins, browser_settings.issuer_origin(self.issuer)))

    @property
    def stream_retention(self) -> int:
        """Seconds the partitions' event streams keep an entry (lua/common.lua's MINID):
        every revocation that can still matter plus a margin, and with webhooks at least
        TOKEND_WEBHOOK_RETENTION, so nothing an endpoint has not received is trimmed
        before that."""
        base = self.access_ttl + self.leeway + 300
        pushed = self.webhooks or any(c.backchannel_logout_uri for c in self.oauth_clients.values())
        return max(base, self.webhook_retention) if pushed else base

    @property
    def redis_url(self) -> str:
        """Standalone: the server; cluster: a node to discover the others from."""
        return self.redis.url

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from an environment mapping; raise ConfigError naming the variable."""
        r = _Reader(env)
        settings = cls(
            host=r.get("TOKEND_HOST", cls.host, str),
            port=r.get("TOKEND_PORT", cls.port, _port),
            redis=_redis_target(env),
            redis_partitions=r.get("TOKEND_REDIS_PARTITIONS", cls.redis_partitions, _partitions),
            redis_replica_acks=r.get(
                "TOKEND_REDIS_REPLICA_ACKS", cls.redis_replica_acks, _non_negative
            ),
            redis_replica_ack_timeout=r.get(
                "TOKEND_REDIS_REPLICA_ACK_TIMEOUT", cls.redis_replica_ack_timeout, _positive
            ),
            processes=r.get("TOKEND_PROCESSES", cls.processes, _positive),
            redis_prefix=r.get("TOKEND_REDIS_PREFIX", cls.redis_prefix, _prefix),
            redis_pool_size=r.get("TOKEND_REDIS_POOL_SIZE", cls.redis_pool_size, _positive),
            redis_pool_timeout=r.get(
                "TOKEND_REDIS_POOL_TIMEOUT", cls.redis_pool_timeout, _positive_float
            ),
            database_url=r.get("TOKEND_DATABASE_URL", cls.database_url, _database_url),
            issuer=r.get("TOKEND_ISSUER", cls.issuer, _http_url),
            audience=r.get("TOKEND_AUDIENCE", cls.audience, _nonempty),
            access_ttl=r.get("TOKEND_ACCESS_TTL", cls.access_ttl, _positive),
            refresh_idle_ttl=r.get("TOKEND_REFRESH_IDLE_TTL", cls.refresh_idle_ttl, _positive),
            refresh_absolute_ttl=r.get(
                "TOKEND_REFRESH_ABSOLUTE_TTL", cls.refresh_absolute_ttl, _positive
            ),
            refresh_reuse_grace=r.get(
                "TOKEND_REFRESH_REUSE_GRACE", cls.refresh_reuse_grace, _non_negative
            ),
            signing_alg=r.get("TOKEND_SIGNING_ALG", cls.signing_alg, _alg),
            leeway=r.get("TOKEND_LEEWAY", cls.leeway, _non_negative),
            login_failures_per_user=r.get(
                "TOKEND_LOGIN_FAILURES_PER_USER", cls.login_failures_per_user, _positive
            ),
            login_failures_per_ip=r.get(
                "TOKEND_LOGIN_FAILURES_PER_IP", cls.login_failures_per_ip, _positive
            ),
            login_failure_window=r.get(
                "TOKEND_LOGIN_FAILURE_WINDOW", cls.login_failure_window, _positive
            ),
            logins_per_user=r.get("TOKEND_LOGINS_PER_USER", cls.logins_per_user, _positive),
            max_sessions_per_user=r.get(
                "TOKEND_MAX_SESSIONS_PER_USER", cls.max_sessions_per_user, _non_negative
            ),
            registrations_per_ip=r.get(
                "TOKEND_REGISTRATIONS_PER_IP", cls.registrations_per_ip, _positive
            ),
            registration_open=r.get("TOKEND_REGISTRATION", True, _registration),
            key_encryption_key=r.get("TOKEND_KEY_ENCRYPTION_KEY", None, _kek),
            argon2_time_cost=r.get("TOKEND_ARGON2_TIME_COST", cls.argon2_time_cost, _positive),
            argon2_memory_kib=r.get(
                "TOKEND_ARGON2_MEMORY_KIB", cls.argon2_memory_kib, _argon2_memory
            ),
            argon2_parallelism=r.get(
                "TOKEND_ARGON2_PARALLELISM", cls.argon2_parallelism, _positive
            ),
            hash_workers=r.get("TOKEND_HASH_WORKERS", max(1, (os.cpu_count() or 2) - 1), _positive),
            key_rotation_period=r.get(
                "TOKEND_KEY_ROTATION_PERIOD", cls.key_rotation_period, _positive
            ),
            key_publish_delay=r.get(
                "TOKEND_KEY_PUBLISH_DELAY", cls.key_publish_delay, _non_negative
            ),
            trust_forwarded_for=r.get("TOKEND_TRUST_FORWARDED_FOR", False, _bool),
            trusted_proxies=r.get("TOKEND_TRUSTED_PROXIES", (), _networks),
            worker_metrics_port=r.get("TOKEND_WORKER_METRICS_PORT", 0, _port),
            # Read-only views: a frozen Settings must not be changeable through its mappings.
            oauth_clients=MappingProxyType(r.get("TOKEND_OAUTH_CLIENTS", {}, _oauth_clients)),
            oidc_providers=MappingProxyType(r.get("TOKEND_OIDC_PROVIDERS", {}, _oidc_providers)),
            oidc_return_to=r.get("TOKEND_OIDC_RETURN_TO", (), _url_list),
            oidc_starts_per_ip=r.get(
                "TOKEND_OIDC_STARTS_PER_IP", cls.oidc_starts_per_ip, _positive
            ),
            webhooks=r.get("TOKEND_WEBHOOKS", (), parse_webhooks),
            webhook_max_attempts=r.get(
                "TOKEND_WEBHOOK_MAX_ATTEMPTS", cls.webhook_max_attempts, _positive
            ),
            webhook_retention=r.get("TOKEND_WEBHOOK_RETENTION", cls.webhook_retention, _positive),
            webhook_timeout=r.get("TOKEND_WEBHOOK_TIMEOUT", cls.webhook_timeout, _positive_float),
            webhook_backoff=r.get("TOKEND_WEBHOOK_BACKOFF", cls.webhook_backoff, _positive_float),
            refresh_cookie=r.get("TOKEND_REFRESH_COOKIE", False, _bool),
            allowed_origins=r.get("TOKEND_ALLOWED_ORIGINS", (), browser_settings.origins),
            dpop=r.get("TOKEND_DPOP", dpop_settings.DEFAULT_MODE, dpop_settings.mode),
            dpop_nonce=r.get("TOKEND_DPOP_NONCE", False, _bool),
        )
        if settings.refresh_idle_ttl > settings.refresh_absolute_ttl:
            raise ConfigError(
                "TOKEND_REFRESH_IDLE_TTL: must not exceed TOKEND_REFRESH_ABSOLUTE_TTL"
            )
        if settings.refresh_reuse_grace >= settings.refresh_idle_ttl:
            raise ConfigError("TOKEND_REFRESH_REUSE_GRACE: must be below TOKEND_REFRESH_IDLE_TTL")
        bcl = {
            backchannel_endpoint_id(c.client_id): c.client_id
            for c in settings.oauth_clients.values()
            if c.backchannel_logout_uri
        }
        for ep in settings.webhooks:
            if ep.id in bcl:
                raise ConfigError(
                    f"TOKEND_WEBHOOKS: endpoint id {ep.id!r} is the back-channel logout "
                    f"endpoint of client {bcl[ep.id]!r}: choose another id"
                )
        return settings


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def get(self, name: str, default: T, parse: Callable[[str], T]) -> T:
        raw = self.env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw.strip())
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"{name}: {exc}") from None


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"expected an integer, got {raw!r}") from None


def _positive(raw: str) -> int:
    value = _int(raw)
    if value <= 0:
        raise ValueError(f"must be a positive integer, got {raw!r}")
    return value


def _non_negative(raw: str) -> int:
    value = _int(raw)
    if value < 0:
        raise ValueError(f"must be zero or more, got {raw!r}")
    return value


def _positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"expected a number, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"must be positive, got {raw!r}")
    return value


def _registration(raw: str) -> bool:
    """TOKEND_REGISTRATION: open (anyone may register) or closed (only ``tokend users
    add`` creates users)."""
    if raw.lower() not in ("open", "closed"):
        raise ValueError(f"expected open or closed, got {raw!r}")
    return raw.lower() == "open"


def _port(raw: str) -> int:
    value = _int(raw)
    if not 0 <= value <= 65535:
        raise ValueError(f"must be a TCP port (0-65535), got {raw!r}")
    return value


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _networks(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Comma-separated CIDRs (a bare address is a /32 or /128); host bits must be zero."""
    networks = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError as exc:
            raise ValueError(f"expected CIDRs such as 10.0.0.0/8: {exc}") from None
    return tuple(networks)


def _nonempty(raw: str) -> str:
    return raw


def _prefix(raw: str) -> str:
    if any(c in raw for c in " {}*?[]\n"):
        raise ValueError(f"must not contain spaces, braces or glob characters, got {raw!r}")
    return raw


def _redis_target(env: Mapping[str, str]) -> RedisTarget:
    try:
        return RedisTarget.from_env(env)
    except ValueError as exc:
        text = str(exc)
        name = "TOKEND_REDIS_URL" if "URL" in text else "TOKEND_REDIS_MODE"
        raise ConfigError(text if text.startswith("TOKEND_") else f"{name}: {text}") from None


def _partitions(raw: str) -> int:
    value = _positive(raw)
    if value > MAX_PARTITIONS:
        raise ValueError(f"must be at most {MAX_PARTITIONS}, got {raw!r}")
    return value


def _database_url(raw: str) -> str:
    scheme = urlsplit(raw).scheme
    if scheme not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        raise ValueError(
            f"expected sqlite+aiosqlite:// or postgresql+asyncpg://, got scheme {scheme!r}"
        )
    return raw


def _http_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http(s) URL, got {raw!r}")
    return raw.rstrip("/")


def _alg(raw: str) -> str:
    if raw not in SIGNING_ALGS:
        raise ValueError(f"must be one of {', '.join(SIGNING_ALGS)}, got {raw!r}")
    return raw


def _argon2_memory(raw: str) -> int:
    value = _positive(raw)
    if value < 8:
        raise ValueError(f"must be at least 8 KiB, got {raw!r}")
    return value


def _kek(raw: str) -> str:
    from .crypto import decode_kek  # local: avoid a cycle at import time

    decode_kek(raw)
    return raw


def _json_object(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


def _oauth_clients(raw: str) -> dict[str, OAuthClient]:
    clients: dict[str, OAuthClient] = {}
    for client_id, spec in _json_object(raw).items():
        if not isinstance(spec, dict):
            raise ValueError(f"client {client_id!r}: expected an object")
        secret = spec.get("secret")
        if secret is not None and (not isinstance(secret, str) or not secret):
            raise ValueError(f"client {client_id!r}: secret must be a non-empty string")
        uri = spec.get("backchannel_logout_uri")
        if uri is not None:
            parts = urlsplit(uri) if isinstance(uri, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(
                    f"client {client_id!r}: backchannel_logout_uri must be an http(s) URL, "
                    f"got {str(uri)[:200]!r}"
                )
            if parts.fragment or "#" in uri:
                # Back-Channel Logout 1.0 section 2.2: no fragment component
                raise ValueError(
                    f"client {client_id!r}: backchannel_logout_uri must have no fragment, "
                    f"got {uri[:200]!r}"
                )
        clients[client_id] = OAuthClient(
            client_id=client_id,
            secret=secret,
            backchannel_logout_uri=uri,
            dpop_bound_access_tokens=dpop_settings.bound_access_tokens(client_id, spec),
        )
    return clients


_PROVIDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PROVIDER_KEYS = ("issuer", "client_id", "client_secret", "scopes")


def _oidc_providers(raw: str) -> dict[str, OIDCProvider]:
    providers: dict[str, OIDCProvider] = {}
    for name, spec in _json_object(raw).items():
        if not _PROVIDER_NAME.fullmatch(name):
            raise ValueError(
                f"provider name {name[:64]!r} must be 1 to 64 letters, digits, . _ or - "
                "(it is part of the callback URL)"
            )
        if not isinstance(spec, dict):
            raise ValueError(f"provider {name!r}: expected an object")
        unknown = sorted(k for k in spec if k not in _PROVIDER_KEYS)
        if unknown:
            raise ValueError(
                f"provider {name!r}: unknown key {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(_PROVIDER_KEYS)})"
            )
        missing = [k for k in _PROVIDER_KEYS[:3] if not spec.get(k)]
        if missing:
            raise ValueError(f"provider {name!r}: missing {', '.join(missing)}")
        bad = [k for k in _PROVIDER_KEYS if k in spec and not isinstance(spec[k], str)]
        if bad:
            raise ValueError(f"provider {name!r}: {', '.join(bad)} must be a string")
        try:
            issuer = _issuer_url(spec["issuer"])
        except ValueError as exc:
            raise ValueError(f"provider {name!r}: issuer {exc}") from None
        scopes = " ".join(str(spec.get("scopes") or "openid profile email").split())
        if "openid" not in scopes.split():
            raise ValueError(f"provider {name!r}: scopes must include openid, got {scopes!r}")
        providers[name] = OIDCProvider(
            name=name,
            issuer=issuer,
            client_id=spec["client_id"],
            client_secret=spec["client_secret"],
            scopes=scopes,
        )
    return providers


def _issuer_url(raw: str) -> str:
    # Kept exactly as given: the ID token's iss is compared with it character for
    # character, and some issuers end in "/" (OpenID Connect Core section 3.1.3.7).
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http(s) URL, got {raw!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"must have no query or fragment, got {raw!r}")
    return raw


def _url_list(raw: str) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in raw.split(",") if u.strip())
    for url in urls:
        _http_url(url)
    return urls
