"""The sidecar's assertion keys, fetched from its admin listener's `/jwks.json` and cached by key id.

The sidecar makes a new Ed25519 key every time it starts, so an unknown key id means "refetch": but at
most once per cool-down, so a stream of assertions with made-up key ids costs one fetch, not one each.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import jwt

logger = logging.getLogger("portcullis_fastapi")

# The sidecar serves one small key; anything this large is not its key set.
_MAX_BODY = 64 * 1024


class KeysUnavailable(Exception):
    """The key set could not be fetched or is not a key set."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # The admin listener never redirects; following one would trust keys from elsewhere.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


class SidecarKeys:
    """Ed25519 public keys by `kid`. `lookup` blocks while it fetches: call it from a worker thread."""

    def __init__(
        self,
        url: str,
        *,
        cooldown_seconds: float = 5.0,
        timeout_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._cooldown = cooldown_seconds
        self._timeout = timeout_seconds
        self._clock = clock
        self._keys: Mapping[str, jwt.PyJWK] = {}
        self._lock = threading.Lock()
        self._last_attempt: float | None = None
        self._last_error: str | None = None

    def cached(self, kid: str) -> jwt.PyJWK | None:
        """The key if it is already known; never fetches."""
        return self._keys.get(kid)

    def lookup(self, kid: str) -> jwt.PyJWK | None:
        """The key for `kid`, refetching the set when it is unknown and the cool-down has passed.

        None: the key set does not have it. Raises KeysUnavailable when the set cannot be fetched.
        """
        key = self._keys.get(kid)
        if key is not None:
            return key
        with self._lock:
            key = self._keys.get(kid)
            if key is not None:
                return key
            now = self._clock()
            if self._last_attempt is not None and now - self._last_attempt < self._cooldown:
                if self._last_error is not None:
                    raise KeysUnavailable(self._last_error)
                return None
            self._last_attempt = now
            try:
                self._keys = self._fetch()
            except KeysUnavailable as error:
                # Keys fetched earlier stay in use; only the unknown kid fails.
                self._last_error = str(error)
                logger.error("portcullis: cannot fetch the sidecar's assertion keys from %s: %s", self.url, error)
                raise
            self._last_error = None
            return self._keys.get(kid)

    def _fetch(self) -> dict[str, jwt.PyJWK]:
        try:
            with _opener.open(self.url, timeout=self._timeout) as response:
                if response.status != 200:
                    raise KeysUnavailable(f"HTTP {response.status}")
                body = response.read(_MAX_BODY + 1)
        except urllib.error.HTTPError as error:
            raise KeysUnavailable(f"HTTP {error.code}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise KeysUnavailable(f"unreachable ({reason})") from None
        if len(body) > _MAX_BODY:
            raise KeysUnavailable(f"key set larger than {_MAX_BODY} bytes")
        try:
            document = json.loads(body)
        except ValueError:
            raise KeysUnavailable("not JSON") from None
        keys = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(keys, list):
            raise KeysUnavailable("not a JWK set (no keys array)")
        usable: dict[str, jwt.PyJWK] = {}
        for entry in keys:
            # Only what the sidecar signs with: Ed25519 signing keys with a key id.
            if not (
                isinstance(entry, dict)
                and entry.get("kty") == "OKP"
                and entry.get("crv") == "Ed25519"
                and entry.get("alg", "EdDSA") == "EdDSA"
                and entry.get("use", "sig") == "sig"
                and isinstance(entry.get("kid"), str)
            ):
                continue
            try:
                usable[entry["kid"]] = jwt.PyJWK(entry, algorithm="EdDSA")
            except jwt.PyJWTError:
                continue
        if not usable:
            raise KeysUnavailable("no Ed25519 signing key in the set")
        return usable
