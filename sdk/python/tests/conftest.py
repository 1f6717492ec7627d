"""Shared parts: an Ed25519 signer that issues assertions the way the sidecar does (proxy/assertion.ts),
a real HTTP server on loopback serving its key set as the sidecar's admin listener does, and apps."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

import portcullis_fastapi
from portcullis_fastapi import Identity, IdentitySettings, current_identity, development, setup


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """No test inherits PORTCULLIS_* or pod variables from the machine running it."""
    import os

    for name in list(os.environ):
        if name.startswith("PORTCULLIS_") or name == "KUBERNETES_SERVICE_HOST":
            monkeypatch.delenv(name)
    monkeypatch.setattr(development, "SERVICE_ACCOUNT_DIR", str(tmp_path / "no-service-account"))


class Signer:
    """One sidecar process's key: Ed25519, kid = RFC 7638 thumbprint."""

    def __init__(self) -> None:
        self.private_key = Ed25519PrivateKey.generate()
        raw = self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        thumbprint = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
        self.kid = base64.urlsafe_b64encode(hashlib.sha256(thumbprint.encode()).digest()).rstrip(b"=").decode()
        self.jwk = {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": self.kid, "alg": "EdDSA", "use": "sig"}

    def assertion(self, header: dict[str, Any] | None = None, **overrides: Any) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": "portcullis",
            "aud": "orders-api",
            "sub": "alice",
            "client_id": "reader",
            "roles": ["reader"],
            "scope": "orders.read",
            "idp": "http://127.0.0.1:9400",
            "iat": now,
            "exp": now + 60,
            "jti": str(uuid.uuid4()),
        }
        payload.update(overrides)
        for name in [k for k, v in payload.items() if v is None]:
            del payload[name]
        headers = {"kid": self.kid, "typ": "portcullis-assertion+jwt", **(header or {})}
        return jwt.encode(payload, self.private_key, algorithm="EdDSA", headers=headers)


class KeyServer:
    """The sidecar's admin listener, as far as /jwks.json goes: serves `keys`, counts fetches."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.status = 200
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.fetches += 1
                body = json.dumps({"keys": server.keys}).encode()
                self.send_response(server.status if self.path == "/jwks.json" else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def signer() -> Signer:
    return Signer()


@pytest.fixture
def key_server(signer: Signer) -> Iterator[KeyServer]:
    server = KeyServer()
    server.keys = [signer.jwk]
    yield server
    server.stop()


def identity_app(settings: IdentitySettings | None = None, extra: Callable[[FastAPI], None] | None = None) -> FastAPI:
    """An app with GET /me answering the identity, set up with `settings`."""
    app = FastAPI()
    setup(app, settings)

    @app.get("/me")
    def me(identity: Identity = Depends(current_identity)) -> dict[str, Any]:
        return identity.as_dict()

    if extra is not None:
        extra(app)
    return app


def client_for(app: FastAPI) -> TestClient:
    return TestClient(app)


def problem(response: Any) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"].startswith(portcullis_fastapi.PROBLEM_TYPE_BASE)
    assert body["status"] == response.status_code
    return body
