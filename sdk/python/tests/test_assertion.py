"""Assertion mode: the identity from the sidecar's signed assertion, verified against its /jwks.json,
served here by a real HTTP server on loopback."""

from __future__ import annotations

import logging

import jwt
import pytest
from conftest import KeyServer, Signer, client_for, identity_app, problem

from portcullis_fastapi import AssertionSettings, IdentitySettings, SidecarKeys


def assertion_app(key_server: KeyServer, cooldown: float = 0.0, **assertion: object):
    settings = IdentitySettings(
        assertion=AssertionSettings(
            audience="orders-api", jwks_url=key_server.url, refetch_cooldown_seconds=cooldown, **assertion
        )
    )
    return client_for(identity_app(settings))


def refused(response, slug: str = "invalid-assertion") -> None:  # noqa: ANN001
    assert response.status_code == 401, response.text
    assert problem(response)["type"] == f"https://portcullis.dev/problems/{slug}"


def test_a_valid_assertion_is_the_identity_and_the_plain_headers_are_not_read(
    signer: Signer, key_server: KeyServer
) -> None:
    client = assertion_app(key_server)
    forged = {"X-Auth-Subject": "mallory", "X-Auth-Roles": "admin"}
    response = client.get("/me", headers={"X-Auth-Assertion": signer.assertion(), **forged})
    assert response.status_code == 200
    body = response.json()
    assert body["subject"] == "alice"
    assert body["roles"] == ["reader"]
    assert body["scopes"] == ["orders.read"]
    assert body["client_id"] == "reader"
    assert body["issuer"] == "http://127.0.0.1:9400"
    assert body["source"] == "assertion"
    assert body["claims"]["aud"] == "orders-api"
    # Keys are cached: a second request fetches nothing.
    assert client.get("/me", headers={"X-Auth-Assertion": signer.assertion()}).status_code == 200
    assert key_server.fetches == 1


def test_forged_identity_headers_without_an_assertion_get_401(key_server: KeyServer) -> None:
    client = assertion_app(key_server)
    response = client.get("/me", headers={"X-Auth-Subject": "root", "X-Auth-Roles": "admin"})
    refused(response, "no-assertion")
    assert key_server.fetches == 0


def test_the_assertion_header_name_is_configurable(signer: Signer, key_server: KeyServer) -> None:
    client = assertion_app(key_server, header="X-Proof")
    assert client.get("/me", headers={"X-Proof": signer.assertion()}).status_code == 200
    refused(client.get("/me", headers={"X-Auth-Assertion": signer.assertion()}), "no-assertion")


def test_an_assertion_signed_by_another_key_with_the_sidecars_kid_is_refused(
    signer: Signer, key_server: KeyServer
) -> None:
    impostor = Signer()
    impostor.kid = signer.kid
    refused(assertion_app(key_server).get("/me", headers={"X-Auth-Assertion": impostor.assertion()}))


@pytest.mark.parametrize(
    ("why", "overrides"),
    [
        ("expired", {"exp": 1_000_000, "iat": 999_000}),
        ("another policy's", {"aud": "billing-api"}),
        ("not the sidecar's issuer", {"iss": "http://127.0.0.1:9400"}),
        ("without exp", {"exp": None}),
        ("without iat", {"iat": None}),
        ("without sub", {"sub": None}),
        ("with an empty sub", {"sub": ""}),
        ("with roles that are not a list", {"roles": "admin"}),
        ("with a scope that is not a string", {"scope": ["orders.read"]}),
        ("with an absurd exp", {"exp": 1e400}),
    ],
)
def test_a_signed_assertion_with_bad_claims_is_refused(
    signer: Signer, key_server: KeyServer, why: str, overrides: dict
) -> None:
    response = assertion_app(key_server).get("/me", headers={"X-Auth-Assertion": signer.assertion(**overrides)})
    refused(response)


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        "a.b.c",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJyb290In0.",  # alg none
        jwt.encode({"sub": "root"}, "s" * 32, algorithm="HS256", headers={"typ": "portcullis-assertion+jwt"}),
        "x" * 20_000,
    ],
)
def test_malformed_or_unsigned_assertions_are_refused(key_server: KeyServer, token: str) -> None:
    refused(assertion_app(key_server).get("/me", headers={"X-Auth-Assertion": token}))


def test_the_assertion_type_must_be_the_sidecars(signer: Signer, key_server: KeyServer) -> None:
    token = signer.assertion(header={"typ": "JWT"})
    refused(assertion_app(key_server).get("/me", headers={"X-Auth-Assertion": token}))


def test_two_assertions_are_ambiguous(signer: Signer, key_server: KeyServer) -> None:
    token = signer.assertion()
    response = assertion_app(key_server).get("/me", headers=[("X-Auth-Assertion", token), ("X-Auth-Assertion", token)])
    refused(response, "ambiguous-identity")


def test_a_restarted_sidecar_new_key_is_fetched_on_its_unknown_kid(signer: Signer, key_server: KeyServer) -> None:
    client = assertion_app(key_server)
    assert client.get("/me", headers={"X-Auth-Assertion": signer.assertion()}).status_code == 200
    restarted = Signer()
    key_server.keys = [restarted.jwk]
    response = client.get("/me", headers={"X-Auth-Assertion": restarted.assertion(sub="bob")})
    assert response.status_code == 200
    assert response.json()["subject"] == "bob"
    assert key_server.fetches == 2


def test_unknown_kids_refetch_at_most_once_per_cooldown(signer: Signer, key_server: KeyServer) -> None:
    client = assertion_app(key_server, cooldown=3600)
    assert client.get("/me", headers={"X-Auth-Assertion": signer.assertion()}).status_code == 200
    for _ in range(5):
        refused(client.get("/me", headers={"X-Auth-Assertion": Signer().assertion()}))
    # The first fetch started the cool-down: made-up key ids cost no further fetches.
    assert key_server.fetches == 1
    assert client.get("/me", headers={"X-Auth-Assertion": signer.assertion()}).status_code == 200


def test_keys_that_cannot_be_fetched_are_a_503_not_a_401(
    signer: Signer, key_server: KeyServer, caplog: pytest.LogCaptureFixture
) -> None:
    key_server.status = 500
    client = assertion_app(key_server)
    with caplog.at_level(logging.ERROR, logger="portcullis_fastapi"):
        response = client.get("/me", headers={"X-Auth-Assertion": signer.assertion()})
    assert response.status_code == 503
    assert problem(response)["type"] == "https://portcullis.dev/problems/assertion-keys-unavailable"
    assert "HTTP 500" in caplog.text
    key_server.status = 200
    assert client.get("/me", headers={"X-Auth-Assertion": signer.assertion()}).status_code == 200


def test_an_unreachable_sidecar_is_a_503(signer: Signer) -> None:
    server = KeyServer()
    server.stop()  # nothing listens on its port any more
    settings = IdentitySettings(assertion=AssertionSettings(audience="orders-api", jwks_url=server.url))
    response = client_for(identity_app(settings)).get("/me", headers={"X-Auth-Assertion": signer.assertion()})
    assert response.status_code == 503


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_sidecar_keys_cooldown_and_failures(signer: Signer, key_server: KeyServer) -> None:
    clock = Clock()
    keys = SidecarKeys(key_server.url, cooldown_seconds=5, clock=clock)
    assert keys.cached(signer.kid) is None
    assert keys.lookup(signer.kid) is not None
    assert keys.lookup("unknown") is None  # within the cool-down: no fetch
    assert key_server.fetches == 1
    clock.now = 6
    assert keys.lookup("unknown") is None
    assert key_server.fetches == 2
    # A failed fetch keeps the keys it had, and is not retried before the cool-down either.
    key_server.status = 503
    clock.now = 12
    with pytest.raises(Exception, match="HTTP 503"):
        keys.lookup("other")
    with pytest.raises(Exception, match="HTTP 503"):
        keys.lookup("other")
    assert key_server.fetches == 3
    assert keys.lookup(signer.kid) is not None


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ([], "no Ed25519 signing key"),
        ([{"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "r"}], "no Ed25519 signing key"),
        ([{"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": "k", "use": "enc"}], "no Ed25519 signing key"),
    ],
)
def test_a_key_set_without_a_usable_key_is_unavailable(key_server: KeyServer, keys: list, message: str) -> None:
    key_server.keys = keys
    with pytest.raises(Exception, match=message):
        SidecarKeys(key_server.url).lookup("k")


def test_a_repeated_assertion_is_verified_once_until_its_exp(
    signer: Signer, key_server: KeyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from portcullis_fastapi import dependencies

    calls: list[str] = []
    real = dependencies.verify_assertion

    def counting(token, key, settings):  # noqa: ANN001, ANN202
        calls.append(token)
        return real(token, key, settings)

    monkeypatch.setattr(dependencies, "verify_assertion", counting)
    client = assertion_app(key_server)
    token = signer.assertion()
    for _ in range(3):
        assert client.get("/me", headers={"X-Auth-Assertion": token}).json()["subject"] == "alice"
    assert calls == [token]
    other = signer.assertion(sub="bob")
    assert client.get("/me", headers={"X-Auth-Assertion": other}).json()["subject"] == "bob"
    assert calls == [token, other]
    # A refused assertion is never remembered: it is checked (and refused) every time.
    expired = signer.assertion(exp=1_000_000, iat=999_000)
    for _ in range(2):
        refused(client.get("/me", headers={"X-Auth-Assertion": expired}))
    assert calls == [token, other, expired, expired]


def test_verified_assertions_expire_and_stay_bounded(signer: Signer) -> None:
    from portcullis_fastapi.assertion import VerifiedAssertions
    from portcullis_fastapi.identity import Identity

    clock = Clock()
    cache = VerifiedAssertions(max_entries=2, clock=clock)
    identity = Identity(subject="alice", claims={"exp": 100}, source="assertion")
    cache.put("a", identity)
    clock.now = 99.0
    assert cache.get("a") is identity
    clock.now = 100.0
    assert cache.get("a") is None
    clock.now = 50.0
    for token in ("b", "c", "d"):
        cache.put(token, identity)
    assert [cache.get(t) is not None for t in ("b", "c", "d")] == [False, True, True]
    cache.put("no-exp", Identity(subject="x", claims={}))
    assert cache.get("no-exp") is None
