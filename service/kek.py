"""Which key-encryption key this process uses: the setting, or a development file."""

from __future__ import annotations

import logging
import os

from .crypto import decode_kek, load_or_create_dev_kek
from .db import sqlite_path
from .errors import ConfigError
from .settings import Settings

log = logging.getLogger("tokend")


def resolve_kek(settings: Settings) -> bytes:
    """The key-encryption key: from the setting, or (SQLite only) a dev file beside the DB."""
    if settings.key_encryption_key:
        return decode_kek(settings.key_encryption_key)
    path = sqlite_path(settings.database_url)
    if not settings.is_sqlite:
        raise ConfigError(
            "TOKEND_KEY_ENCRYPTION_KEY: required with a non-SQLite database "
            "(generate one: tokend keys kek)"
        )
    if path is None:  # in-memory SQLite: the keys die with the process anyway
        return os.urandom(32)
    text, created = load_or_create_dev_kek(path.with_name(path.name + ".kek"))
    if created:
        log.warning(
            "TOKEND_KEY_ENCRYPTION_KEY not set: generated a development key in %s "
            "(set the variable in production)",
            path.with_name(path.name + ".kek"),
        )
    return decode_kek(text)
