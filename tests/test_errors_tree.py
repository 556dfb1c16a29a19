"""The exception tree drawn in service/errors.py is the real one, and every error maps to
an HTTP status and OAuth code in the HTTP layer's one table."""

from __future__ import annotations

import re

import pytest

from service import errors
from service.errors import TokendError
from service.http.errors import ERRORS, code_of, entry_of, oauth_code, status_of

_LINE = re.compile(r"^(?P<indent>(?:│   |    )*)(?:├── |└── )(?P<name>\w+)")


def _drawn_tree() -> set[tuple[str, str]]:
    """(parent, child) pairs of the drawing in the module docstring."""
    doc = errors.__doc__ or ""
    lines = [line[4:] for line in doc.splitlines() if line.startswith("    ")]
    assert lines and lines[0].split()[0] == "TokendError", "the tree starts at TokendError"
    stack = ["TokendError"]
    pairs: set[tuple[str, str]] = set()
    for line in lines[1:]:
        match = _LINE.match(line)
        assert match, f"not a tree line: {line!r}"
        depth = len(match["indent"]) // 4 + 1
        assert depth <= len(stack), f"skips a level: {line!r}"
        del stack[depth:]
        pairs.add((stack[-1], match["name"]))
        stack.append(match["name"])
    return pairs


def _subclasses(cls: type[TokendError]) -> list[type[TokendError]]:
    found: list[type[TokendError]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found


def _real_tree() -> set[tuple[str, str]]:
    return {
        (sub.__bases__[0].__name__, sub.__name__)
        for sub in _subclasses(TokendError)
        if sub.__module__ == errors.__name__
    }


def test_the_docstring_draws_the_class_hierarchy() -> None:
    assert _drawn_tree() == _real_tree()


def test_every_error_class_is_single_rooted_and_in_the_module() -> None:
    for sub in _subclasses(TokendError):
        assert sub.__module__ == errors.__name__, f"{sub!r} belongs in service.errors"
        assert len(sub.__bases__) == 1, f"{sub!r}: one base, so the tree is a tree"


def test_the_drawing_check_catches_drift() -> None:
    pairs = _drawn_tree()
    assert ("BadRequest", "ValidationFailed") in pairs
    assert ("TokendError", "ValidationFailed") not in pairs


@pytest.mark.parametrize("cls", [TokendError, *_subclasses(TokendError)], ids=lambda c: c.__name__)
def test_every_error_maps_to_a_status_and_code(cls: type[TokendError]) -> None:
    owner, status, code = entry_of(cls)
    assert 400 <= status <= 599
    assert status_of(cls) == status and code_of(cls) == code
    assert isinstance(code, str)
    if cls is not TokendError:
        # a class of the tree resolves to an entry below the root's catch-all 500
        assert owner is not TokendError, f"{cls.__name__} has no entry in ERRORS"


def test_the_table_names_only_tree_classes_and_the_domain_carries_no_status() -> None:
    assert set(ERRORS) <= {TokendError, *_subclasses(TokendError)}
    for cls in [TokendError, *_subclasses(TokendError)]:
        assert "status" not in vars(cls) and "code" not in vars(cls), cls


def test_the_mro_walk_takes_the_nearest_entry() -> None:
    assert (status_of(errors.TokenExpired), code_of(errors.TokenExpired)) == (401, "invalid_token")
    assert status_of(errors.ProviderUnavailable) == 502
    assert code_of(errors.ProviderUnavailable) == "temporarily_unavailable"
    assert code_of(errors.SocialLoginDenied) == "access_denied"
    assert status_of(errors.ValidationFailed) == 400


def test_a_relayed_provider_refusal_answers_with_the_providers_code() -> None:
    refused = errors.SocialLoginRefused("the provider refused the login", "login_required")
    assert oauth_code(refused) == "login_required"
    assert oauth_code(errors.SocialLoginDenied()) == "access_denied"
    assert status_of(type(refused)) == 400
