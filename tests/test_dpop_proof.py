"""tokend_client.dpop: DPoP proofs (RFC 9449), thumbprints (RFC 7638), the replay cache, keys.

No Redis, no server: the module alone. Each refusal asserts its own description, so a test
fails when its check is taken out even where a later check would refuse the proof too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tokend_client.dpop import (
    ALGORITHMS,
    MAX_PROOF_SIZE,
    PROOF_TYP,
    DPoPError,
    DPoPKey,
    MemoryReplayCache,
    Proof,
    access_token_hash,
    normalize_htu,
    thumbprint,
    verify_proof,
)

NOW = 1_800_000_000.0
URL = "https://tokend.example/oauth/token"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value).encode())


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"jti": "j-1", "htm": "POST", "htu": URL, "iat": int(NOW)}
    for name, value in overrides.items():
        if value is None:
            base.pop(name, None)
        else:
            base[name] = value
    return base


def sign(
    key: Any,
    alg: str,
    payload: dict[str, Any],
    *,
    jwk: dict[str, Any] | None = None,
    typ: str | None = PROOF_TYP,
    extra: dict[str, Any] | None = None,
) -> str:
    """A proof made by hand: any header, any claims, signed by ``key``."""
    headers: dict[str, Any] = {"typ": typ, "jwk": jwk if jwk is not None else public_jwk(key)}
    headers.update(extra or {})
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def forge(key: Any, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """A proof with any header at all (PyJWT's encode validates some members)."""
    signing_input = f"{b64json(header)}.{b64json(payload)}".encode()
    algorithm = jwt.algorithms.get_default_algorithms()[header["alg"]]
    return f"{signing_input.decode()}.{b64(algorithm.sign(signing_input, key))}"


def public_jwk(key: Any) -> dict[str, Any]:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return DPoPKey(key).public_jwk
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
        return DPoPKey(key).public_jwk
    if isinstance(key, rsa.RSAPrivateKey):
        return dict(json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())))
    return dict(json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key())))


def check(proof: str, **kwargs: Any) -> Proof:
    arguments: dict[str, Any] = {"method": "POST", "url": URL, "now": NOW}
    arguments.update(kwargs)
    return verify_proof(proof, **arguments)


def refused(proof: str, match: str, code: str = "invalid_dpop_proof", **kwargs: Any) -> None:
    with pytest.raises(DPoPError, match=match) as info:
        check(proof, **kwargs)
    assert info.value.code == code
    assert str(info.value) == info.value.description


@pytest.fixture(scope="module")
def es_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# -- thumbprints and hashes: the RFCs' own examples ---------------------------------------

RFC7638_RSA = {
    "kty": "RSA",
    "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc"
        "_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR"
        "0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTW"
        "hAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    ),
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
# RFC 9449 section 4.1: the public key of the example proof (its section 6.1 gives the jkt)
RFC9449_EC = {
    "kty": "EC",
    "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
    "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA",
    "crv": "P-256",
}


def test_rfc7638_example_thumbprint() -> None:
    # alg and kid are not required members: the RFC's example includes them, and they
    # do not change the thumbprint
    assert thumbprint(RFC7638_RSA) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_rfc9449_example_jkt() -> None:
    assert thumbprint(RFC9449_EC) == "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
    assert thumbprint({**RFC9449_EC, "kid": "k1", "use": "sig"}) == thumbprint(RFC9449_EC)


def test_rfc9449_example_ath() -> None:
    # section 7.1's access token and the ath of its proof
    token = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
    assert access_token_hash(token) == "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"


def test_okp_thumbprint_hashes_crv_kty_x_only() -> None:
    x = b64(b"\x01" * 32)
    canonical = f'{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}'
    expected = b64(hashlib.sha256(canonical.encode()).digest())
    assert thumbprint({"kty": "OKP", "crv": "Ed25519", "x": x, "d": "ignored"}) == expected


@pytest.mark.parametrize(
    "jwk", [{"kty": "oct", "k": "AAAA"}, {"kty": "EC", "crv": "P-256", "x": "a"}, {}, {"kty": 1}]
)
def test_thumbprint_of_an_unusable_jwk_is_refused(jwk: dict[str, Any]) -> None:
    with pytest.raises(DPoPError):
        thumbprint(jwk)


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_round_trip_of_a_generated_key(alg: str) -> None:
    key = DPoPKey.generate(alg)
    proof = key.proof("POST", URL + "?q=1#frag", access_token="at", nonce="n-1", now=NOW + 0.7)
    header = jwt.get_unverified_header(proof)
    assert header == {"typ": "dpop+jwt", "alg": alg, "jwk": key.public_jwk}
    body = jwt.decode(proof, options={"verify_signature": False})
    assert set(body) == {"jti", "htm", "htu", "iat", "ath", "nonce"}
    assert body["htu"] == URL and body["iat"] == int(NOW) and isinstance(body["iat"], int)
    assert len(base64.urlsafe_b64decode(body["jti"] + "==")) == 16  # 128 random bits
    result = check(proof, access_token="at", nonce=lambda n: n == "n-1")
    assert result == Proof(
        jkt=key.jkt,
        jti=body["jti"],
        iat=int(NOW),
        htm="POST",
        htu=URL,
        nonce="n-1",
        jwk=key.public_jwk,
    )
    assert result.jkt == thumbprint(header["jwk"])
    assert key.proof("GET", URL) != key.proof("GET", URL)  # a fresh jti each time


@pytest.mark.parametrize("alg", ["RS256", "PS256"])
def test_round_trip_of_an_rsa_key(alg: str, rsa_key: rsa.RSAPrivateKey) -> None:
    key = DPoPKey(rsa_key, alg)
    assert set(key.public_jwk) == {"kty", "n", "e"}
    result = check(key.proof("POST", URL, now=NOW))
    assert result.jkt == key.jkt == thumbprint(public_jwk(rsa_key))
    # and a proof made by PyJWT's own JWK export
    assert check(sign(rsa_key, alg, claims())).jkt == key.jkt


def test_public_jwk_holds_public_members_only() -> None:
    es = DPoPKey.generate("ES256")
    ed = DPoPKey.generate("EdDSA")
    assert set(es.public_jwk) == {"kty", "crv", "x", "y"} and es.public_jwk["crv"] == "P-256"
    assert set(ed.public_jwk) == {"kty", "crv", "x"} and ed.public_jwk["crv"] == "Ed25519"


def test_generate_refuses_other_algorithms() -> None:
    for alg in ("RS256", "HS256", "none", "ES384"):
        with pytest.raises(ValueError):
            DPoPKey.generate(alg)


# -- each refusal ----------------------------------------------------------------------------


def test_typ_missing_or_wrong(es_key: Any) -> None:
    refused(sign(es_key, "ES256", claims(), typ=None), "typ")
    refused(sign(es_key, "ES256", claims(), typ="JWT"), "typ")
    refused(sign(es_key, "ES256", claims(), typ="DPoP+JWT"), "typ")


def test_alg_none(es_key: Any) -> None:
    header = {"typ": PROOF_TYP, "alg": "none", "jwk": public_jwk(es_key)}
    refused(f"{b64json(header)}.{b64json(claims())}.", "single compact JWS")
    refused(f"{b64json(header)}.{b64json(claims())}.AAAA", "alg 'none'")


def test_hs256_signed_with_the_jwk_bytes(es_key: Any) -> None:
    jwk = public_jwk(es_key)
    header = {"typ": PROOF_TYP, "alg": "HS256", "jwk": jwk}
    signing_input = f"{b64json(header)}.{b64json(claims())}"
    mac = hmac.new(json.dumps(jwk).encode(), signing_input.encode(), "sha256").digest()
    proof = f"{signing_input}.{b64(mac)}"
    refused(proof, "alg 'HS256'")
    # not even when a careless caller lists it
    refused(proof, "alg 'HS256'", algorithms=("ES256", "HS256"))


def test_alg_outside_the_callers_list(es_key: Any) -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    refused(sign(ed, "EdDSA", claims()), "alg 'EdDSA'", algorithms=("ES256",))
    assert check(sign(es_key, "ES256", claims()), algorithms=("ES256",)).jti == "j-1"


def test_private_member_in_the_jwk(es_key: Any) -> None:
    private = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(es_key))
    assert "d" in private
    refused(sign(es_key, "ES256", claims(), jwk=private), r"private key members \(d\)")
    for member in ("p", "q", "dp", "dq", "qi", "oth", "k"):
        jwk = {**public_jwk(es_key), member: "AQAB"}
        refused(sign(es_key, "ES256", claims(), jwk=jwk), f"private key members \\({member}\\)")


def test_oct_key(es_key: Any) -> None:
    refused(sign(es_key, "ES256", claims(), jwk={"kty": "oct", "k": b64(b"s" * 32)}), "oct")
    refused(sign(es_key, "ES256", claims(), jwk={"kty": "oct"}), "oct")


def test_key_type_not_matching_alg(es_key: Any, rsa_key: Any) -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    # an Ed25519 jwk under ES256, an EC key under EdDSA, an RSA jwk under ES256
    refused(sign(es_key, "ES256", claims(), jwk=public_jwk(ed)), "not a key for ES256")
    refused(sign(ed, "EdDSA", claims(), jwk=public_jwk(es_key)), "not a key for EdDSA")
    refused(sign(es_key, "ES256", claims(), jwk=public_jwk(rsa_key)), "not a key for ES256")
    p384 = ec.generate_private_key(ec.SECP384R1())
    refused(sign(es_key, "ES256", claims(), jwk=public_jwk(p384)), r"EC P-384\) is not a key")
    ed448 = {"kty": "OKP", "crv": "Ed448", "x": b64(b"\x00" * 57)}
    refused(sign(ed, "EdDSA", claims(), jwk=ed448), "not a key for EdDSA")


def test_rsa_key_under_2048_bits() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns about the short key when signing
        proof = sign(small, "RS256", claims())
    refused(proof, "1024 bits, under 2048")


def test_rsa_key_with_a_huge_public_exponent(rsa_key: rsa.RSAPrivateKey) -> None:
    # each check with such an e costs what a private-key operation does: refused unchecked
    n = rsa_key.public_key().public_numbers().n
    jwk = {
        "kty": "RSA",
        "n": b64(n.to_bytes(256, "big")),
        "e": b64(((n >> 1) | 1).to_bytes(256, "big")),
    }
    refused(sign(rsa_key, "RS256", claims(), jwk=jwk), "public exponent is larger")
    e33 = (1 << 32) + 1
    jwk["e"] = b64(e33.to_bytes(5, "big"))  # 33 bits: still taken (its signature fails)
    refused(sign(rsa_key, "RS256", claims(), jwk=jwk), "signature does not verify")


def test_signature_by_another_key_than_the_jwk(es_key: Any) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    refused(sign(other, "ES256", claims(), jwk=public_jwk(es_key)), "signature does not verify")
    good = sign(es_key, "ES256", claims())
    head, body, signature = good.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    refused(f"{head}.{body}.{flipped}", "signature does not verify")
    # the claims changed after signing
    refused(
        f"{head}.{b64json(claims(htm='GET'))}.{signature}",
        "signature does not verify",
        method="GET",
    )


def test_wrong_htm(es_key: Any) -> None:
    refused(sign(es_key, "ES256", claims(htm="GET")), "htm 'GET'")
    refused(sign(es_key, "ES256", claims(htm="post")), "htm 'post'")  # case-sensitive
    refused(sign(es_key, "ES256", claims(htm=None)), "htm 'None'")


def test_wrong_htu(es_key: Any) -> None:
    refused(sign(es_key, "ES256", claims(htu="https://tokend.example/oauth/revoke")), "htu")
    refused(sign(es_key, "ES256", claims(htu="https://evil.example/oauth/token")), "htu")
    refused(sign(es_key, "ES256", claims(htu="http://tokend.example/oauth/token")), "htu")
    refused(sign(es_key, "ES256", claims(htu="https://tokend.example:8443/oauth/token")), "htu")
    refused(sign(es_key, "ES256", claims(htu="/oauth/token")), "htu is not a URL")
    refused(sign(es_key, "ES256", claims(htu=None)), "no htu")


def test_htu_equal_after_normalisation_is_accepted(es_key: Any) -> None:
    spelled = "HTTPS://Tokend.EXAMPLE:443/oauth/./token?grant_type=x#f"
    assert check(sign(es_key, "ES256", claims(htu=spelled)), url=URL + "?other=1").htu == spelled


def test_iat_too_old_and_in_the_future(es_key: Any) -> None:
    refused(sign(es_key, "ES256", claims(iat=int(NOW) - 301)), "too old")
    assert check(sign(es_key, "ES256", claims(iat=int(NOW) - 300))).iat == NOW - 300
    refused(sign(es_key, "ES256", claims(iat=int(NOW) - 61)), "too old", max_age=60)
    refused(sign(es_key, "ES256", claims(iat=int(NOW) + 6)), "in the future")
    assert check(sign(es_key, "ES256", claims(iat=int(NOW) + 5))).iat == NOW + 5
    refused(sign(es_key, "ES256", claims(iat=int(NOW) + 2)), "in the future", future=1)


def test_iat_not_a_number(es_key: Any) -> None:
    refused(sign(es_key, "ES256", claims(iat=str(int(NOW)))), "iat is missing or not a number")
    refused(sign(es_key, "ES256", claims(iat=True)), "iat is missing or not a number")
    refused(sign(es_key, "ES256", claims(iat=None)), "iat is missing or not a number")
    refused(sign(es_key, "ES256", claims(iat=10**400)), "in the future")
    refused(sign(es_key, "ES256", claims(iat=[int(NOW)])), "not a number")


def test_non_finite_iat(es_key: Any) -> None:
    # json.dumps writes NaN and Infinity, json.loads reads them back
    refused(sign(es_key, "ES256", claims(iat=float("nan"))), "iat is not a number")
    refused(sign(es_key, "ES256", claims(iat=float("inf"))), "in the future")
    refused(sign(es_key, "ES256", claims(iat=float("-inf"))), "too old")


def test_jti_missing_or_too_long(es_key: Any) -> None:
    refused(sign(es_key, "ES256", claims(jti=None)), "no jti")
    refused(sign(es_key, "ES256", claims(jti="")), "no jti")
    refused(sign(es_key, "ES256", claims(jti=12345)), "no jti")
    refused(sign(es_key, "ES256", claims(jti="j" * 257)), "longer than 256")
    assert check(sign(es_key, "ES256", claims(jti="j" * 256))).jti == "j" * 256


def test_ath_missing_or_mismatched(es_key: Any) -> None:
    refused(sign(es_key, "ES256", claims()), "no ath", access_token="at")
    wrong = access_token_hash("another")
    refused(sign(es_key, "ES256", claims(ath=wrong)), "not the hash", access_token="at")
    refused(sign(es_key, "ES256", claims(ath=7)), "no ath", access_token="at")
    good = sign(es_key, "ES256", claims(ath=access_token_hash("at")))
    assert check(good, access_token="at").jti == "j-1"
    assert check(good).jti == "j-1"  # no access token: ath not asked for


def test_nonce(es_key: Any) -> None:
    asked: list[str | None] = []

    def accept(value: str | None) -> bool:
        asked.append(value)
        return value == "n-2"

    refused(sign(es_key, "ES256", claims()), "nonce is required", "use_dpop_nonce", nonce=accept)
    refused(sign(es_key, "ES256", claims(nonce="n-1")), "fresh", "use_dpop_nonce", nonce=accept)
    assert check(sign(es_key, "ES256", claims(nonce="n-2")), nonce=accept).nonce == "n-2"
    assert asked == [None, "n-1", "n-2"]
    refused(sign(es_key, "ES256", claims(nonce=5)), "nonce is not a string", nonce=accept)


def test_use_dpop_nonce_only_for_an_otherwise_valid_proof(es_key: Any) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    forged = sign(other, "ES256", claims(), jwk=public_jwk(es_key))
    refused(forged, "signature", nonce=lambda _: False)


def test_oversized_proof(es_key: Any) -> None:
    big = sign(es_key, "ES256", claims(pad="x" * MAX_PROOF_SIZE))
    refused(big, f"larger than {MAX_PROOF_SIZE}")
    fits = sign(es_key, "ES256", claims(pad="x" * 5000))
    assert len(fits) <= MAX_PROOF_SIZE and check(fits).jti == "j-1"


def malformed(es_key: Any) -> Iterator[str]:
    jwk = public_jwk(es_key)
    header = {"typ": PROOF_TYP, "alg": "ES256", "jwk": jwk}
    body = b64json(claims())
    yield ""
    yield "garbage"
    yield "a.b"
    yield "a.b.c.d"
    yield "!!!.???.***"
    yield f"{b64json(header)}.{body}.c2ln="  # padding
    yield f"{b64json(header)} .{body}.c2ln"
    yield "é.é.é"
    not_utf8 = b64(bytes([0xFF, 0xFE]))
    yield f"{not_utf8}.{body}.c2ln"  # not UTF-8
    yield f"{b64(b'{')}.{body}.c2ln"  # not JSON
    yield f"{b64json([1, 2])}.{body}.c2ln"  # JSON, not an object
    yield f"{b64json('dpop+jwt')}.{body}.c2ln"
    yield f"{b64((b'[' * 2000) + (b']' * 2000))}.{body}.c2ln"  # deep nesting
    duplicate = b64(b'{"typ":"dpop+jwt","typ":"dpop+jwt"}')
    yield f"{duplicate}.{body}.c2ln"  # a member twice
    for bad_jwk in (None, "jwk", [jwk], 1, {}, {"kty": "EC"}, {"kty": "EC", "crv": "P-256"}):
        yield f"{b64json({**header, 'jwk': bad_jwk})}.{body}.c2ln"
    for x in ("short", "", 5, None, "A" * 5000, "!!"):
        yield f"{b64json({**header, 'jwk': {**jwk, 'x': x}})}.{body}.c2ln"
    for alg in (None, 5, ["ES256"], "es256", "ES256 ", "HS512", "ES384", "RS512"):
        yield f"{b64json({**header, 'alg': alg})}.{body}.c2ln"
    rsa_jwk = {"kty": "RSA", "n": "!!", "e": "AQAB"}
    yield f"{b64json({**header, 'alg': 'RS256', 'jwk': rsa_jwk})}.{body}.c2ln"
    yield f"{b64json({**header, 'alg': 'RS256', 'jwk': {**rsa_jwk, 'n': 7}})}.{body}.c2ln"
    # a valid signature over a payload that is not an object, or not JSON
    for payload in (b"[1]", b"not json", b'"s"', b"1e999999"):
        yield jwt.api_jws.encode(payload, es_key, algorithm="ES256", headers=header)
    yield sign(es_key, "ES256", claims(), extra={"crit": ["exp"]})
    yield forge(es_key, {**header, "kid": 5}, claims())


def test_a_lone_surrogate_in_the_claims_or_header_is_a_dpop_error(es_key: Any) -> None:
    # a JSON escape can spell one; the jti becomes a Redis key and ath is hashed as UTF-8
    refused(sign(es_key, "ES256", claims(jti="\ud800")), "lone surrogate")
    refused(sign(es_key, "ES256", claims(ath="\udfff")), "lone surrogate", access_token="at")
    refused(sign(es_key, "ES256", claims(), extra={"kid": "\ud800"}), "lone surrogate")
    assert check(sign(es_key, "ES256", claims(jti="\u00e9\U0001f600"))).jti == "\u00e9\U0001f600"


def test_a_header_member_given_twice(es_key: Any) -> None:
    # RFC 7515 section 4: a parser rejects duplicates or takes the last; tokend rejects them
    jwk = json.dumps(public_jwk(es_key))
    raw = f'{{"typ":"dpop+jwt","alg":"ES256","jwk":{jwk},"alg":"ES256"}}'.encode()
    signing_input = f"{b64(raw)}.{b64json(claims())}".encode()
    signature = jwt.algorithms.get_default_algorithms()["ES256"].sign(signing_input, es_key)
    refused(f"{signing_input.decode()}.{b64(signature)}", "duplicate member 'alg'")


def test_malformed_proofs_are_dpop_errors(es_key: Any) -> None:
    count = 0
    for proof in malformed(es_key):
        with pytest.raises(DPoPError) as info:
            check(proof)
        assert info.value.code == "invalid_dpop_proof", proof
        count += 1
    assert count > 40


def test_a_proof_that_is_not_a_string() -> None:
    for value in (None, b"a.b.c", 5):
        with pytest.raises(DPoPError, match="no DPoP proof"):
            check(value)  # type: ignore[arg-type]


def test_a_request_url_that_is_not_absolute(es_key: Any) -> None:
    refused(sign(es_key, "ES256", claims()), "request's URL", url="/oauth/token")


def test_default_algorithms() -> None:
    assert ALGORITHMS == ("ES256", "EdDSA", "RS256", "PS256")


# -- normalize_htu -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://tokend.example/oauth/token", "https://tokend.example/oauth/token"),
        ("HTTPS://Tokend.Example/Path", "https://tokend.example/Path"),  # path case kept
        ("https://a.example:443/x", "https://a.example/x"),
        ("http://a.example:80/x", "http://a.example/x"),
        ("http://a.example:443/x", "http://a.example:443/x"),
        ("https://a.example:8443/x", "https://a.example:8443/x"),
        ("https://a.example", "https://a.example/"),
        ("https://a.example?q=1", "https://a.example/"),
        ("https://a.example/x?q=1#f", "https://a.example/x"),
        ("https://a.example/x#f?q", "https://a.example/x"),
        ("https://a.example/x/", "https://a.example/x/"),
        ("https://a.example/a/./b/../c", "https://a.example/a/c"),
        ("https://a.example/a/..", "https://a.example/"),
        ("https://a.example/../../x", "https://a.example/x"),
        ("https://a.example/%7euser/%2f%41", "https://a.example/~user/%2FA"),
        ("http://[::1]:80/x", "http://[::1]/x"),
        ("http://[::1]:8080/x", "http://[::1]:8080/x"),
        ("http://127.0.0.1:8080/auth/login", "http://127.0.0.1:8080/auth/login"),
    ],
)
def test_normalize_htu(url: str, expected: str) -> None:
    assert normalize_htu(url) == expected
    assert normalize_htu(expected) == expected  # idempotent


@pytest.mark.parametrize(
    "url",
    [
        "",
        "/oauth/token",
        "tokend.example/oauth/token",
        "ftp://a.example/x",
        "https:///x",
        "https://user:pw@a.example/x",
        "https://user@a.example/x",
        "https://a.example:99999/x",
        "https://a.example:port/x",
        "https://a example/x",
        "https://a.example/x\n",
        "https://a.example/\x00",
    ],
)
def test_normalize_htu_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        normalize_htu(url)


# -- MemoryReplayCache -----------------------------------------------------------------


def test_replay_detected() -> None:
    cache = MemoryReplayCache()
    assert cache.seen("k1", "j1", until=NOW + 300, now=NOW) is False
    assert cache.seen("k1", "j1", until=NOW + 300, now=NOW + 1) is True
    assert cache.seen("k1", "j1", until=NOW + 300, now=NOW + 299) is True
    assert cache.seen("k2", "j1", until=NOW + 300, now=NOW) is False  # another key
    assert cache.seen("k1", "j2", until=NOW + 300, now=NOW) is False
    assert cache.seen("k1", "j1", until=time.time() + 60) is True  # now defaults to the clock


def test_expiry_frees_the_entry() -> None:
    cache = MemoryReplayCache()
    assert cache.seen("k", "j", until=NOW + 10, now=NOW) is False
    assert cache.seen("k", "j", until=NOW + 20, now=NOW + 10) is False  # expired: recorded anew
    assert cache.seen("k", "j", until=NOW + 20, now=NOW + 19) is True
    assert len(cache) == 1


def test_bound_kept_under_a_flood() -> None:
    cache = MemoryReplayCache(max_entries=100)
    for i in range(5000):
        assert cache.seen("k", f"j{i}", until=NOW + 300, now=NOW) is False
        assert len(cache) <= 100
    assert cache.seen("k", "j4999", until=NOW + 300, now=NOW) is True  # the newest are kept
    assert cache.seen("k", "j4900", until=NOW + 300, now=NOW) is True


def test_when_full_expired_entries_go_before_the_oldest() -> None:
    cache = MemoryReplayCache(max_entries=4)
    cache.seen("k", "oldest-live", until=NOW + 1000, now=NOW)
    cache.seen("k", "short-1", until=NOW + 10, now=NOW)
    cache.seen("k", "short-2", until=NOW + 10, now=NOW)
    cache.seen("k", "live", until=NOW + 1000, now=NOW)
    assert cache.seen("k", "new", until=NOW + 1000, now=NOW + 20) is False
    assert cache.seen("k", "oldest-live", until=NOW + 1000, now=NOW + 20) is True
    assert cache.seen("k", "live", until=NOW + 1000, now=NOW + 20) is True
    assert len(cache) == 3


class YieldingEntries(OrderedDict[tuple[str, str], float]):
    """The cache's table, handing the GIL to other threads in the middle of each lookup."""

    def get(self, key: Any, default: Any = None) -> Any:
        value = super().get(key, default)
        time.sleep(0.0005)  # between the lookup and what seen() does with its answer
        return value


def test_replay_cache_is_thread_safe() -> None:
    cache = MemoryReplayCache(max_entries=1_000_000)
    cache._entries = YieldingEntries()  # a race between lookup and record shows up at once
    threads, keys = 8, 20
    barrier = threading.Barrier(threads)
    fresh: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        barrier.wait()
        count = sum(not cache.seen("k", f"j{i}", until=NOW + 300, now=NOW) for i in range(keys))
        with lock:
            fresh.append(count)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sum(fresh) == keys  # each (jkt, jti) recorded exactly once
    assert len(cache) == keys


def test_replay_cache_under_many_threads() -> None:
    cache = MemoryReplayCache(max_entries=500)
    errors: list[BaseException] = []

    def flood(n: int) -> None:
        try:
            for i in range(2000):
                cache.seen(f"k{n}", f"j{i}", until=NOW + (i % 7), now=NOW + (i % 5))
        except BaseException as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    workers = [threading.Thread(target=flood, args=(n,)) for n in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == [] and len(cache) <= 500


def test_replay_cache_refuses_a_zero_bound() -> None:
    with pytest.raises(ValueError):
        MemoryReplayCache(max_entries=0)


# -- DPoPKey files -----------------------------------------------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)  # the file's mode must not depend on the umask
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_save_mode_0600_and_load_round_trip(alg: str, tmp_path: Path, open_umask: None) -> None:
    key = DPoPKey.generate(alg)
    path = tmp_path / "dpop.pem"
    key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    loaded = DPoPKey.load(path)
    assert (loaded.alg, loaded.jkt, loaded.public_jwk) == (alg, key.jkt, key.public_jwk)
    assert check(loaded.proof("POST", URL, now=NOW)).jkt == key.jkt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dpop.pem"]  # no temp file left


def test_save_replaces_a_readable_file_with_a_0600_one(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "dpop.pem"
    path.write_text("old")
    path.chmod(0o644)
    key = DPoPKey.generate()
    key.save(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert DPoPKey.load(str(path)).jkt == key.jkt


def test_load_refuses_other_keys(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = tmp_path / "rsa.pem"
    path.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ValueError):
        DPoPKey.load(path)
    path.write_text("not a key")
    with pytest.raises(ValueError):
        DPoPKey.load(path)


def test_key_alg_must_match(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError):
        DPoPKey(ec.generate_private_key(ec.SECP256R1()), "EdDSA")
    with pytest.raises(ValueError):
        DPoPKey(rsa_key)
    with pytest.raises(ValueError):
        DPoPKey(ec.generate_private_key(ec.SECP384R1()))  # type: ignore[arg-type]


def test_the_parsed_key_cache_never_stands_in_for_a_signature() -> None:
    """A key is parsed once and kept (a client signs every request with it); a proof that
    names a kept key but is signed by another is still refused, and the cache is bounded."""
    from tokend_client import dpop

    owner, thief = DPoPKey.generate("ES256"), DPoPKey.generate("ES256")
    url = "https://api.example.com/r"
    now = time.time()
    verify_proof(owner.proof("GET", url), method="GET", url=url, now=now)  # kept now
    forged = thief.proof("GET", url)
    header, payload, signature = forged.split(".")
    owner_header = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    owner_header["jwk"] = owner.public_jwk
    mixed = f"{base64.urlsafe_b64encode(json.dumps(owner_header).encode()).rstrip(b'=').decode()}"
    with pytest.raises(DPoPError, match="signature does not verify"):
        verify_proof(f"{mixed}.{payload}.{signature}", method="GET", url=url, now=now)
    for _ in range(dpop.KEY_CACHE_SIZE + 5):
        key = DPoPKey.generate("EdDSA")
        verify_proof(key.proof("GET", url), method="GET", url=url, now=now)
    assert len(dpop._keys) == dpop.KEY_CACHE_SIZE
