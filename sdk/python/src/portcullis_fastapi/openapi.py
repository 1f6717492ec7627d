"""Per-route requirements in the OpenAPI document: `x-portcullis-roles` and `x-portcullis-scopes` on each
operation, and a line in its description (what /docs shows). The security scheme itself comes from the
`sidecar_bearer` dependency, which FastAPI declares on its own."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, routing
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from .requirements import Requirement


def route_requirements(dependant: Dependant) -> list[Requirement]:
    """Every Requirement a route depends on, directly or through other dependencies, in order."""
    found: list[Requirement] = []
    pending = list(dependant.dependencies)
    while pending:
        sub = pending.pop(0)
        if isinstance(sub.call, Requirement) and sub.call not in found:
            found.append(sub.call)
        pending.extend(sub.dependencies)
    return found


def _names(values: Iterable[str]) -> str:
    return ", ".join(f"`{value}`" for value in values)


def describe(requirements: list[Requirement]) -> str:
    parts = []
    for requirement in requirements:
        if requirement.kind == "allRoles":
            parts.append(f"all of the roles {_names(requirement.values)}")
        elif requirement.kind == "anyRole":
            parts.append(f"one of the roles {_names(requirement.values)}")
        else:
            parts.append(f"the scopes {_names(requirement.values)}")
    return "**Portcullis:** needs " + "; and ".join(parts) + "."


def api_routes(routes: Iterable[Any]) -> Iterable[Any]:
    """Each API route with its effective path and dependencies (router-level ones included).

    FastAPI from 0.16x keeps included routers nested and offers `iter_route_contexts` to walk them with
    their prefixes; earlier versions copy every route into `app.routes`.
    """
    iter_route_contexts = getattr(routing, "iter_route_contexts", None)
    if iter_route_contexts is None:
        return [route for route in routes if isinstance(route, APIRoute)]
    return [context for context in iter_route_contexts(list(routes)) if isinstance(context.original_route, APIRoute)]


def annotate(schema: dict[str, Any], routes: Iterable[Any]) -> None:
    paths = schema.get("paths", {})
    for route in api_routes(routes):
        if not route.include_in_schema:
            continue
        requirements = route_requirements(route.dependant)
        if not requirements:
            continue
        roles = [{r.kind: list(r.values)} for r in requirements if r.kind != "scopes"]
        scopes = sorted({scope for r in requirements if r.kind == "scopes" for scope in r.values})
        for method in route.methods or ():
            operation = paths.get(route.path_format, {}).get(method.lower())
            if operation is None:
                continue
            if roles:
                operation["x-portcullis-roles"] = roles
            if scopes:
                operation["x-portcullis-scopes"] = scopes
            line = describe(requirements)
            description = operation.get("description")
            operation["description"] = f"{description}\n\n{line}" if description else line


def install_openapi(app: FastAPI) -> None:
    """Wraps `app.openapi` (FastAPI's documented way to change the schema); idempotent."""
    if getattr(app.openapi, "_portcullis", False):
        return
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            annotate(generate(), app.routes)
        return app.openapi_schema or {}

    openapi._portcullis = True  # type: ignore[attr-defined]
    app.openapi = openapi  # type: ignore[method-assign]
    app.openapi_schema = None
