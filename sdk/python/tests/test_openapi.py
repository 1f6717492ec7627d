"""The OpenAPI document: the bearer scheme the sidecar checks, and each route's roles and scopes."""

from __future__ import annotations

from typing import Any

from conftest import client_for, identity_app
from fastapi import APIRouter, Depends, FastAPI

from portcullis_fastapi import require_any_role, require_roles, require_scopes, setup


def routes(app: FastAPI) -> None:
    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.delete("/orders/{order_id}", dependencies=[Depends(require_roles("admin"))])
    def delete_order(order_id: int) -> dict[str, int]:
        """Deletes an order for good."""
        return {"deleted": order_id}

    @app.get(
        "/orders",
        dependencies=[Depends(require_any_role("reader", "admin")), Depends(require_scopes("orders.read"))],
    )
    def list_orders() -> list[int]:
        return []

    router = APIRouter(prefix="/admin", dependencies=[Depends(require_roles("admin", "auditor"))])

    @router.get("/stats")
    def stats() -> dict[str, int]:
        return {}

    app.include_router(router)


def document() -> dict[str, Any]:
    response = client_for(identity_app(extra=routes)).get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def test_declares_the_bearer_scheme_the_sidecar_verifies() -> None:
    scheme = document()["components"]["securitySchemes"]["Portcullis"]
    assert scheme["type"] == "http"
    assert scheme["scheme"] == "bearer"
    assert scheme["bearerFormat"] == "JWT"
    assert "sidecar" in scheme["description"]


def test_protected_routes_carry_the_scheme_and_their_roles_public_ones_nothing() -> None:
    paths = document()["paths"]
    delete = paths["/orders/{order_id}"]["delete"]
    assert delete["security"] == [{"Portcullis": []}]
    assert delete["x-portcullis-roles"] == [{"allRoles": ["admin"]}]
    assert delete["description"] == "Deletes an order for good.\n\n**Portcullis:** needs all of the roles `admin`."

    listing = paths["/orders"]["get"]
    assert listing["x-portcullis-roles"] == [{"anyRole": ["reader", "admin"]}]
    assert listing["x-portcullis-scopes"] == ["orders.read"]
    assert listing["description"] == (
        "**Portcullis:** needs one of the roles `reader`, `admin`; and the scopes `orders.read`."
    )

    assert paths["/admin/stats"]["get"]["x-portcullis-roles"] == [{"allRoles": ["admin", "auditor"]}]

    health = paths["/healthz"]["get"]
    assert "security" not in health and "x-portcullis-roles" not in health and "description" not in health

    # current_identity alone: the scheme, no roles.
    me = paths["/me"]["get"]
    assert me["security"] == [{"Portcullis": []}]
    assert "x-portcullis-roles" not in me


def test_docs_page_is_served_and_the_document_is_built_once() -> None:
    app = identity_app(extra=routes)
    client = client_for(app)
    assert client.get("/docs").status_code == 200
    first = client.get("/openapi.json").json()
    assert app.openapi() is app.openapi()
    assert client.get("/openapi.json").json() == first


def test_setup_twice_annotates_once() -> None:
    app = identity_app(extra=routes)
    setup(app)
    description = client_for(app).get("/openapi.json").json()["paths"]["/orders/{order_id}"]["delete"]["description"]
    assert description.count("**Portcullis:**") == 1
