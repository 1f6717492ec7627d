"""require_roles (all of), require_any_role (one of), require_scopes: 403 unless the identity holds them."""

from __future__ import annotations

import pytest
from conftest import client_for, identity_app, problem
from fastapi import APIRouter, Depends, FastAPI

from portcullis_fastapi import Identity, require_any_role, require_roles, require_scopes


def routes(app: FastAPI) -> None:
    @app.delete("/orders/{order_id}", dependencies=[Depends(require_roles("admin", "writer"))])
    def delete(order_id: int) -> dict[str, int]:
        return {"deleted": order_id}

    @app.get("/orders")
    def orders(identity: Identity = Depends(require_any_role("reader", "admin"))) -> dict[str, str]:
        return {"for": identity.subject}

    @app.get("/reports", dependencies=[Depends(require_scopes("reports.read"))])
    def reports() -> dict[str, bool]:
        return {"ok": True}

    router = APIRouter(prefix="/admin", dependencies=[Depends(require_roles("admin"))])

    @router.get("/stats")
    def stats() -> dict[str, bool]:
        return {"ok": True}

    app.include_router(router)


def call(method: str, path: str, roles: str = "", scopes: str = "") -> tuple[int, dict]:
    headers = {"X-Auth-Subject": "alice", "X-Auth-Roles": roles, "X-Auth-Scopes": scopes}
    response = client_for(identity_app(extra=routes)).request(method, path, headers=headers)
    return response.status_code, response.json()


def test_require_roles_needs_every_role() -> None:
    assert call("DELETE", "/orders/1", roles="admin,writer") == (200, {"deleted": 1})
    status, body = call("DELETE", "/orders/1", roles="admin")
    assert status == 403
    assert body["type"] == "https://portcullis.dev/problems/missing-roles"
    # The refusal does not tell the caller which roles the route wants.
    assert "admin" not in body["detail"] and "writer" not in body["detail"]


def test_require_any_role_needs_one_and_passes_the_identity_on() -> None:
    assert call("GET", "/orders", roles="reader") == (200, {"for": "alice"})
    assert call("GET", "/orders", roles="admin") == (200, {"for": "alice"})
    assert call("GET", "/orders", roles="writer")[0] == 403
    assert call("GET", "/orders")[0] == 403


def test_require_scopes_reads_the_tokens_scopes_not_its_roles() -> None:
    assert call("GET", "/reports", scopes="orders.read reports.read") == (200, {"ok": True})
    status, body = call("GET", "/reports", roles="reports.read")
    assert status == 403
    assert body["type"] == "https://portcullis.dev/problems/insufficient-scope"


def test_router_level_requirements_apply_to_every_route() -> None:
    assert call("GET", "/admin/stats", roles="admin") == (200, {"ok": True})
    assert call("GET", "/admin/stats", roles="reader")[0] == 403


def test_roles_are_exact_names() -> None:
    # "Admin" is not "admin", and a role is not a prefix of another.
    assert call("GET", "/admin/stats", roles="Admin,administrator")[0] == 403


def test_without_an_identity_a_requirement_answers_401_not_403() -> None:
    response = client_for(identity_app(extra=routes)).delete("/orders/1")
    assert response.status_code == 401
    assert problem(response)["type"] == "https://portcullis.dev/problems/no-identity"


@pytest.mark.parametrize("make", [require_roles, require_any_role, require_scopes])
def test_a_requirement_must_name_something(make) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="name at least one"):
        make()
    with pytest.raises(ValueError, match="non-empty"):
        make("admin", " ")
