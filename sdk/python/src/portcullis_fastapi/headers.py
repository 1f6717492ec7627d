"""The identity from the sidecar's plain identity headers (`spec.identityHeaders`).

The sidecar removes every client-sent copy of these headers, in every spelling, and sets each once;
two copies mean the request did not come from the sidecar alone, so it is refused, never guessed at.
"""

from __future__ import annotations

from starlette.datastructures import Headers

from . import problems
from .identity import Identity
from .settings import IdentitySettings


def _single(headers: Headers, name: str) -> str | None:
    values = headers.getlist(name)
    if len(values) > 1:
        raise problems.ambiguous_identity()
    return values[0] if values else None


def identity_from_headers(headers: Headers, settings: IdentitySettings) -> Identity:
    subject = _single(headers, settings.subject_header)
    if subject is None or not subject.strip():
        raise problems.no_identity()
    roles = _single(headers, settings.roles_header) or ""
    scopes = _single(headers, settings.scopes_header) or ""
    claims: dict[str, str] = {}
    for claim, header in settings.claim_headers.items():
        value = _single(headers, header)
        if value is not None:
            claims[claim] = value
    return Identity(
        subject=subject,
        roles=frozenset(role.strip() for role in roles.split(",") if role.strip()),
        scopes=frozenset(scopes.split()),
        client_id=_single(headers, settings.client_id_header),
        issuer=_single(headers, settings.issuer_header),
        claims=claims,
        source="headers",
    )
