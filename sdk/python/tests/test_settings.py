"""Settings: the policy schema's defaults, PORTCULLIS_* variables, and clear errors."""

from __future__ import annotations

import pytest

from portcullis_fastapi import DEFAULT_JWKS_URL, AssertionSettings, IdentitySettings


def test_defaults_are_the_policy_schemas() -> None:
    settings = IdentitySettings()
    assert (settings.subject_header, settings.roles_header, settings.scopes_header) == (
        "X-Auth-Subject",
        "X-Auth-Roles",
        "X-Auth-Scopes",
    )
    assert (settings.client_id_header, settings.issuer_header) == ("X-Auth-Client-Id", "X-Auth-Issuer")
    assert settings.claim_headers == {} and settings.assertion is None
    assertion = AssertionSettings(audience="orders-api")
    assert assertion.header == "X-Auth-Assertion"
    assert assertion.jwks_url == DEFAULT_JWKS_URL == "http://127.0.0.1:9901/jwks.json"


def test_from_env() -> None:
    settings = IdentitySettings.from_env(
        {
            "PORTCULLIS_SUBJECT_HEADER": "X-User",
            "PORTCULLIS_ROLES_HEADER": "X-Groups",
            "PORTCULLIS_CLAIM_HEADERS": "email=X-Auth-Email, name = X-Auth-Name",
            "PORTCULLIS_ASSERTION_AUDIENCE": "orders-api",
            "PORTCULLIS_JWKS_URL": "http://127.0.0.1:9911/jwks.json",
        }
    )
    assert settings.subject_header == "X-User" and settings.roles_header == "X-Groups"
    assert settings.scopes_header == "X-Auth-Scopes"
    assert settings.claim_headers == {"email": "X-Auth-Email", "name": "X-Auth-Name"}
    assert settings.assertion == AssertionSettings(audience="orders-api", jwks_url="http://127.0.0.1:9911/jwks.json")


def test_from_env_falls_back_to_the_defaults_given() -> None:
    settings = IdentitySettings.from_env({}, claim_headers={"email": "X-Auth-Email"})
    assert settings.claim_headers == {"email": "X-Auth-Email"} and settings.assertion is None
    overridden = IdentitySettings.from_env({"PORTCULLIS_CLAIM_HEADERS": "sub=X-S"}, claim_headers={"email": "X-E"})
    assert overridden.claim_headers == {"sub": "X-S"}


def test_half_an_assertion_configuration_is_an_error_not_a_silent_fallback() -> None:
    with pytest.raises(ValueError, match="PORTCULLIS_JWKS_URL is set but PORTCULLIS_ASSERTION_AUDIENCE is not"):
        IdentitySettings.from_env({"PORTCULLIS_JWKS_URL": "http://127.0.0.1:9901/jwks.json"})



def test_from_env_keeps_the_default_assertions_other_settings() -> None:
    default = AssertionSettings(
        audience="orders-api", leeway_seconds=30, refetch_cooldown_seconds=60, fetch_timeout_seconds=7
    )
    settings = IdentitySettings.from_env({"PORTCULLIS_ASSERTION_AUDIENCE": "billing-api"}, assertion=default)
    assert settings.assertion == AssertionSettings(
        audience="billing-api", leeway_seconds=30, refetch_cooldown_seconds=60, fetch_timeout_seconds=7
    )


def test_from_env_takes_the_audience_from_the_default_assertion() -> None:
    default = AssertionSettings(audience="orders-api", leeway_seconds=30)
    settings = IdentitySettings.from_env(
        {"PORTCULLIS_JWKS_URL": "http://127.0.0.1:9911/jwks.json", "PORTCULLIS_ASSERTION_HEADER": "X-Signed"},
        assertion=default,
    )
    assert settings.assertion == AssertionSettings(
        audience="orders-api", header="X-Signed", jwks_url="http://127.0.0.1:9911/jwks.json", leeway_seconds=30
    )
    assert IdentitySettings.from_env({}, assertion=default).assertion is default

@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: IdentitySettings(subject_header="X Auth"), "subject_header: not an HTTP header name"),
        (lambda: IdentitySettings(roles_header=""), "roles_header: not an HTTP header name"),
        (lambda: IdentitySettings(claim_headers={"email": "bad header"}), "claim_headers\\['email'\\]"),
        (lambda: AssertionSettings(audience=""), "metadata.name"),
        (lambda: AssertionSettings(audience="a", jwks_url="file:///etc/passwd"), "http\\(s\\) URL"),
        (lambda: AssertionSettings(audience="a", leeway_seconds=-1), "leeway_seconds"),
        (lambda: AssertionSettings(audience="a", fetch_timeout_seconds=0), "more than 0"),
        (lambda: IdentitySettings.from_env({"PORTCULLIS_CLAIM_HEADERS": "email"}), "claim=Header-Name"),
    ],
)
def test_bad_settings_are_clear_errors(make, message: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=message):
        make()
