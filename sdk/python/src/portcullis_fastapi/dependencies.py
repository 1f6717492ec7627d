"""`current_identity`: the FastAPI dependency every other one builds on."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from . import problems
from .assertion import VerifiedAssertions, assertion_key_id, verify_assertion
from .development import DEV_IDENTITY_ENV
from .headers import identity_from_headers
from .identity import Identity
from .settings import IdentitySettings
from .sidecar_keys import KeysUnavailable, SidecarKeys

logger = logging.getLogger("portcullis_fastapi")

# What clients send (through the sidecar): a bearer token. Declared so /docs has an Authorize button
# and marks protected routes; the app itself never sees the token (the sidecar verified it).
sidecar_bearer = HTTPBearer(
    scheme_name="Portcullis",
    bearerFormat="JWT",
    description="An OAuth2/OIDC bearer token, verified by the Portcullis sidecar in front of this app; "
    "the app receives the caller's identity from the sidecar, never the token.",
    auto_error=False,
)


@dataclass(frozen=True)
class PortcullisState:
    settings: IdentitySettings
    keys: SidecarKeys | None
    dev_identity: Identity | None
    verified: VerifiedAssertions = field(default_factory=VerifiedAssertions)


def _state(request: Request) -> PortcullisState:
    state = getattr(request.app.state, "portcullis", None)
    if not isinstance(state, PortcullisState):
        raise RuntimeError("portcullis_fastapi.setup(app) was not called for this app")
    return state


async def current_identity(
    request: Request,
    _token: HTTPAuthorizationCredentials | None = Depends(sidecar_bearer),
) -> Identity:
    """The caller's identity: 401 when the request did not come through the sidecar with one."""
    state = _state(request)
    if state.dev_identity is not None:
        logger.warning(
            "portcullis: DEVELOPMENT MODE: %s %s answered as sub=%s (%s)",
            request.method,
            request.url.path,
            state.dev_identity.subject,
            DEV_IDENTITY_ENV,
        )
        return state.dev_identity
    assertion = state.settings.assertion
    if assertion is None or state.keys is None:
        return identity_from_headers(request.headers, state.settings)
    copies = request.headers.getlist(assertion.header)
    if not copies:
        raise problems.no_assertion()
    if len(copies) > 1:
        raise problems.ambiguous_identity()
    token = copies[0]
    seen = state.verified.get(token)
    if seen is not None:
        return seen
    kid = assertion_key_id(token)
    key = state.keys.cached(kid)
    if key is None:
        try:
            key = await run_in_threadpool(state.keys.lookup, kid)
        except KeysUnavailable:
            raise problems.keys_unavailable() from None
        if key is None:
            logger.info("portcullis: identity assertion refused: unknown key id")
            raise problems.invalid_assertion()
    identity = verify_assertion(token, key, assertion)
    state.verified.put(token, identity)
    return identity
