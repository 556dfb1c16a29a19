"""Settings: DESIGN.md's defaults, one clear ConfigError per bad value, a frozen object."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from service import events
from service.crypto import generate_kek
from service.errors import ConfigError
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TOKEND = Path(sys.executable).with_name("tokend")


def test_defaults_match_the_design_table() -> None:
    s = Settings.from_env({})
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.redis_prefix == "tokend"
    assert s.database_url == "sqlite+aiosqlite:///./tokend.db"
    assert s.issuer == "http://127.0.0.1:8080"
    assert s.audience == "tokend"
    assert s.access_ttl == 900
    assert s.refresh_idle_ttl == 1_209_600
    assert s.refresh_absolute_ttl == 7_776_000
    assert s.refresh_reuse_grace == 10
    assert s.signing_alg == "EdDSA"
    assert s.login_failures_per_user == 10
    assert s.login_failures_per_ip == 100
    assert s.login_failure_window == 900
    assert s.key_encryption_key is None  # dev: a generated file beside the SQLite database
    assert dict(s.oauth_clients) == {}
    assert dict(s.oidc_providers) == {}
    assert s.oidc_return_to == ()
    # The OWASP argon2id parameters FIELD-NOTES.md suggests, as settings.
    assert (s.argon2_time_cost, s.argon2_memory_kib, s.argon2_parallelism) == (2, 19_456, 1)


def test_empty_values_mean_the_default() -> None:
    assert Settings.from_env({"TOKEND_PORT": "", "TOKEND_ACCESS_TTL": "  "}) == Settings.from_env(
        {}
    )


def test_values_are_read() -> None:
    kek = generate_kek()
    s = Settings.from_env(
        {
            "TOKEND_HOST": "0.0.0.0",
            "TOKEND_PORT": "9000",
            "TOKEND_REDIS_URL": "redis://redis:6379/2",
            "TOKEND_REDIS_PREFIX": "tk",
            "TOKEND_DATABASE_URL": "postgresql+asyncpg://u@db/tokend",
            "TOKEND_ISSUER": "https://auth.example.com/",
            "TOKEND_AUDIENCE": "api",
            "TOKEND_ACCESS_TTL": "3600",
            "TOKEND_REFRESH_IDLE_TTL": "86400",
            "TOKEND_REFRESH_ABSOLUTE_TTL": "31536000",
            "TOKEND_REFRESH_REUSE_GRACE": "0",
            "TOKEND_SIGNING_ALG": "ES256",
            "TOKEND_LOGIN_FAILURES_PER_USER": "3",
            "TOKEND_LOGIN_FAILURES_PER_IP": "7",
            "TOKEND_LOGIN_FAILURE_WINDOW": "60",
            "TOKEND_KEY_ENCRYPTION_KEY": kek,
            "TOKEND_OAUTH_CLIENTS": '{"web": {}, "backend": {"secret": "s3cret"}}',
            "TOKEND_OIDC_PROVIDERS": (
                '{"google": {"issuer": "https://accounts.google.com",'
                ' "client_id": "id", "client_secret": "sec"}}'
            ),
            "TOKEND_OIDC_RETURN_TO": "https://app.example.com/, http://localhost:3000/",
        }
    )
    assert (s.host, s.port, s.redis_prefix, s.audience) == ("0.0.0.0", 9000, "tk", "api")
    assert s.issuer == "https://auth.example.com"  # trailing slash dropped
    assert (s.access_ttl, s.refresh_idle_ttl, s.refresh_absolute_ttl) == (3600, 86400, 31536000)
    assert s.refresh_reuse_grace == 0
    assert s.signing_alg == "ES256"
    assert (s.login_failures_per_user, s.login_failures_per_ip, s.login_failure_window) == (
        3,
        7,
        60,
    )
    assert s.key_encryption_key == kek
    assert not s.oauth_clients["web"].confidential
    assert s.oauth_clients["backend"].confidential
    assert s.oauth_clients["backend"].secret == "s3cret"
    assert s.oidc_providers["google"].scopes == "openid profile email"
    assert s.oidc_return_to == ("https://app.example.com/", "http://localhost:3000/")
    assert not s.is_sqlite


BAD_VALUES = [
    ("TOKEND_PORT", "abc"),
    ("TOKEND_PORT", "70000"),
    ("TOKEND_ACCESS_TTL", "0"),
    ("TOKEND_ACCESS_TTL", "-5"),
    ("TOKEND_ACCESS_TTL", "1.5"),
    ("TOKEND_SIGNING_ALG", "HS256"),
    ("TOKEND_SIGNING_ALG", "none"),
    ("TOKEND_OAUTH_CLIENTS", "{not json"),
    ("TOKEND_OAUTH_CLIENTS", "[]"),
    ("TOKEND_OAUTH_CLIENTS", '{"c": {"secret": ""}}'),
    ("TOKEND_OIDC_PROVIDERS", '{"g": {"issuer": "https://x"}}'),
    ("TOKEND_DATABASE_URL", "mysql://user@host/db"),
    ("TOKEND_KEY_ENCRYPTION_KEY", "c2hvcnQ"),
    ("TOKEND_KEY_ENCRYPTION_KEY", "!!! not base64 !!!"),
    ("TOKEND_REDIS_URL", "http://x"),
    ("TOKEND_ISSUER", "not a url"),
    ("TOKEND_LOGIN_FAILURES_PER_USER", "0"),
    ("TOKEND_REDIS_PREFIX", "a b"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    message = str(info.value)
    assert message.startswith(f"{name}: "), message
    assert "\n" not in message


def test_idle_longer_than_absolute_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"TOKEND_REFRESH_IDLE_TTL": "200", "TOKEND_REFRESH_ABSOLUTE_TTL": "100"})
    assert str(info.value).startswith("TOKEND_REFRESH_IDLE_TTL: ")


def test_grace_must_be_below_idle() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"TOKEND_REFRESH_REUSE_GRACE": "60", "TOKEND_REFRESH_IDLE_TTL": "60"})
    assert str(info.value).startswith("TOKEND_REFRESH_REUSE_GRACE: ")


def test_settings_are_frozen() -> None:
    s = Settings.from_env({"TOKEND_OAUTH_CLIENTS": '{"web": {}}'})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.oauth_clients["web"].secret = "x"  # type: ignore[misc]
    # Nor through its mappings.
    with pytest.raises(TypeError):
        s.oauth_clients["evil"] = s.oauth_clients["web"]  # type: ignore[index]
    with pytest.raises(TypeError):
        s.oidc_providers["evil"] = None  # type: ignore[index]
    assert isinstance(s.oidc_return_to, tuple)


def test_only_the_given_mapping_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKEND_PORT", "abc")
    assert Settings.from_env({}).port == 8080


def test_bad_setting_stops_the_cli_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")}
    env["TOKEND_PORT"] = "abc"
    proc = subprocess.run(
        [str(TOKEND), "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "TOKEND_PORT" in lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "tokend.db").exists()  # stopped before touching anything


def test_hash_workers_leave_a_core_to_the_event_loop() -> None:
    import os

    assert Settings.from_env({}).hash_workers == max(1, (os.cpu_count() or 2) - 1)
    assert Settings.from_env({"TOKEND_HASH_WORKERS": "3"}).hash_workers == 3
    with pytest.raises(ConfigError, match=r"^TOKEND_HASH_WORKERS: "):
        Settings.from_env({"TOKEND_HASH_WORKERS": "0"})


WEBHOOK_SECRET = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


def test_webhooks_are_read_with_their_defaults() -> None:
    s = Settings.from_env({})
    assert s.webhooks == ()
    assert (s.webhook_max_attempts, s.webhook_retention, s.webhook_timeout) == (8, 604_800, 5.0)
    assert s.stream_retention == s.access_ttl + s.leeway + 300  # no webhooks: unchanged
    s = Settings.from_env(
        {
            "TOKEND_WEBHOOKS": (
                f'[{{"url": "https://a.example/hook/", "secret": "{WEBHOOK_SECRET}"}},'
                f' {{"id": "audit", "url": "http://b.example/h", "secret": "{WEBHOOK_SECRET}",'
                ' "events": ["user.revoked"]}]'
            ),
            "TOKEND_WEBHOOK_MAX_ATTEMPTS": "3",
            "TOKEND_WEBHOOK_RETENTION": "3600",
            "TOKEND_WEBHOOK_TIMEOUT": "2.5",
        }
    )
    first, audit = s.webhooks
    assert first.url == "https://a.example/hook/"  # kept exactly
    assert re.fullmatch(r"[0-9a-f]{12}", first.id)  # derived from the URL, stably
    assert first.id == Settings.from_env({"TOKEND_WEBHOOKS": s_webhooks_one()}).webhooks[0].id
    assert first.secret == b"0123456789abcdef0123456789abcdef"
    assert first.events == frozenset(events.EVENTS) - {"key.rotated"}
    assert (audit.id, audit.events) == ("audit", frozenset({"user.revoked"}))
    assert (s.webhook_max_attempts, s.webhook_retention, s.webhook_timeout) == (3, 3600, 2.5)
    assert s.stream_retention == max(s.access_ttl + s.leeway + 300, 3600)
    assert "0123456789abcdef" not in repr(s)  # the secret stays out of logs


def s_webhooks_one() -> str:
    return f'[{{"url": "https://a.example/hook/", "secret": "{WEBHOOK_SECRET}"}}]'


def test_webhook_retention_raises_the_streams_retention() -> None:
    import redis.asyncio as aioredis

    from service.fence import RedisFence
    from service.sessions import SessionStore

    s = Settings.from_env({"TOKEND_WEBHOOKS": s_webhooks_one()})
    assert s.stream_retention == 604_800
    client = aioredis.Redis()  # not connected: the stores only register their scripts
    store = SessionStore.from_settings(client, s)
    fence = RedisFence.from_settings(client, s, None, lambda: 0.0)
    assert store.retention == fence.retention == 604_800  # the scripts' ARGV[3]
    plain = SessionStore.from_settings(client, Settings.from_env({}))
    assert plain.retention == 900 + 30 + 300


BAD_WEBHOOKS = [
    "{not json",
    '{"url": "http://x"}',
    "[1]",
    '[{"secret": "whsec_MDEyMzQ1Njc4OWFiY2RlZg=="}]',
    '[{"url": "ftp://x/h", "secret": "whsec_MDEyMzQ1Njc4OWFiY2RlZg=="}]',
    '[{"url": "http://x/h", "secret": "plain"}]',
    '[{"url": "http://x/h", "secret": "whsec_!!!"}]',
    '[{"url": "http://x/h", "secret": "whsec_c2hvcnQ="}]',
    '[{"url": "http://x/h", "secret": "whsec_MDEyMzQ1Njc4OWFiY2RlZg==", "events": []}]',
    '[{"url": "http://x/h", "secret": "whsec_MDEyMzQ1Njc4OWFiY2RlZg==", "events": ["nope"]}]',
    '[{"url": "http://x/h", "secret": "whsec_MDEyMzQ1Njc4OWFiY2RlZg==", "id": "a b"}]',
    '[{"url": "http://x/h", "secret": "whsec_MDEyMzQ1Njc4OWFiY2RlZg==", "extra": 1}]',
    '[{"url": "http://x/h", "secret": "whsec_MDEyMzQ1Njc4OWFiY2RlZg=="},'
    ' {"url": "http://x/h", "secret": "whsec_MDEyMzQ1Njc4OWFiY2RlZg=="}]',
]


@pytest.mark.parametrize("value", BAD_WEBHOOKS)
def test_a_bad_webhooks_entry_names_the_variable_in_one_line(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"TOKEND_WEBHOOKS": value})
    message = str(info.value)
    assert message.startswith("TOKEND_WEBHOOKS: "), message
    assert "\n" not in message
    assert "MDEyMzQ1" not in message  # never echoes a secret


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TOKEND_WEBHOOK_MAX_ATTEMPTS", "0"),
        ("TOKEND_WEBHOOK_RETENTION", "-1"),
        ("TOKEND_WEBHOOK_TIMEOUT", "0"),
        ("TOKEND_WEBHOOK_BACKOFF", "x"),
    ],
)
def test_bad_webhook_numbers_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{name}: "):
        Settings.from_env({name: value})


def test_backchannel_logout_uris_are_read_with_their_default() -> None:
    s = Settings.from_env(
        {
            "TOKEND_OAUTH_CLIENTS": '{"rp": {"backchannel_logout_uri": "https://rp.example/bcl?x=1"},'
            ' "web": {}}'
        }
    )
    rp, web = s.oauth_clients["rp"], s.oauth_clients["web"]
    assert rp.backchannel_logout_uri == "https://rp.example/bcl?x=1"
    assert web.backchannel_logout_uri is None
    # back-channel delivery keeps the streams as long as webhooks do
    assert s.stream_retention == s.webhook_retention
    assert Settings.from_env({}).stream_retention < s.webhook_retention


@pytest.mark.parametrize(
    "spec",
    [
        '{"rp": {"backchannel_logout_uri": "ftp://rp.example/b"}}',
        '{"rp": {"backchannel_logout_uri": "/relative"}}',
        '{"rp": {"backchannel_logout_uri": "https://rp.example/b#f"}}',
        '{"rp": {"backchannel_logout_uri": ["https://rp.example/b"]}}',
    ],
)
def test_a_bad_backchannel_logout_setting_names_the_client_in_one_line(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"TOKEND_OAUTH_CLIENTS": spec})
    message = str(info.value)
    assert message.startswith("TOKEND_OAUTH_CLIENTS: client 'rp': backchannel_logout_"), message
    assert "\n" not in message


def test_the_dpop_settings_are_read_with_their_defaults() -> None:
    default = Settings.from_env({"TOKEND_OAUTH_CLIENTS": '{"web": {}}'})
    assert default.dpop == "optional" and default.dpop_nonce is False
    assert default.oauth_clients["web"].dpop_bound_access_tokens is False
    s = Settings.from_env(
        {
            "TOKEND_DPOP": "Required",
            "TOKEND_DPOP_NONCE": "true",
            "TOKEND_OAUTH_CLIENTS": '{"cli": {"dpop_bound_access_tokens": true}}',
        }
    )
    assert s.dpop == "required" and s.dpop_nonce is True
    assert s.oauth_clients["cli"].dpop_bound_access_tokens is True
    assert Settings.from_env({"TOKEND_DPOP": "off"}).dpop == "off"


@pytest.mark.parametrize(
    ("env", "start"),
    [
        ({"TOKEND_DPOP": "sometimes"}, "TOKEND_DPOP: expected one of off, optional, required"),
        ({"TOKEND_DPOP_NONCE": "maybe"}, "TOKEND_DPOP_NONCE: expected true or false"),
        (
            {"TOKEND_OAUTH_CLIENTS": '{"cli": {"dpop_bound_access_tokens": "yes"}}'},
            "TOKEND_OAUTH_CLIENTS: client 'cli': dpop_bound_access_tokens must be true or false",
        ),
    ],
)
def test_a_bad_dpop_setting_is_one_line(env: dict[str, str], start: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert str(info.value).startswith(start), str(info.value)
    assert "\n" not in str(info.value)


def test_a_webhook_may_not_take_a_backchannel_endpoint_id() -> None:
    secret = "whsec_MDEyMzQ1Njc4OWFiY2RlZg=="
    hook = f'[{{"id": "bcl-rp", "url": "https://h.example/", "secret": "{secret}"}}]'
    with pytest.raises(ConfigError, match=r"^TOKEND_WEBHOOKS: endpoint id 'bcl-rp'"):
        Settings.from_env(
            {
                "TOKEND_OAUTH_CLIENTS": '{"rp": {"backchannel_logout_uri": "https://rp.example/"}}',
                "TOKEND_WEBHOOKS": hook,
            }
        )
