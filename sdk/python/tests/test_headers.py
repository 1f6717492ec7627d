"""Header mode: the identity from the sidecar's plain identity headers."""

from __future__ import annotations

import pytest
from conftest import client_for, identity_app, problem
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from starlette.exceptions import HTTPException as StarletteHTTPException

from portcullis_fastapi import Identity, IdentitySettings, current_identity

SIDECAR_HEADERS = {
    "X-Auth-Subject": "alice",
    "X-Auth-Roles": "reader,writer",
    "X-Auth-Scopes": "orders.read orders.write",
    "X-Auth-Client-Id": "shop-frontend",
    "X-Auth-Issuer": "https://idp.example.com",
    "X-Auth-Email": "alice@example.com",
}


def test_reads_every_field_the_sidecar_sets() -> None:
    client = client_for(identity_app(IdentitySettings(claim_headers={"email": "X-Auth-Email"})))
    response = client.get("/me", headers=SIDECAR_HEADERS)
    assert response.status_code == 200
    assert response.json() == {
        "subject": "alice",
        "roles": ["reader", "writer"],
        "scopes": ["orders.read", "orders.write"],
        "client_id": "shop-frontend",
        "issuer": "https://idp.example.com",
        "claims": {"email": "alice@example.com"},
        "source": "headers",
    }


def test_a_token_without_roles_scopes_or_client_is_still_an_identity() -> None:
    response = client_for(identity_app()).get("/me", headers={"X-Auth-Subject": "svc"})
    assert response.status_code == 200
    assert response.json()["roles"] == [] and response.json()["scopes"] == []
    assert response.json()["client_id"] is None and response.json()["claims"] == {}


def test_reads_the_header_names_the_policy_configures_and_only_those() -> None:
    settings = IdentitySettings(
        subject_header="X-User", roles_header="X-Groups", scopes_header="X-Scope", client_id_header="X-Client"
    )
    client = client_for(identity_app(settings))
    response = client.get("/me", headers={"X-User": "bob", "X-Groups": "admin", "X-Scope": "a b", "X-Client": "c"})
    assert response.json()["subject"] == "bob"
    assert response.json()["roles"] == ["admin"]
    assert response.json()["scopes"] == ["a", "b"]
    assert response.json()["client_id"] == "c"
    # The default names mean nothing to this app.
    assert client.get("/me", headers=SIDECAR_HEADERS).status_code == 401


def test_no_identity_is_a_401_problem() -> None:
    response = client_for(identity_app()).get("/me", headers={"X-Request-Id": "req-7"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    body = problem(response)
    assert body["type"] == "https://portcullis.dev/problems/no-identity"
    assert body["requestId"] == "req-7"
    assert client_for(identity_app()).get("/me", headers={"X-Auth-Subject": "  "}).status_code == 401


@pytest.mark.parametrize("name", ["X-Auth-Subject", "X-Auth-Roles", "X-Auth-Scopes", "X-Auth-Client-Id"])
def test_an_identity_header_sent_twice_is_refused_not_guessed(name: str) -> None:
    # The sidecar sets each once after removing client copies: two copies did not come from it alone.
    headers = [(k, v) for k, v in SIDECAR_HEADERS.items()] + [(name, "admin")]
    response = client_for(identity_app()).get("/me", headers=headers)
    assert response.status_code == 401
    assert problem(response)["type"] == "https://portcullis.dev/problems/ambiguous-identity"


def test_spoofed_spellings_are_not_read() -> None:
    # uvicorn hands X_Auth_Subject over as its own name; the sidecar strips it, and so must we ignore it.
    response = client_for(identity_app()).get("/me", headers={"X_Auth_Subject": "root", "x.auth.subject": "root"})
    assert response.status_code == 401


def test_problem_rendering_wins_over_the_apps_own_http_error_handler() -> None:
    app = identity_app()

    @app.exception_handler(StarletteHTTPException)
    async def own(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"own": exc.detail}, status_code=exc.status_code)

    @app.get("/missing")
    def missing() -> None:
        raise HTTPException(status_code=404, detail="nope")

    client = client_for(app)
    assert problem(client.get("/me"))["status"] == 401
    assert client.get("/missing").json() == {"own": "nope"}


def test_a_dependency_without_setup_is_a_clear_error() -> None:
    app = FastAPI()

    @app.get("/me")
    def me(identity: Identity = Depends(current_identity)) -> str:
        return identity.subject

    with pytest.raises(RuntimeError, match=r"setup\(app\) was not called"):
        TestClient(app).get("/me", headers=SIDECAR_HEADERS)


def test_percent_encoded_values_are_decoded_when_the_sidecar_flags_them() -> None:
    # What the sidecar sends for a UTF-8 subject, role and email (encodeURIComponent + a sibling).
    headers = {
        "X-Auth-Subject": "Zo%C3%AB",
        "x-auth-subject-encoding": "percent",
        "X-Auth-Roles": "r%C3%B4le%2Creader",
        "X-Auth-Roles-Encoding": "percent",
        "X-Auth-Email": "Jos%C3%A9.M%C3%BCller%40b%C3%BCcher.example",
        "X-Auth-Email-Encoding": "percent",
    }
    client = client_for(identity_app(IdentitySettings(claim_headers={"email": "X-Auth-Email"})))
    body = client.get("/me", headers=headers).json()
    assert body["subject"] == "Zo\u00eb"
    assert body["roles"] == ["reader", "r\u00f4le"]
    assert body["claims"] == {"email": "Jos\u00e9.M\u00fcller@b\u00fccher.example"}


def test_without_the_sibling_a_value_is_taken_as_it_is() -> None:
    body = client_for(identity_app()).get("/me", headers={"X-Auth-Subject": "a%41"}).json()
    assert body["subject"] == "a%41"


@pytest.mark.parametrize(
    ("headers", "slug"),
    [
        ({"X-Auth-Subject": "alice", "X-Auth-Subject-Encoding": "none"}, "malformed-identity"),
        ({"X-Auth-Subject": "alice", "X-Auth-Roles-Encoding": "percent"}, "malformed-identity"),
        ({"X-Auth-Subject": "%FF%FE", "X-Auth-Subject-Encoding": "percent"}, "malformed-identity"),
        ({"X-Auth-Subject": "alice%0D%0AX-Auth-Roles: admin", "X-Auth-Subject-Encoding": "percent"}, "malformed-identity"),
        (
            [("X-Auth-Subject", "alice"), ("X-Auth-Subject-Encoding", "percent"), ("X-Auth-Subject-Encoding", "percent")],
            "ambiguous-identity",
        ),
    ],
)
def test_an_encoding_the_sidecar_never_sends_is_refused(headers, slug: str) -> None:  # noqa: ANN001
    response = client_for(identity_app()).get("/me", headers=headers)
    assert response.status_code == 401
    assert problem(response)["type"] == f"https://portcullis.dev/problems/{slug}"
