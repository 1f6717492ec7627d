"""`setup(app)`: where identities come from, problem+json refusals, and the OpenAPI document."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from . import problems
from .dependencies import PortcullisState
from .development import DEV_IDENTITY_ENV, dev_identity_from_env
from .openapi import install_openapi
from .settings import IdentitySettings
from .sidecar_keys import SidecarKeys

logger = logging.getLogger("portcullis_fastapi")


def setup(app: FastAPI, settings: IdentitySettings | None = None) -> PortcullisState:
    """Configure `app`: where identities come from (default: `IdentitySettings.from_env()`), problem+json
    refusals, and the security scheme and per-route roles in the OpenAPI document.

    Raises DevIdentityRefused when PORTCULLIS_DEV_IDENTITY is set inside a pod, or is malformed.
    """
    settings = IdentitySettings.from_env() if settings is None else settings
    dev_identity = dev_identity_from_env()
    if dev_identity is not None:
        logger.warning(
            "portcullis: DEVELOPMENT MODE (%s is set): every request is treated as sub=%s roles=%s, "
            "identity headers and assertions are ignored. Never run this way behind a real sidecar.",
            DEV_IDENTITY_ENV,
            dev_identity.subject,
            sorted(dev_identity.roles),
        )
    assertion = settings.assertion
    keys = (
        None
        if assertion is None
        else SidecarKeys(
            assertion.jwks_url,
            cooldown_seconds=assertion.refetch_cooldown_seconds,
            timeout_seconds=assertion.fetch_timeout_seconds,
        )
    )
    state = PortcullisState(settings=settings, keys=keys, dev_identity=dev_identity)
    app.state.portcullis = state
    app.add_exception_handler(problems.IdentityProblem, problems.problem_response)
    install_openapi(app)
    return state
