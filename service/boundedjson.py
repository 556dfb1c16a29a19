"""JSON from untrusted input, parsed with bounds on nesting and number length.

Python's ``json.loads`` raises ``ValueError`` (not ``JSONDecodeError``) for an integer
over 4,300 digits and ``RecursionError`` for deep nesting (about 1.5 KB of ``[``), and
turns ``1e999`` into infinity and ``NaN`` into a float no JSON carries. ``loads`` checks
the nesting depth before parsing (one linear scan, and only when the text holds more
brackets than the bound) and refuses every one of these with ``JSONError``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 32
MAX_NUMBER_CHARS = 64

# A string (escapes included; an unterminated one runs to the end, so every '"' starts a
# match and the scan stays linear), or one bracket.
_TOKENS = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)|[\[\]{}]', re.DOTALL)


class JSONError(ValueError):
    """The text is not JSON within the bounds; the message names the bound it broke
    (empty when the text is simply not JSON)."""


def depth_exceeds(text: str, max_depth: int) -> bool:
    """Whether arrays and objects in ``text`` nest deeper than ``max_depth``."""
    if text.count("[") + text.count("{") <= max_depth:
        return False
    level = 0
    for match in _TOKENS.finditer(text):
        char = match.group()
        if char in "[{":
            level += 1
            if level > max_depth:
                return True
        elif char in "]}":
            level -= 1
    return False


def loads(text: str, *, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of ``text``; JSONError when malformed or beyond the bounds."""
    if depth_exceeds(text, max_depth):
        raise JSONError(f"nested deeper than {max_depth} levels")
    try:
        return json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except JSONError:
        raise
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        raise JSONError() from None


def _int(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_NUMBER_CHARS:
        raise JSONError(f"a number longer than {MAX_NUMBER_CHARS} digits")
    return int(literal)


def _float(literal: str) -> float:
    if len(literal) > MAX_NUMBER_CHARS + 8:
        raise JSONError(f"a number longer than {MAX_NUMBER_CHARS} digits")
    value = float(literal)
    if not math.isfinite(value):
        raise JSONError("a number out of range")
    return value


def _constant(name: str) -> Any:
    raise JSONError(f"{name} is not JSON")
