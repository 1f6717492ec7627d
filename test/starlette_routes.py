"""Asks the real Starlette Router which route a decoded path reaches.

stdin: {"templates": ["/a", "/b/{x:int}", ...], "paths": ["/a", "/a/", ...], "unquote": ["/%61", ...]}
stdout: {"routes": [...], "unquoted": [...]}, where routes holds one object per path, in order:
  {"status": 200, "index": i, "params": {...}}   route i served it; params as its regex captured them
  {"status": 307, "location": "...", "index": j}  redirect_slashes; route j serves the redirected path
  {"status": 404}
and unquoted holds urllib.parse.unquote of each raw path, as uvicorn computes scope["path"].
Route i's endpoint answers with its own index, so the answer comes from Starlette's own dispatch.
"""

import asyncio
import json
import sys
from urllib.parse import unquote

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


def redirected_path(path):
    # What Router.app puts in redirect_scope["path"] before building the Location.
    return path.rstrip("/") if path.endswith("/") else path + "/"


async def main():
    request = json.load(sys.stdin)
    routes = [Route(t, endpoint_for(i)) for i, t in enumerate(request.get("templates", []))]
    router = Router(routes=routes, redirect_slashes=True)
    results = []
    for path in request.get("paths", []):
        status, headers, body = await call(router, path)
        if status == 200:
            results.append({"status": 200, **json.loads(body)})
        elif status == 307:
            again, _, body = await call(router, redirected_path(path))
            index = json.loads(body)["index"] if again == 200 else None
            results.append({"status": 307, "location": headers["location"], "index": index})
        else:
            results.append({"status": status})
    unquoted = [unquote(raw) for raw in request.get("unquote", [])]
    json.dump({"routes": results, "unquoted": unquoted}, sys.stdout)


asyncio.run(main())
