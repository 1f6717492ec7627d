"""The sidecar's signed identity assertion (proxy/assertion.ts): a JWT signed with Ed25519, `typ`
`portcullis-assertion+jwt`, `iss` "portcullis", `aud` the AccessPolicy's name, carrying `sub`,
`client_id`, `roles`, `scope` and `idp` (the token's issuer). Verified with PyJWT, EdDSA only."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import jwt

from . import problems
from .identity import Identity
from .settings import AssertionSettings

logger = logging.getLogger("portcullis_fastapi")

ASSERTION_TYPE = "portcullis-assertion+jwt"
ASSERTION_ISSUER = "portcullis"
# A compact JWS: the sidecar's are well under 2 KiB; a huge header is not worth parsing.
_MAX_LENGTH = 16 * 1024


def assertion_key_id(token: str) -> str:
    """The `kid` of a well-formed assertion header; anything else is an invalid assertion."""
    if len(token) > _MAX_LENGTH or token.count(".") != 2:
        raise _invalid("not a compact JWS")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise _invalid("unreadable header") from None
    if header.get("alg") != "EdDSA":
        raise _invalid(f"alg {header.get('alg')!r}, expected EdDSA")
    if header.get("typ") != ASSERTION_TYPE:
        raise _invalid(f"typ {header.get('typ')!r}, expected {ASSERTION_TYPE}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _invalid("no kid")
    return kid


def verify_assertion(token: str, key: jwt.PyJWK, settings: AssertionSettings) -> Identity:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=["EdDSA"],
            audience=settings.audience,
            issuer=ASSERTION_ISSUER,
            leeway=settings.leeway_seconds,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
    except jwt.PyJWTError as error:
        raise _invalid(str(error)) from None
    except (OverflowError, ValueError, TypeError) as error:
        # A signed but absurd NumericDate (1e400, a list): refused, never a 500. PyJWT 2.15 turns these into
        # DecodeError itself, but 2.8-2.12 (pyproject allows >=2.8) let int()'s OverflowError/TypeError out.
        raise _invalid(f"bad claim value ({error})") from None
    subject = claims.get("sub")
    roles = claims.get("roles", [])
    scope = claims.get("scope", "")
    client_id = claims.get("client_id")
    issuer = claims.get("idp")
    if (
        not isinstance(subject, str)
        or not subject
        or not isinstance(roles, list)
        or not all(isinstance(role, str) for role in roles)
        or not isinstance(scope, str)
        or not (client_id is None or isinstance(client_id, str))
        or not (issuer is None or isinstance(issuer, str))
    ):
        raise _invalid("claims of the wrong type")
    return Identity(
        subject=subject,
        roles=frozenset(roles),
        scopes=frozenset(scope.split()),
        client_id=client_id,
        issuer=issuer,
        claims=claims,
        source="assertion",
    )


class VerifiedAssertions:
    """Identities of assertions already verified, by value, until their `exp`.

    The sidecar hands a repeated token the same assertion until half its lifetime has passed, so most
    requests carry one seen before: a dict lookup instead of an Ed25519 check. Bounded; oldest out first.
    """

    def __init__(self, max_entries: int = 1024, clock: Callable[[], float] = time.time) -> None:
        self._entries: dict[str, tuple[Identity, float]] = {}
        self._max = max_entries
        self._clock = clock

    def get(self, token: str) -> Identity | None:
        hit = self._entries.get(token)
        if hit is None:
            return None
        if self._clock() >= hit[1]:
            self._entries.pop(token, None)
            return None
        return hit[0]

    def put(self, token: str, identity: Identity) -> None:
        expires = identity.claims.get("exp")
        if not isinstance(expires, int):
            return
        while len(self._entries) >= self._max:
            self._entries.pop(next(iter(self._entries)), None)
        self._entries[token] = (identity, float(expires))


def _invalid(reason: str) -> problems.IdentityProblem:
    logger.info("portcullis: identity assertion refused: %s", reason)
    return problems.invalid_assertion()
