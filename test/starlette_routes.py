"""Asks the real Starlette Router which route a decoded path reaches.

stdin: {"unquote": ["/%61", ...], "owners": {"rules": [[declaration, ...], ...], "paths": [...]}}
stdout: {"unquoted": [...], "owners": [...]}: unquoted holds urllib.parse.unquote of each raw path,
as uvicorn computes scope["path"].

owners: each rule is a list of ways an app may declare its route, {"route": path} (a Starlette Route)
or {"prefix": p} (a FastAPI APIRouter serving "/" included under prefix p: the route `p/`). For each
path, the first rule one of whose declarations, alone in a router with redirect_slashes, serves (200)
or redirects (307) it: {"index": i, "status": 200 | 307, "params": {...}} (params for a Route's
200), or {"index": null}. The answers come from Starlette's own dispatch.
"""

import asyncio
import json
import sys
from urllib.parse import unquote

from fastapi import APIRouter, FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, Router


def endpoint_for(index):
    async def endpoint(request: Request):
        # The raw captures (path_params holds converted values: int("007") is 7).
        params = request.scope["route"].path_regex.match(request.scope["path"]).groupdict()
        return JSONResponse({"index": index, "params": params})

    return endpoint


async def call(router, path):
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8"),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 1234),
    }
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await router(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in start["headers"]}
    return start["status"], headers, body


def declared(declaration):
    """An app (its router has redirect_slashes=True) holding just the route as declared."""
    if "route" in declaration:
        return Router(routes=[Route(declaration["route"], endpoint_for(0))], redirect_slashes=True)
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    below = APIRouter()

    @below.get("/")
    async def root():
        return {"index": 0, "params": None}

    app.include_router(below, prefix=declaration["prefix"])
    return app


async def owners(request):
    rules = [[declared(d) for d in declarations] for declarations in request["rules"]]
    results = []
    for path in request["paths"]:
        owner = {"index": None}
        for index, routers in enumerate(rules):
            for router in routers:
                status, _, body = await call(router, path)
                if status in (200, 307):
                    owner = {"index": index, "status": status}
                    params = json.loads(body)["params"] if status == 200 else None
                    if params is not None:
                        owner["params"] = params
                    break
            if owner["index"] is not None:
                break
        results.append(owner)
    return results


async def main():
    request = json.load(sys.stdin)
    unquoted = [unquote(raw) for raw in request.get("unquote", [])]
    owned = await owners(request["owners"]) if "owners" in request else []
    json.dump({"unquoted": unquoted, "owners": owned}, sys.stdout)


asyncio.run(main())
