"""The pages tokend serves (/login, /account): templates, strings and the language.

Templates are ``string.Template`` files beside this module; every value put into one is
HTML-escaped unless it is ``Markup`` (a fragment this package built from escaped parts).
The strings are one JSON file per language with the same keys (strings_en.json,
strings_ko.json); ``negotiate`` picks the language from ``?lang=`` or Accept-Language.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from string import Template

LANGUAGES = ("en", "ko")
DEFAULT_LANGUAGE = "en"


class Markup(str):
    """Text that is already HTML (built here from escaped parts): put in as it is."""


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


@cache
def strings(lang: str) -> Mapping[str, str]:
    """Every string of the pages in ``lang`` (one of LANGUAGES)."""
    if lang not in LANGUAGES:
        raise KeyError(lang)
    loaded: dict[str, str] = json.loads(_read(f"strings_{lang}.json"))
    return loaded


@cache
def _template(name: str) -> Template:
    return Template(_read(name))


def render(name: str, values: Mapping[str, str]) -> Markup:
    """The template ``name`` filled with ``values``, each escaped unless it is Markup."""
    escaped = {
        key: value if isinstance(value, Markup) else html.escape(value, quote=True)
        for key, value in values.items()
    }
    return Markup(_template(name).substitute(escaped))


def json_for_script(value: object) -> Markup:
    """JSON for a ``<script type="application/json">`` block: no ``<``, ``>`` or ``&``
    in it, so no ``</script>`` or comment can end the block early."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _ranges(header: str) -> list[tuple[float, int, str]]:
    """Accept-Language ranges (RFC 9110 section 12.5.4) as (q, -position, primary tag)."""
    found = []
    for position, item in enumerate(header.split(",")[:32]):
        tag, _, params = item.strip().partition(";")
        tag = tag.strip().lower()
        if not tag:
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:
                    q = 0.0
        found.append((q, -position, tag.split("-", 1)[0]))
    return found


def negotiate(accept_language: str | None, override: str | None = None) -> str:
    """The page language: ``override`` when it names one, else the preferred supported
    language of Accept-Language (q-values honoured, q=0 never; ``*`` adds nothing, as
    English is the default anyway), else English."""
    if override is not None and override in LANGUAGES:
        return override
    best: tuple[float, int] | None = None
    choice = DEFAULT_LANGUAGE
    for q, order, primary in _ranges(accept_language or ""):
        if q > 0 and primary in LANGUAGES and (best is None or (q, order) > best):
            best, choice = (q, order), primary
    return choice
