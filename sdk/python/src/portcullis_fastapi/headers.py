"""The identity from the sidecar's plain identity headers (`spec.identityHeaders`).

The sidecar removes every client-sent copy of these headers, in every spelling, and sets each once;
two copies mean the request did not come from the sidecar alone, so it is refused, never guessed at.
A value beyond visible ASCII (a UTF-8 name or email) comes percent-encoded (UTF-8) with a sibling
`<name>-Encoding: percent` (proxy/headers.ts), and is decoded here.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from starlette.datastructures import Headers

from . import problems
from .identity import Identity
from .settings import IdentitySettings


ENCODING_SUFFIX = "-Encoding"
# The sidecar refuses a token whose claims carry these rather than send them.
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


def _single(headers: Headers, name: str) -> str | None:
    values = headers.getlist(name)
    encodings = headers.getlist(name + ENCODING_SUFFIX)
    if len(values) > 1 or len(encodings) > 1:
        raise problems.ambiguous_identity()
    value = values[0] if values else None
    if not encodings:
        return value
    if value is None or encodings[0] != "percent":
        raise problems.malformed_identity()
    try:
        decoded = unquote(value, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise problems.malformed_identity() from None
    if _CONTROL_CHARACTER.search(decoded):
        raise problems.malformed_identity()
    return decoded


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
