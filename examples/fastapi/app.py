"""orders-api: the example FastAPI service that Portcullis protects.

Every JSON answer carries an `identity` object echoing exactly what reached the app, so the
proxy's tests can prove which headers got through and which never did. `GET /me` is the app side
of Portcullis as an app team writes it: portcullis-fastapi's Identity and role check, read from the
identity headers, or from the signed assertion when PORTCULLIS_ASSERTION_AUDIENCE is set.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection

from portcullis_fastapi import Identity, IdentitySettings, require_any_role, setup

app = FastAPI(title="orders-api", version="0.1.0")
# Header names as policy.yaml sets them (its claims add X-Auth-Email); PORTCULLIS_* variables override
# them, and PORTCULLIS_ASSERTION_AUDIENCE=orders-api makes /me accept only a verified assertion.
setup(app, IdentitySettings.from_env(claim_headers={"email": "X-Auth-Email"}))

# Headers a sidecar sets or passes through; echoed with every copy so duplicates are visible.
FORWARDED = ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id", "traceparent")
CHUNK = 64 * 1024
# Byte i of every download is i % 256; CHUNK is a multiple of 256, so each chunk starts the block.
PATTERN = bytes(range(256)) * (CHUNK // 256)


def identity(conn: HTTPConnection) -> dict[str, Any]:
    raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in conn.scope["headers"]]
    auth_names = dict.fromkeys(k for k, _ in raw if k.startswith("x-auth-"))
    authorization = conn.headers.get("authorization")
    return {
        # Exact x-auth-* names, every copy in arrival order: what FastAPI code would read.
        "x_auth": {name: conn.headers.getlist(name) for name in auth_names},
        # Every header as uvicorn handed it over (names lower-cased by the server, nothing
        # folded), so spoofed variants such as x_auth_subject or x.auth.subject show up.
        # The Authorization credential is reduced to its scheme: never echo a token.
        "raw_headers": [[k, v.split(" ", 1)[0] if k == "authorization" else v] for k, v in raw],
        "forwarded": {name: conn.headers.getlist(name) for name in FORWARDED},
        "authorization": authorization.split(" ", 1)[0] if authorization is not None else None,
        "path": conn.scope["path"],
        "raw_path": conn.scope.get("raw_path", b"").decode("latin-1"),
        "query_string": conn.scope["query_string"].decode("latin-1"),
        "client": list(conn.scope["client"]) if conn.scope.get("client") else None,
        "scheme": conn.scope["scheme"],
    }


def answer(request: Request, body: dict[str, Any], status_code: int = 200) -> JSONResponse:
    return JSONResponse({**body, "identity": identity(request)}, status_code=status_code)


@app.exception_handler(StarletteHTTPException)
async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(
        {"detail": exc.detail, "identity": identity(request)},
        status_code=exc.status_code,
        headers=exc.headers,
    )


@app.exception_handler(RequestValidationError)
async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    detail = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
    return JSONResponse({"detail": detail, "identity": identity(request)}, status_code=422)


class NewOrder(BaseModel):
    item: str = Field(min_length=1, max_length=200)
    quantity: int = Field(default=1, ge=1, le=1000)


ORDERS: dict[int, dict[str, Any]] = {
    1: {"id": 1, "item": "espresso beans", "quantity": 2},
    2: {"id": 2, "item": "milk frother", "quantity": 1},
}


@app.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    return answer(request, {"status": "ok"})


@app.api_route("/orders", methods=["GET", "HEAD"])
async def list_orders(request: Request) -> JSONResponse:
    return answer(request, {"orders": list(ORDERS.values())})


@app.post("/orders")
async def create_order(request: Request, order: NewOrder) -> JSONResponse:
    order_id = max(ORDERS, default=0) + 1
    ORDERS[order_id] = {"id": order_id, **order.model_dump()}
    return answer(request, {"order": ORDERS[order_id]}, status_code=201)


@app.api_route("/orders/{order_id}", methods=["GET", "HEAD"])
async def get_order(request: Request, order_id: int) -> JSONResponse:
    if order_id not in ORDERS:
        raise HTTPException(status_code=404, detail="order not found")
    return answer(request, {"order": ORDERS[order_id]})


@app.delete("/orders/{order_id}")
async def delete_order(request: Request, order_id: int) -> JSONResponse:
    if ORDERS.pop(order_id, None) is None:
        raise HTTPException(status_code=404, detail="order not found")
    return answer(request, {"deleted": order_id})


@app.get("/admin/{rest:path}")
async def admin_area(request: Request, rest: str) -> JSONResponse:
    return answer(request, {"area": "admin", "rest": rest})


@app.get("/internal/{rest:path}")
async def internal_area(request: Request, rest: str) -> JSONResponse:
    return answer(request, {"area": "internal", "rest": rest})


# A router serving "/" under its prefix: FastAPI declares the route as /audit/ (with the slash), and
# Starlette redirects /audit to it. A policy rule on /audit must cover both forms.
audit = APIRouter(prefix="/audit")


@audit.get("/")
async def list_audit(request: Request) -> JSONResponse:
    return answer(request, {"area": "audit"})


app.include_router(audit)


@app.get("/me")
async def me(request: Request, caller: Identity = Depends(require_any_role("reader", "admin"))) -> JSONResponse:
    """Who is calling, as the sidecar verified it."""
    return answer(request, {"me": caller.as_dict()})


def pattern_bytes(size: int) -> Iterator[bytes]:
    sent = 0
    while sent < size:
        chunk = PATTERN[: min(CHUNK, size - sent)]
        sent += len(chunk)
        yield chunk


@app.get("/download")
async def download(
    size: int = Query(ge=0, le=1 << 34), chunked: bool = Query(default=False)
) -> StreamingResponse:
    # chunked=true omits Content-Length so the body goes out with Transfer-Encoding: chunked.
    headers = {} if chunked else {"content-length": str(size)}
    return StreamingResponse(pattern_bytes(size), media_type="application/octet-stream", headers=headers)


@app.post("/upload")
async def upload(request: Request) -> JSONResponse:
    digest = hashlib.sha256()
    count = 0
    async for chunk in request.stream():
        digest.update(chunk)
        count += len(chunk)
    return answer(request, {"bytes": count, "sha256": digest.hexdigest()})


@app.get("/slow")
async def slow(request: Request, seconds: float = Query(default=1.0, ge=0, le=120)) -> JSONResponse:
    await asyncio.sleep(seconds)
    return answer(request, {"slept": seconds})


@app.websocket("/ws")
async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"identity": identity(websocket)})
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await websocket.send_bytes(message["bytes"])
            elif message.get("text") is not None:
                await websocket.send_text(message["text"])
    except WebSocketDisconnect:
        return
