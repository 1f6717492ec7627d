"""Refusals as RFC 9457 problem+json, in the sidecar's vocabulary (`https://portcullis.dev/problems/...`).
Details are fixed sentences: never a key id, an assertion, or the roles a route needs."""

from __future__ import annotations

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse

PROBLEM_TYPE_BASE = "https://portcullis.dev/problems/"


class IdentityProblem(HTTPException):
    """Raised by the dependencies; `setup()` renders it as problem+json (plain FastAPI: `{"detail"}`)."""

    def __init__(self, status_code: int, slug: str, title: str, detail: str, challenge: str | None = None) -> None:
        super().__init__(
            status_code=status_code,
            detail=detail,
            headers=None if challenge is None else {"WWW-Authenticate": challenge},
        )
        self.type = PROBLEM_TYPE_BASE + slug
        self.title = title


def no_identity() -> IdentityProblem:
    return IdentityProblem(
        401, "no-identity", "Unauthorized", "The request carries no identity from the Portcullis sidecar.", "Bearer"
    )


def ambiguous_identity() -> IdentityProblem:
    return IdentityProblem(
        401, "ambiguous-identity", "Unauthorized", "The request carries an identity header more than once.", "Bearer"
    )


def malformed_identity() -> IdentityProblem:
    return IdentityProblem(
        401, "malformed-identity", "Unauthorized", "The request's identity headers are malformed.", "Bearer"
    )


def no_assertion() -> IdentityProblem:
    return IdentityProblem(
        401,
        "no-assertion",
        "Unauthorized",
        "The request carries no identity assertion from the Portcullis sidecar.",
        "Bearer",
    )


def invalid_assertion() -> IdentityProblem:
    return IdentityProblem(
        401,
        "invalid-assertion",
        "Unauthorized",
        "The identity assertion is invalid or expired.",
        'Bearer error="invalid_token"',
    )


def keys_unavailable() -> IdentityProblem:
    return IdentityProblem(
        503,
        "assertion-keys-unavailable",
        "Service Unavailable",
        "The identity assertion cannot be checked right now.",
    )


def missing_roles() -> IdentityProblem:
    return IdentityProblem(
        403,
        "missing-roles",
        "Forbidden",
        "The identity does not hold the roles this route needs.",
        'Bearer error="insufficient_scope"',
    )


def missing_scopes() -> IdentityProblem:
    return IdentityProblem(
        403,
        "insufficient-scope",
        "Forbidden",
        "The token does not grant the scopes this route needs.",
        'Bearer error="insufficient_scope"',
    )


async def problem_response(request: Request, exc: IdentityProblem) -> JSONResponse:
    """The exception handler `setup()` installs for IdentityProblem (so Starlette passes only those)."""
    body = {"type": exc.type, "title": exc.title, "status": exc.status_code, "detail": exc.detail}
    request_id = request.headers.get("x-request-id")
    if request_id is not None:
        body["requestId"] = request_id
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers, media_type="application/problem+json")
