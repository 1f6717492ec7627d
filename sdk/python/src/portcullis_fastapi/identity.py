"""The caller's identity as the sidecar verified it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

IdentitySource = Literal["headers", "assertion", "development"]


@dataclass(frozen=True)
class Identity:
    """Who is calling: the verified token's subject, the roles the policy mapped it to, its scopes."""

    subject: str
    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    client_id: str | None = None
    issuer: str | None = None
    """The token issuer (the IdP), not the sidecar."""
    claims: Mapping[str, Any] = field(default_factory=dict)
    """Header mode: the configured claim headers. Assertion mode: the verified assertion's claims."""
    source: IdentitySource = "headers"
    """Where this identity was read: plain headers, the verified assertion, or the development mode."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (roles and scopes sorted)."""
        return {
            "subject": self.subject,
            "roles": sorted(self.roles),
            "scopes": sorted(self.scopes),
            "client_id": self.client_id,
            "issuer": self.issuer,
            "claims": dict(self.claims),
            "source": self.source,
        }
