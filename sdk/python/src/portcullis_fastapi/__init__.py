"""FastAPI dependencies for apps behind the Portcullis sidecar.

    from portcullis_fastapi import Identity, current_identity, require_roles, setup
"""

from .app_setup import setup
from .assertion import ASSERTION_ISSUER, ASSERTION_TYPE
from .dependencies import PortcullisState, current_identity, sidecar_bearer
from .development import DEV_IDENTITY_ENV, DevIdentityRefused
from .identity import Identity, IdentitySource
from .problems import PROBLEM_TYPE_BASE, IdentityProblem
from .requirements import Requirement, require_any_role, require_roles, require_scopes
from .settings import DEFAULT_JWKS_URL, AssertionSettings, IdentitySettings
from .sidecar_keys import KeysUnavailable, SidecarKeys

__version__ = "0.1.0"

__all__ = [
    "ASSERTION_ISSUER",
    "ASSERTION_TYPE",
    "DEFAULT_JWKS_URL",
    "DEV_IDENTITY_ENV",
    "PROBLEM_TYPE_BASE",
    "AssertionSettings",
    "DevIdentityRefused",
    "Identity",
    "IdentityProblem",
    "IdentitySettings",
    "IdentitySource",
    "KeysUnavailable",
    "PortcullisState",
    "Requirement",
    "SidecarKeys",
    "current_identity",
    "require_any_role",
    "require_roles",
    "require_scopes",
    "setup",
    "sidecar_bearer",
]
