"""Where the identity comes from: the header names of the policy's `spec.identityHeaders`, and the
signed assertion when the policy asks for one. Defaults are the policy schema's defaults."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

# An HTTP field name (RFC 9110 section 5.6.2, token), as the policy schema accepts it.
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,256}$")

DEFAULT_JWKS_URL = "http://127.0.0.1:9901/jwks.json"
"""The sidecar's admin listener in the same pod (`spec.sidecar.adminPort`, default 9901)."""

ENV_PREFIX = "PORTCULLIS_"


def _header(name: str, what: str) -> str:
    if not isinstance(name, str) or not _HEADER_NAME.match(name):
        raise ValueError(f"{what}: not an HTTP header name: {name!r}")
    return name


def _positive(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{what}: expected a number >= 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class AssertionSettings:
    """Verify the sidecar's signed identity assertion (`spec.identityHeaders.assertion`).

    With these settings a request without a valid assertion gets 401, whatever identity headers it
    carries: a request that reached the app without passing through the sidecar has none.
    """

    audience: str
    """The AccessPolicy's `metadata.name`: the assertion's `aud`."""
    header: str = "X-Auth-Assertion"
    jwks_url: str = DEFAULT_JWKS_URL
    """`http://127.0.0.1:<spec.sidecar.adminPort>/jwks.json`."""
    leeway_seconds: float = 5.0
    """Clock skew allowed on `exp` and `iat` (the sidecar and the app share the pod's clock)."""
    refetch_cooldown_seconds: float = 5.0
    """An unknown key id refetches the key set at most this often (a restarted sidecar has a new key)."""
    fetch_timeout_seconds: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.audience, str) or not self.audience.strip():
            raise ValueError("assertion audience: expected the AccessPolicy's metadata.name, got an empty value")
        _header(self.header, "assertion header")
        url = urlsplit(self.jwks_url) if isinstance(self.jwks_url, str) else None
        if url is None or url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"jwks_url: expected an http(s) URL, got {self.jwks_url!r}")
        _positive(self.leeway_seconds, "leeway_seconds")
        _positive(self.refetch_cooldown_seconds, "refetch_cooldown_seconds")
        if _positive(self.fetch_timeout_seconds, "fetch_timeout_seconds") == 0:
            raise ValueError("fetch_timeout_seconds: must be more than 0")


@dataclass(frozen=True)
class IdentitySettings:
    """The names of the identity headers (`spec.identityHeaders` of the AccessPolicy)."""

    subject_header: str = "X-Auth-Subject"
    roles_header: str = "X-Auth-Roles"
    """Comma-separated role names."""
    scopes_header: str = "X-Auth-Scopes"
    """Space-separated scopes."""
    client_id_header: str = "X-Auth-Client-Id"
    issuer_header: str = "X-Auth-Issuer"
    claim_headers: Mapping[str, str] = field(default_factory=dict)
    """`spec.identityHeaders.claims`: claim name -> header name (read in header mode only)."""
    assertion: AssertionSettings | None = None
    """When set, the identity comes from the verified assertion instead of the plain headers."""

    def __post_init__(self) -> None:
        for attribute in ("subject_header", "roles_header", "scopes_header", "client_id_header", "issuer_header"):
            _header(getattr(self, attribute), attribute)
        if not isinstance(self.claim_headers, Mapping):
            raise ValueError("claim_headers: expected a mapping of claim name to header name")
        for claim, header in self.claim_headers.items():
            if not isinstance(claim, str) or not claim:
                raise ValueError(f"claim_headers: not a claim name: {claim!r}")
            _header(header, f"claim_headers[{claim!r}]")
        object.__setattr__(self, "claim_headers", dict(self.claim_headers))
        if self.assertion is not None and not isinstance(self.assertion, AssertionSettings):
            raise ValueError("assertion: expected AssertionSettings")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **defaults: Any) -> IdentitySettings:
        """Settings from `PORTCULLIS_*` variables, falling back to `defaults`, then to the schema's.

        PORTCULLIS_SUBJECT_HEADER, _ROLES_HEADER, _SCOPES_HEADER, _CLIENT_ID_HEADER, _ISSUER_HEADER;
        PORTCULLIS_CLAIM_HEADERS (`email=X-Auth-Email,name=X-Auth-Name`); PORTCULLIS_ASSERTION_AUDIENCE
        (set: the assertion is required), PORTCULLIS_ASSERTION_HEADER, PORTCULLIS_JWKS_URL.
        """
        env = os.environ if environ is None else environ

        def read(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name)
            return value.strip() if value is not None and value.strip() else None

        values = dict(defaults)
        for attribute, variable in (
            ("subject_header", "SUBJECT_HEADER"),
            ("roles_header", "ROLES_HEADER"),
            ("scopes_header", "SCOPES_HEADER"),
            ("client_id_header", "CLIENT_ID_HEADER"),
            ("issuer_header", "ISSUER_HEADER"),
        ):
            value = read(variable)
            if value is not None:
                values[attribute] = value
        claims = read("CLAIM_HEADERS")
        if claims is not None:
            values["claim_headers"] = _parse_claim_headers(claims)
        base = values.get("assertion")
        base = base if isinstance(base, AssertionSettings) else None
        options: dict[str, Any] = {}
        for attribute, variable in (
            ("audience", "ASSERTION_AUDIENCE"),
            ("header", "ASSERTION_HEADER"),
            ("jwks_url", "JWKS_URL"),
        ):
            value = read(variable)
            if value is not None:
                options[attribute] = value
        if options:
            if base is not None:
                # The variables override their fields only: leeway, cooldown, timeout stay the caller's.
                values["assertion"] = replace(base, **options)
            elif "audience" in options:
                values["assertion"] = AssertionSettings(**options)
            else:
                # Half an assertion configuration must not quietly fall back to trusting plain headers.
                variable = "ASSERTION_HEADER" if "header" in options else "JWKS_URL"
                raise ValueError(
                    f"{ENV_PREFIX}{variable} is set but {ENV_PREFIX}ASSERTION_AUDIENCE is not: "
                    "set it to the AccessPolicy's metadata.name to require the signed assertion"
                )
        return cls(**values)


def _parse_claim_headers(text: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in text.split(","):
        claim, separator, header = item.partition("=")
        if not separator or not claim.strip() or not header.strip():
            raise ValueError(f"{ENV_PREFIX}CLAIM_HEADERS: expected claim=Header-Name[,...], got {item.strip()!r}")
        pairs[claim.strip()] = header.strip()
    return pairs
