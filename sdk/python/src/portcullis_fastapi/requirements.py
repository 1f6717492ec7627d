"""`require_roles`, `require_any_role`, `require_scopes`: 403 unless the identity holds what a route needs."""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import Depends

from . import problems
from .dependencies import current_identity
from .identity import Identity

logger = logging.getLogger("portcullis_fastapi")

RequirementKind = Literal["allRoles", "anyRole", "scopes"]


class Requirement:
    """A dependency that passes the identity on when it holds what the route needs, else 403."""

    def __init__(self, kind: RequirementKind, values: tuple[str, ...]) -> None:
        if not values:
            raise ValueError(f"{kind}: name at least one")
        for value in values:
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{kind}: expected non-empty strings, got {value!r}")
        self.kind: RequirementKind = kind
        self.values = values

    async def __call__(self, identity: Identity = Depends(current_identity)) -> Identity:
        if self.kind == "allRoles":
            missing = [role for role in self.values if role not in identity.roles]
            if missing:
                logger.info("portcullis: %s lacks roles %s", identity.subject, missing)
                raise problems.missing_roles()
        elif self.kind == "anyRole":
            if not any(role in identity.roles for role in self.values):
                logger.info("portcullis: %s holds none of the roles %s", identity.subject, list(self.values))
                raise problems.missing_roles()
        else:
            missing = [scope for scope in self.values if scope not in identity.scopes]
            if missing:
                logger.info("portcullis: %s lacks scopes %s", identity.subject, missing)
                raise problems.missing_scopes()
        return identity

    def __repr__(self) -> str:
        return f"Requirement({self.kind}={list(self.values)!r})"


def require_roles(*roles: str) -> Requirement:
    """Every one of `roles` (the policy's role names, as in `allRoles`); 403 otherwise."""
    return Requirement("allRoles", roles)


def require_any_role(*roles: str) -> Requirement:
    """At least one of `roles` (as in the policy's `anyRole`); 403 otherwise."""
    return Requirement("anyRole", roles)


def require_scopes(*scopes: str) -> Requirement:
    """Every one of the token's `scopes` (OAuth2 scope strings); 403 otherwise."""
    return Requirement("scopes", scopes)
