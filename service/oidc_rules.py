"""The pure rules of social login: PKCE S256 challenges, allowed return_to URLs, query
building and the browser-binding hash (no I/O)."""

from __future__ import annotations

import base64
import hashlib
import re
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from .errors import SocialLoginFailed

MAX_RETURN_TO = 2048

# RFC 7636 section 4.2 (S256: base64url of a SHA-256, 43 characters) and section 4.1.
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")


def s256(verifier: str) -> str:
    """RFC 7636 S256: the code_challenge of a code_verifier."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def check_code_challenge(challenge: object, method: object) -> str:
    """A well-formed S256 code_challenge; 400 otherwise (``plain`` is refused)."""
    if method not in (None, "S256"):
        raise SocialLoginFailed("code_challenge_method must be S256")
    if not isinstance(challenge, str) or not _CHALLENGE.fullmatch(challenge):
        raise SocialLoginFailed(
            "a return_to needs a code_challenge: base64url(SHA-256(code_verifier)), "
            "43 characters (RFC 7636 S256)"
        )
    return challenge


def _port(scheme: str, port: int | None) -> int | None:
    return port or {"http": 80, "https": 443}.get(scheme)


def return_to_allowed(url: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``url`` starts with an allowed prefix, compared on parsed URLs.

    Scheme, host and port must be equal (so ``https://app.example.com.evil.com`` never
    matches ``https://app.example.com``) and the path must continue the prefix's path at
    a segment boundary; userinfo, backslashes and dot segments are refused outright.
    """
    if len(url) > MAX_RETURN_TO or any(c in url for c in "\\\r\n\t ") or not url.isprintable():
        return False
    try:
        got = urlsplit(url)
        got_port = _port(got.scheme, got.port)
    except ValueError:
        return False
    if got.username is not None or got.password is not None or not got.hostname:
        return False
    if any(seg in (".", "..") for seg in unquote(got.path).split("/")):
        return False
    for prefix in prefixes:
        want = urlsplit(prefix)
        if (got.scheme.lower(), got.hostname, got_port) != (
            want.scheme.lower(),
            want.hostname,
            _port(want.scheme, want.port),
        ):
            continue
        base = want.path or "/"
        path = got.path or "/"
        if base.endswith("/") and path.startswith(base):
            return True
        if path == base or path.startswith(base + "/"):
            return True
    return False


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to its query (its fragment kept)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query = [(k, v) for k, v in query if k not in params] + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def binding_hash(browser: str) -> str:
    """What is stored for the browser-binding cookie: its hash, never the value."""
    return hashlib.sha256(browser.encode()).hexdigest()
