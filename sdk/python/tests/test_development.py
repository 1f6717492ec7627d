"""Development mode: PORTCULLIS_DEV_IDENTITY gives every request one made-up identity, loudly, and is
refused where the process looks like a Kubernetes pod."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import client_for, identity_app

from portcullis_fastapi import DevIdentityRefused, development

DEV = json.dumps({"sub": "dev", "roles": ["admin"], "scope": "orders.read", "email": "dev@laptop"})


def test_off_by_default() -> None:
    assert client_for(identity_app()).get("/me").status_code == 401
    assert development.dev_identity_from_env({}) is None
    assert development.dev_identity_from_env({"PORTCULLIS_DEV_IDENTITY": " "}) is None


def test_on_every_request_is_the_dev_identity_with_a_warning_at_start_and_per_request(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PORTCULLIS_DEV_IDENTITY", DEV)
    with caplog.at_level(logging.WARNING, logger="portcullis_fastapi"):
        client = client_for(identity_app())
        started = [r for r in caplog.records if "DEVELOPMENT MODE" in r.getMessage()]
        assert len(started) == 1 and started[0].levelno == logging.WARNING
        assert "PORTCULLIS_DEV_IDENTITY" in started[0].getMessage()
        for _ in range(3):
            # Headers, forged or not, are ignored: the dev identity is the identity.
            response = client.get("/me", headers={"X-Auth-Subject": "someone-else"})
            assert response.status_code == 200
            assert response.json() == {
                "subject": "dev",
                "roles": ["admin"],
                "scopes": ["orders.read"],
                "client_id": None,
                "issuer": None,
                "claims": json.loads(DEV),
                "source": "development",
            }
    warnings = [r for r in caplog.records if "DEVELOPMENT MODE" in r.getMessage()]
    assert len(warnings) == 4
    assert all(r.levelno == logging.WARNING for r in warnings)
    assert "GET /me" in warnings[-1].getMessage()


def test_refused_in_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTCULLIS_DEV_IDENTITY", DEV)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    with pytest.raises(DevIdentityRefused, match="looks like a Kubernetes pod.*KUBERNETES_SERVICE_HOST"):
        identity_app()


def test_refused_where_a_service_account_is_mounted(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    monkeypatch.setenv("PORTCULLIS_DEV_IDENTITY", DEV)
    monkeypatch.setattr(development, "SERVICE_ACCOUNT_DIR", str(tmp_path))
    with pytest.raises(DevIdentityRefused, match="exists"):
        identity_app()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", "not JSON"),
        ('["dev"]', "expected a JSON object"),
        ('{"roles": ["admin"]}', '"sub" must be'),
        ('{"sub": "dev", "roles": "admin"}', '"roles" must be a list'),
        ('{"sub": "dev", "scope": 7}', '"scope" must be'),
        ('{"sub": "dev", "client_id": 7}', '"client_id" must be'),
    ],
)
def test_a_malformed_dev_identity_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, value: str, message: str) -> None:
    monkeypatch.setenv("PORTCULLIS_DEV_IDENTITY", value)
    with pytest.raises(DevIdentityRefused, match=message):
        identity_app()
