// The proxy's request path against the real IdP and the real FastAPI app: who gets which status on
// which route, what every refusal looks like, and what reached (or never reached) the app.
import { once } from "node:events";
import { connect, createServer } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CompiledPolicy } from "../policy/compile.ts";
import { goodClaims, idpKey, sign, signRaw } from "./support/authn.ts";
import { type RunningProxy, rawRequest, type Stack, startProxy, startStack } from "./support/proxy.ts";

let stack: Stack;
const tokens: Record<string, string> = {};

beforeAll(async () => {
  stack = await startStack();
  for (const client of ["reader", "writer", "admin"]) tokens[client] = await stack.token(client);
});

afterAll(async () => {
  await stack?.stop();
});

function bearer(client: string): Record<string, string> {
  return { authorization: `Bearer ${tokens[client]}` };
}

async function call(
  method: string,
  path: string,
  headers: Record<string, string> = {},
  body?: string,
): Promise<{ status: number; headers: Headers; body: Record<string, unknown> }> {
  const response = await fetch(`${stack.proxy.url}${path}`, {
    method,
    headers: body === undefined ? headers : { ...headers, "content-type": "application/json" },
    ...(body === undefined ? {} : { body }),
  });
  const json = method !== "HEAD" && /json/.test(response.headers.get("content-type") ?? "");
  const parsed = json
    ? ((await response.json()) as Record<string, unknown>)
    : { bytes: await response.bytes() };
  return { status: response.status, headers: response.headers, body: parsed };
}

type Echo = {
  x_auth: Record<string, string[]>;
  raw_headers: [string, string][];
  forwarded: Record<string, string[]>;
  authorization: string | null;
  path: string;
  raw_path: string;
  query_string: string;
};
const echo = (body: Record<string, unknown>) => body.identity as Echo;

describe("roles on routes (example policy)", () => {
  // [method, path, body, { reader, writer, admin }]: a 2xx/404 proves the app answered.
  const matrix: [string, string, string | undefined, Record<string, number>][] = [
    ["GET", "/healthz", undefined, { reader: 200, writer: 200, admin: 200 }],
    ["GET", "/orders", undefined, { reader: 200, writer: 200, admin: 200 }],
    ["GET", "/orders/1", undefined, { reader: 200, writer: 200, admin: 200 }],
    ["HEAD", "/orders", undefined, { reader: 200, writer: 200, admin: 200 }],
    ["POST", "/orders", '{"item":"cups"}', { reader: 403, writer: 201, admin: 201 }],
    ["DELETE", "/orders/999", undefined, { reader: 403, writer: 403, admin: 404 }],
    ["GET", "/admin/reports", undefined, { reader: 403, writer: 403, admin: 200 }],
    ["GET", "/internal/x", undefined, { reader: 403, writer: 403, admin: 403 }],
    ["GET", "/download?size=16", undefined, { reader: 200, writer: 200, admin: 200 }],
    ["PUT", "/orders", undefined, { reader: 403, writer: 403, admin: 403 }],
    ["GET", "/nowhere", undefined, { reader: 403, writer: 403, admin: 403 }],
  ];
  for (const [method, path, body, expected] of matrix) {
    for (const [client, status] of Object.entries(expected)) {
      it(`${method} ${path} as ${client} -> ${status}`, async () => {
        const response = await call(method, path, bearer(client), body);
        expect(response.status).toBe(status);
        if (status === 403) {
          expect(response.headers.get("content-type")).toBe("application/problem+json");
          expect(response.body).not.toHaveProperty("identity");
        }
      });
    }
  }

  it("a 403 for missing roles challenges with insufficient_scope and names no roles", async () => {
    const response = await call("GET", "/admin/x", bearer("reader"));
    expect(response.headers.get("www-authenticate")).toBe('Bearer error="insufficient_scope"');
    expect(JSON.stringify(response.body)).not.toContain("admin");
    expect(response.body).toMatchObject({ status: 403, title: "Forbidden" });
  });

  it("a deny rule answers 403 even without a token; a public rule needs none", async () => {
    expect((await call("GET", "/internal/x")).status).toBe(403);
    const health = await call("GET", "/healthz");
    expect(health.status).toBe(200);
    expect(echo(health.body).x_auth).toEqual({});
  });
});

describe("authentication failures", () => {
  it("no token: 401 with a bare Bearer challenge, as problem+json", async () => {
    for (const path of ["/orders", "/nowhere", "/admin/x"]) {
      const response = await call("GET", path);
      expect(response.status).toBe(401);
      expect(response.headers.get("www-authenticate")).toBe("Bearer");
      expect(response.headers.get("content-type")).toBe("application/problem+json");
      expect(response.body).toEqual({
        type: expect.stringMatching(/^https:\/\//),
        title: "Unauthorized",
        status: 401,
        detail: expect.any(String),
        requestId: response.headers.get("x-request-id"),
      });
    }
  });

  it("a bad token: 401 invalid_token, never forwarded", async () => {
    const token = tokens.reader!;
    const tampered = `${token.slice(0, -4)}${token.endsWith("AAAA") ? "BBBB" : "AAAA"}`;
    for (const value of [tampered, "not-a-jwt", "a.b.c"]) {
      const response = await call("GET", "/orders", { authorization: `Bearer ${value}` });
      expect(response.status).toBe(401);
      expect(response.headers.get("www-authenticate")).toBe('Bearer error="invalid_token"');
      expect(response.body).not.toHaveProperty("identity");
    }
  });

  it("two Authorization headers: 400 invalid_request", async () => {
    const response = await rawRequest(
      stack.proxy.port,
      `GET /orders HTTP/1.1\nHost: proxy\nAuthorization: Bearer ${tokens.reader}\nAuthorization: Bearer ${tokens.admin}`,
    );
    expect(response.status).toBe(400);
    expect(response.header("www-authenticate")).toBe('Bearer error="invalid_request"');
    expect(response.json()).toMatchObject({ status: 400 });
  });

  it("a header token plus ?access_token=: 400 invalid_request", async () => {
    const response = await call("GET", `/orders?access_token=${tokens.admin}`, bearer("reader"));
    expect(response.status).toBe(400);
    expect(response.headers.get("www-authenticate")).toBe('Bearer error="invalid_request"');
  });

  it("a refused request with a body closes the connection instead of draining the upload", async () => {
    const response = await rawRequest(
      stack.proxy.port,
      "POST /orders HTTP/1.1\nHost: proxy\nContent-Length: 5\nConnection: keep-alive",
      "12345",
    );
    expect(response.status).toBe(401);
    expect(response.header("connection")).toBe("close");
  });
});

describe("identity headers: spoofed copies never reach the app", () => {
  const spoofed = [
    "X-Auth-Subject: evil",
    "x-auth-subject: evil",
    "X_Auth_Subject: evil",
    "x.auth.subject: evil",
    "X-AUTH-SUBJECT: evil",
    "X-Auth-Subject: evil",
    "X-Auth-Roles: admin",
    "x_auth_roles: admin",
    "X-Auth-Scopes: orders.admin",
    "X-Auth-Client-Id: evil",
    "X-Auth-Issuer: https://evil",
    "X-Auth-Email: evil@example.com",
    "X.Auth.Email: evil@example.com",
    "X-Portcullis-Rule: public",
  ];

  async function spoof(client: string | undefined, extra: string[]): Promise<Echo> {
    const auth = client === undefined ? [] : [`Authorization: Bearer ${tokens[client]}`];
    const path = client === undefined ? "/healthz" : "/orders";
    const response = await rawRequest(
      stack.proxy.port,
      [`GET ${path} HTTP/1.1`, "Host: proxy", ...auth, ...spoofed, ...extra].join("\n"),
    );
    expect(response.status).toBe(200);
    return echo(response.json());
  }

  function expectNoSpoof(identity: Echo): void {
    for (const [name, value] of identity.raw_headers) {
      const canonical = name.replace(/[_.]/g, "-");
      if (canonical.startsWith("x-auth-") || canonical.startsWith("x-portcullis-")) {
        expect(value, `${name} reached the app`).not.toMatch(/evil|admin|public/);
      }
    }
  }

  it("every spelling and copy is removed; exactly one copy of each identity header arrives", async () => {
    const identity = await spoof("writer", []);
    expectNoSpoof(identity);
    expect(identity.x_auth).toEqual({
      "x-auth-subject": ["writer"],
      "x-auth-roles": ["reader,writer"],
      "x-auth-scopes": ["orders.read orders.write"],
      "x-auth-client-id": ["writer"],
      "x-auth-issuer": [stack.idp.issuer],
      "x-auth-email": ["writer@orders.example"],
    });
    const names = identity.raw_headers.map(([name]) => name);
    expect(names.filter((name) => name.replace(/[_.]/g, "-") === "x-auth-subject")).toEqual([
      "x-auth-subject",
    ]);
    // The token itself is not forwarded (forwardAuthorization is off).
    expect(identity.authorization).toBeNull();
  });

  it("on a public route, no identity header arrives at all", async () => {
    const identity = await spoof(undefined, []);
    expectNoSpoof(identity);
    expect(identity.x_auth).toEqual({});
  });

  it("a Connection nomination cannot strip what the proxy adds", async () => {
    const identity = await spoof("reader", [
      "Connection: close, X-Auth-Subject, X-Auth-Roles, X-Forwarded-For, X-Request-Id, traceparent",
    ]);
    expectNoSpoof(identity);
    expect(identity.x_auth["x-auth-subject"]).toEqual(["reader"]);
    expect(identity.x_auth["x-auth-roles"]).toEqual(["reader"]);
    expect(identity.forwarded["x-forwarded-for"]).toEqual(["127.0.0.1"]);
    expect(identity.forwarded["x-request-id"]).toHaveLength(1);
    expect(identity.forwarded.traceparent).toHaveLength(1);
  });

  it("a nominated end-to-end header is removed, the client's X-Forwarded-For chain with it", async () => {
    const identity = await spoof("reader", [
      "X-Forwarded-For: 6.6.6.6",
      "X-Custom: kept?",
      "Connection: close, X-Forwarded-For",
      "Connection: x_custom",
    ]);
    expect(identity.forwarded["x-forwarded-for"]).toEqual(["127.0.0.1"]);
    expect(identity.raw_headers.map(([name]) => name)).not.toContain("x-custom");
  });

  it("hop-by-hop headers and the proxy's own headers are never passed through", async () => {
    const identity = await spoof("reader", [
      "Keep-Alive: timeout=5",
      "TE: trailers",
      "Proxy-Authorization: Basic ZXZpbDpldmls",
      "Upgrade: h2c",
      "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
      "X-Forwarded-Proto: https",
      "X_Forwarded_Proto: https",
      "X-Forwarded-Host: evil.example",
    ]);
    const names = identity.raw_headers.map(([name]) => name);
    for (const name of [
      "keep-alive",
      "te",
      "proxy-authorization",
      "upgrade",
      "http2-settings",
      "x_forwarded_proto",
    ]) {
      expect(names).not.toContain(name);
    }
    expect(identity.forwarded["x-forwarded-proto"]).toEqual(["http"]);
    expect(identity.forwarded["x-forwarded-host"]).toEqual(["proxy"]);
  });
});

describe("methods and Expect: 100-continue", () => {
  it("a method no rule names falls to the default: 403 with a token, 401 without", async () => {
    const head = (auth: string) => `PROPFIND /orders HTTP/1.1\nHost: proxy${auth}`;
    expect((await rawRequest(stack.proxy.port, head(`\nAuthorization: Bearer ${tokens.admin}`))).status).toBe(
      403,
    );
    expect((await rawRequest(stack.proxy.port, head(""))).status).toBe(401);
  });

  it("a method Node's parser does not know: 400", async () => {
    expect((await rawRequest(stack.proxy.port, "BREW /orders HTTP/1.1\nHost: proxy")).status).toBe(400);
  });

  it("a refused upload gets its answer instead of 100 Continue", async () => {
    const response = await rawRequest(
      stack.proxy.port,
      "POST /upload HTTP/1.1\nHost: proxy\nContent-Length: 1000000\nExpect: 100-continue",
    );
    expect(response.status).toBe(401);
    expect(response.header("connection")).toBe("close");
  });

  it("an admitted upload gets 100 Continue, then the app's answer; Expect is not forwarded", async () => {
    const socket = connect(stack.proxy.port, "127.0.0.1");
    await once(socket, "connect");
    socket.write(
      `POST /upload HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer ${tokens.reader}\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n`,
    );
    const [interim] = (await once(socket, "data")) as [Buffer];
    expect(interim.toString("latin1")).toMatch(/^HTTP\/1\.1 100 Continue\r\n/);
    socket.write("hello");
    const chunks: Buffer[] = [];
    for await (const chunk of socket) chunks.push(chunk as Buffer);
    const text = Buffer.concat(chunks).toString("utf8");
    expect(text).toMatch(/^HTTP\/1\.1 200 /);
    const body = JSON.parse(text.slice(text.indexOf("\r\n\r\n") + 4)) as { bytes: number } & Record<
      string,
      unknown
    >;
    expect(body.bytes).toBe(5);
    expect(echo(body).raw_headers.map(([name]) => name)).not.toContain("expect");
  });
});

describe("forwarded headers, request id and trace context", () => {
  it("X-Forwarded-For: the client's chain (every copy, joined) with the peer last, in one header", async () => {
    const response = await rawRequest(
      stack.proxy.port,
      `GET /orders HTTP/1.1\nHost: orders.example\nAuthorization: Bearer ${tokens.reader}\nX-Forwarded-For: 1.2.3.4\nX-Forwarded-For: 5.6.7.8, 9.9.9.9`,
    );
    const identity = echo(response.json());
    expect(identity.forwarded["x-forwarded-for"]).toEqual(["1.2.3.4, 5.6.7.8, 9.9.9.9, 127.0.0.1"]);
    expect(identity.forwarded["x-forwarded-host"]).toEqual(["orders.example"]);
    // Host is passed as the client sent it.
    expect(identity.raw_headers.filter(([name]) => name === "host")).toEqual([["host", "orders.example"]]);
  });

  it("keeps a well-formed inbound X-Request-Id, echoes it in the response and upstream", async () => {
    const response = await call("GET", "/orders", {
      ...bearer("reader"),
      "x-request-id": "req-42:abc.DEF_1",
    });
    expect(response.headers.get("x-request-id")).toBe("req-42:abc.DEF_1");
    expect(echo(response.body).forwarded["x-request-id"]).toEqual(["req-42:abc.DEF_1"]);
  });

  it("takes X-Correlation-ID when X-Request-Id is absent or malformed", async () => {
    const response = await call("GET", "/orders", {
      ...bearer("reader"),
      "x-request-id": "not ok!",
      "x-correlation-id": "corr-7",
    });
    expect(response.headers.get("x-request-id")).toBe("corr-7");
    expect(echo(response.body).forwarded["x-request-id"]).toEqual(["corr-7"]);
  });

  it("generates one when the inbound id is malformed, and problem answers carry it too", async () => {
    const forwarded = await call("GET", "/orders", { ...bearer("reader"), "x-request-id": "x".repeat(129) });
    const id = forwarded.headers.get("x-request-id");
    expect(id).toMatch(/^[0-9a-f]{32}$/);
    expect(echo(forwarded.body).forwarded["x-request-id"]).toEqual([id]);

    const refused = await call("GET", "/orders", { "x-request-id": "bad id" });
    expect(refused.status).toBe(401);
    expect(refused.headers.get("x-request-id")).toMatch(/^[0-9a-f]{32}$/);
    expect(refused.body.requestId).toBe(refused.headers.get("x-request-id"));
  });

  it("passes a valid traceparent through and replaces an invalid one", async () => {
    const valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const kept = await call("GET", "/orders", { ...bearer("reader"), traceparent: valid, tracestate: "a=1" });
    expect(echo(kept.body).forwarded.traceparent).toEqual([valid]);
    expect(echo(kept.body).raw_headers).toContainEqual(["tracestate", "a=1"]);

    for (const invalid of [
      "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
      "garbage",
      `ff${valid.slice(2)}`,
    ]) {
      const replaced = await call("GET", "/orders", {
        ...bearer("reader"),
        traceparent: invalid,
        tracestate: "a=1",
      });
      const sent = echo(replaced.body).forwarded.traceparent ?? [];
      expect(sent).toHaveLength(1);
      expect(sent[0]).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
      expect(sent[0]).not.toBe(invalid);
      expect(echo(replaced.body).raw_headers.map(([name]) => name)).not.toContain("tracestate");
    }
  });

  it("forwards the query exactly as received", async () => {
    const response = await call("GET", "/orders?b=2&a=%41&a=1", bearer("reader"));
    expect(echo(response.body).query_string).toBe("b=2&a=%41&a=1");
    expect(echo(response.body).raw_path).toBe("/orders");
  });
});

describe("path tricks never reach a protected handler", () => {
  // As a reader (no admin role): each is refused by the proxy, before the app.
  const tricks: [string, number][] = [
    ["/%61dmin/x", 403],
    ["/admin%2Fx", 403],
    ["/admin%2fx", 403],
    ["/%69nternal/x", 403],
    ["//admin/x", 403],
    ["/ADMIN/x", 403],
    ["/admin;x", 403],
    ["/./admin", 400],
    ["/admin/../orders", 400],
    ["/orders/../admin/x", 400],
    ["/admin/%2e%2e/orders", 400],
    ["/orders%0a", 400],
    ["/admin%00/x", 400],
    ["/admin/x#frag", 400],
    ["/%ff/admin", 400],
    ["http://evil/admin/x", 400],
    ["*", 400],
  ];
  for (const [target, status] of tricks) {
    it(`${target} -> ${status}`, async () => {
      const response = await rawRequest(
        stack.proxy.port,
        `GET ${target} HTTP/1.1\nHost: proxy\nAuthorization: Bearer ${tokens.reader}`,
      );
      expect(response.status).toBe(status);
      expect(response.header("content-type")).toBe("application/problem+json");
      expect(response.body).not.toContain("identity");
    });
  }

  it("authority-form (CONNECT) -> 400", async () => {
    const response = await rawRequest(stack.proxy.port, "CONNECT 127.0.0.1:22 HTTP/1.1\nHost: 127.0.0.1:22");
    expect(response.status).toBe(400);
  });

  it("an OPTIONS * request -> 400", async () => {
    const response = await rawRequest(stack.proxy.port, "OPTIONS * HTTP/1.1\nHost: proxy");
    expect(response.status).toBe(400);
  });

  it("two Host headers -> 400", async () => {
    const response = await rawRequest(
      stack.proxy.port,
      `GET /orders HTTP/1.1\nHost: a\nHost: b\nAuthorization: Bearer ${tokens.reader}`,
    );
    expect(response.status).toBe(400);
  });

  it("garbage that Node's parser refuses gets a 400 and the server keeps serving", async () => {
    const response = await rawRequest(stack.proxy.port, "GET /orders HTTP/1.1\nHost: proxy\nBad Header Line");
    expect(response.status).toBe(400);
    expect((await call("GET", "/healthz")).status).toBe(200);
  });
});

describe("claims that become identity headers", () => {
  const signed = (claims: Record<string, unknown>) => sign(idpKey(stack.idp), goodClaims(stack.idp, claims));

  it("refuses a verified token whose sub or mapped claim holds a control character: 401, reason logged", async () => {
    for (const claims of [
      { sub: "alice\r\nX-Auth-Roles: admin" },
      { sub: "a\u0000b" },
      { email: "x@y\u007f" },
      { sub: "tab\tbed" },
      { scope: "orders.read evil\u001b[31m" },
      { client_id: "web\u0007" },
    ]) {
      const id = `ctl-${Math.random()}`;
      const response = await call("GET", "/orders", {
        authorization: `Bearer ${await signed(claims)}`,
        "x-request-id": id,
      });
      expect(response.status).toBe(401);
      expect(response.headers.get("www-authenticate")).toContain('error="invalid_token"');
      expect(JSON.stringify(response.body)).not.toContain("alice");
      const line = stack.proxy.logs.find((l) => l.requestId === id);
      expect(line?.reason).toMatch(/^control-character-in-x-auth-(subject|email|scopes|client-id)$/);
    }
  });

  it("refuses a claim with a lone UTF-16 surrogate (no UTF-8 form) with 401, never a 500", async () => {
    const id = `surrogate-${Math.random()}`;
    // JSON's "\ud800" escape: valid JSON, a string with no UTF-8 encoding.
    const payload = JSON.stringify(goodClaims(stack.idp, { sub: "PLACEHOLDER" })).replace(
      "PLACEHOLDER",
      "a\\ud800b",
    );
    const response = await call("GET", "/orders", {
      authorization: `Bearer ${await signRaw(idpKey(stack.idp), payload)}`,
      "x-request-id": id,
    });
    expect(response.status).toBe(401);
    expect(response.headers.get("www-authenticate")).toContain('error="invalid_token"');
    expect(stack.proxy.logs.find((l) => l.requestId === id)?.reason).toBe(
      "unpaired-surrogate-in-x-auth-subject",
    );
  });

  it("sends a UTF-8 value percent-encoded with an -encoding sibling the app decodes; never drops it", async () => {
    const email = "Jos\u00e9.M\u00fcller@b\u00fccher.example";
    const response = await call("GET", "/orders", {
      authorization: `Bearer ${await signed({ sub: "Zo\u00eb", email })}`,
      // A client's own sibling never gets through.
      "X-Auth-Email-Encoding": "none",
    });
    expect(response.status).toBe(200);
    const seen = (response.body.identity as Echo).x_auth;
    expect(seen["x-auth-subject"]).toEqual(["Zo%C3%AB"]);
    expect(seen["x-auth-subject-encoding"]).toEqual(["percent"]);
    expect(seen["x-auth-email-encoding"]).toEqual(["percent"]);
    expect(seen["x-auth-email"]?.map(decodeURIComponent)).toEqual([email]);
  });
});

describe("access log", () => {
  it("one line per request, with the decision, never the token or query values", async () => {
    const id = `log-${Date.now()}`;
    await call("GET", "/download?size=4&secret=hunter2", { ...bearer("reader"), "x-request-id": id });
    await call("GET", "/orders?access_token=sneaky-token-value", { "x-request-id": `${id}-q` });
    const lines = stack.proxy.logs.filter((line) => line.requestId === id);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({
      msg: "request",
      method: "GET",
      path: "/download",
      rule: "files",
      decision: "allow",
      reason: "roles",
      subject: "reader",
      clientId: "reader",
      roles: ["reader"],
      status: 200,
      latencyMs: expect.any(Number),
      upstreamMs: expect.any(Number),
    });
    const refused = stack.proxy.logs.find((line) => line.requestId === `${id}-q`);
    expect(refused).toMatchObject({ status: 400, decision: "invalid", reason: "token_in_query" });
    const text = stack.proxy.logText();
    expect(text).not.toContain("hunter2");
    expect(text).not.toContain("sneaky-token-value");
    for (const token of Object.values(tokens)) {
      expect(text).not.toContain(token);
      expect(text).not.toContain(token.split(".")[2]!);
    }
  });
});

describe("upstream failures", () => {
  let down: RunningProxy;
  let slow: RunningProxy;

  beforeAll(async () => {
    // A port that was free a moment ago: nothing listens there.
    const probe = createServer().listen(0, "127.0.0.1");
    await new Promise((done) => probe.once("listening", done));
    const { port } = probe.address() as { port: number };
    await new Promise((done) => probe.close(done));
    down = await startProxy(stack.policy, new URL(`http://127.0.0.1:${port}`), stack.keySets);
    const impatient: CompiledPolicy = { ...stack.policy, upstreamTimeoutMs: 300 };
    slow = await startProxy(impatient, new URL(stack.app.url), stack.keySets);
  });

  afterAll(async () => {
    await down?.close();
    await slow?.close();
  });

  it("upstream refusing connections -> 502 problem", async () => {
    const response = await fetch(`${down.url}/orders`, { headers: bearer("reader") });
    expect(response.status).toBe(502);
    expect(response.headers.get("content-type")).toBe("application/problem+json");
    expect(await response.json()).toMatchObject({
      status: 502,
      requestId: response.headers.get("x-request-id"),
    });
    expect(down.logs.at(-1)).toMatchObject({ status: 502, decision: "error", failure: "upstream-refused" });
  });

  it("no response headers within the policy's upstream timeout -> 504 problem", async () => {
    const response = await fetch(`${slow.url}/slow?seconds=3`, { headers: bearer("reader") });
    expect(response.status).toBe(504);
    expect(await response.json()).toMatchObject({ status: 504 });
    expect(slow.logs.at(-1)).toMatchObject({ status: 504, failure: "upstream-timeout" });
  });

  it("a client that leaves aborts the upstream request", async () => {
    const controller = new AbortController();
    const pending = fetch(`${stack.proxy.url}/slow?seconds=5`, {
      headers: { ...bearer("reader"), "x-request-id": "leaver-1" },
      signal: controller.signal,
    }).catch(() => undefined);
    await new Promise((done) => setTimeout(done, 300));
    controller.abort();
    await pending;
    await expect
      .poll(() => stack.proxy.logs.find((line) => line.requestId === "leaver-1"))
      .toMatchObject({
        status: 499,
        failure: "client-aborted",
      });
    expect(stack.proxy.proxy.inFlight()).toBe(0);
  });
});
