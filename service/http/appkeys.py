"""Typed application keys: everything shared lives under one of these."""

from __future__ import annotations

from aiohttp import web
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from ..auth import Authenticator
from ..clock import Clock
from ..dpop import DPoPServer
from ..fence import RedisFence
from ..keys import KeyRing, SqlKeyStore
from ..metrics import Metrics
from ..oidc_flow import SocialLogin
from ..settings import Settings

SETTINGS = web.AppKey("settings", Settings)
CLOCK = web.AppKey("clock", Clock)
ENGINE = web.AppKey("engine", AsyncEngine)
REDIS = web.AppKey("redis", Redis)
KEYRING = web.AppKey("keyring", KeyRing)
KEYSTORE = web.AppKey("keystore", SqlKeyStore)
AUTH = web.AppKey("auth", Authenticator)
METRICS = web.AppKey("metrics", Metrics)
OIDC = web.AppKey("oidc", SocialLogin)
FENCE = web.AppKey("fence", RedisFence)
DPOP = web.AppKey("dpop", DPoPServer)
