"""Local development without the sidecar: PORTCULLIS_DEV_IDENTITY holds the identity every request
gets. Off unless set; a WARNING at start and on every request; refused where it looks like a pod."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from .identity import Identity

DEV_IDENTITY_ENV = "PORTCULLIS_DEV_IDENTITY"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class DevIdentityRefused(RuntimeError):
    """PORTCULLIS_DEV_IDENTITY is set where it must never be, or is not a valid identity."""


def pod_evidence(environ: Mapping[str, str]) -> str | None:
    """Why this process looks like it runs in a Kubernetes pod, or None."""
    if environ.get("KUBERNETES_SERVICE_HOST"):
        return "KUBERNETES_SERVICE_HOST is set"
    if os.path.isdir(SERVICE_ACCOUNT_DIR):
        return f"{SERVICE_ACCOUNT_DIR} exists"
    return None


def dev_identity_from_env(environ: Mapping[str, str] | None = None) -> Identity | None:
    """The development identity, None when PORTCULLIS_DEV_IDENTITY is unset or empty.

    Raises DevIdentityRefused in a pod, or when the value is not a JSON object with a string `sub`.
    """
    env = os.environ if environ is None else environ
    raw = env.get(DEV_IDENTITY_ENV, "")
    if not raw.strip():
        return None
    evidence = pod_evidence(env)
    if evidence is not None:
        raise DevIdentityRefused(
            f"{DEV_IDENTITY_ENV} is set, but this process looks like a Kubernetes pod ({evidence}): "
            "refusing to give every request a made-up identity. It is for a laptop only; unset it."
        )
    try:
        claims = json.loads(raw)
    except ValueError as error:
        raise DevIdentityRefused(f"{DEV_IDENTITY_ENV}: not JSON ({error})") from None
    if not isinstance(claims, dict):
        raise DevIdentityRefused(f'{DEV_IDENTITY_ENV}: expected a JSON object such as {{"sub": "dev", "roles": ["admin"]}}')
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise DevIdentityRefused(f'{DEV_IDENTITY_ENV}: "sub" must be a non-empty string')
    roles = claims.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        raise DevIdentityRefused(f'{DEV_IDENTITY_ENV}: "roles" must be a list of strings')
    scopes = claims.get("scopes", claims.get("scope", []))
    if isinstance(scopes, str):
        scopes = scopes.split()
    if not isinstance(scopes, list) or not all(isinstance(scope, str) for scope in scopes):
        raise DevIdentityRefused(f'{DEV_IDENTITY_ENV}: "scope" must be a space-separated string or a list')
    for name in ("client_id", "iss"):
        if claims.get(name) is not None and not isinstance(claims[name], str):
            raise DevIdentityRefused(f'{DEV_IDENTITY_ENV}: "{name}" must be a string')
    return Identity(
        subject=subject,
        roles=frozenset(roles),
        scopes=frozenset(scopes),
        client_id=claims.get("client_id"),
        issuer=claims.get("iss"),
        claims=claims,
        source="development",
    )
