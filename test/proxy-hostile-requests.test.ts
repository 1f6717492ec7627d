// What a hostile client tries against the sidecar, through the in-process proxy with the real IdP and
// the real FastAPI app: trailing-slash forms of a protected route, and malformed Host headers (sent
// over raw sockets: fetch would normalise them). Steering headers: proxy-steering-headers.test.ts.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { compileDocument, exampleDocument } from "./support/example-policy.ts";
import {
  identityOf,
  type RunningProxy,
  rawRequest,
  type Stack,
  startProxy,
  startStack,
} from "./support/proxy.ts";

let stack: Stack;
/** The example policy plus a last, wider rule: any reader may reach whatever no earlier rule names. */
let widened: RunningProxy;
const tokens: Record<string, string> = {};

beforeAll(async () => {
  stack = await startStack();
  for (const client of ["reader", "admin"]) tokens[client] = await stack.token(client);
  const document = exampleDocument(stack.idp.issuer);
  document.spec.authorization.rules.push({ name: "signed-in", paths: ["/{rest:path}"], anyRole: ["reader"] });
  widened = await startProxy(compileDocument(document), new URL(stack.app.url), stack.keySets);
});

afterAll(async () => {
  await widened?.close();
  await stack?.stop();
});

function get(proxy: RunningProxy, target: string, client: string) {
  const head = `GET ${target} HTTP/1.1\nHost: proxy\nAuthorization: Bearer ${tokens[client]}`;
  return rawRequest(proxy.port, head);
}

describe("trailing-slash forms are decided under the rule of the route they reach", () => {
  // The app declares /audit/ (a FastAPI router's "/" under a prefix); the policy's rule is on
  // /audit (admins only), and a later rule lets any reader through to everything else.
  it.each(["/audit/", "/audit%2F", "/audit%2f", "/audit//", "/audit/%2F", "/audit"])(
    "a reader asking for %s is refused under the audit rule, never the wider one",
    async (target) => {
      const response = await get(widened, target, "reader");
      expect(response.status).toBe(403);
      expect(response.header("content-type")).toBe("application/problem+json");
      expect(widened.logs.at(-1)).toMatchObject({ status: 403, rule: "audit", reason: "missing-roles" });
    },
  );

  it("an admin reaches the router's /audit/ itself, and /audit is redirected there by the app", async () => {
    const served = await get(widened, "/audit/", "admin");
    expect(served.status).toBe(200);
    expect(served.json().area).toBe("audit");
    expect(identityOf(served.json()).path).toBe("/audit/");
    const redirected = await get(widened, "/audit", "admin");
    expect(redirected.status).toBe(307);
    expect(redirected.header("location")).toMatch(/\/audit\/$/);
  });

  it("the wider rule still forwards what no earlier rule names, and the exact forms keep their rules", async () => {
    expect((await get(widened, "/nowhere", "reader")).status).toBe(404); // the app's own 404
    expect((await get(widened, "/orders/1/", "reader")).status).toBe(307); // read-orders: the app redirects
    expect((await get(widened, "/internal", "admin")).status).toBe(403); // the deny rule's /internal/{rest:path}
  });
});

describe("a malformed Host is refused with 400 before the rule or the token is looked at", () => {
  const hosts = [
    "a b",
    "user@api.example",
    "user:pw@api.example",
    "api.example:99999",
    "api.example:",
    "api.example:8x",
    "",
    "[::1",
    "a/b",
    "api.example,evil.example",
  ];
  it.each(hosts)(
    "Host: %j -> 400 problem+json, on a public route, one that would answer 401 and a deny route",
    async (host) => {
      for (const target of ["/healthz", "/orders", "/internal/x"]) {
        const response = await rawRequest(stack.proxy.port, `GET ${target} HTTP/1.1\nHost: ${host}`);
        expect(response.status).toBe(400);
        expect(response.header("content-type")).toBe("application/problem+json");
        expect(stack.proxy.logs.at(-1)).toMatchObject({ status: 400, reason: "bad-host", rule: "(none)" });
      }
    },
  );

  it("two Host lines (Node keeps the first) -> 400 before authentication, also for a WebSocket upgrade", async () => {
    const two = await rawRequest(
      stack.proxy.port,
      "GET /orders HTTP/1.1\nHost: api.example\nHost: evil.example",
    );
    expect(two.status).toBe(400);
    expect(stack.proxy.logs.at(-1)).toMatchObject({ reason: "ambiguous-headers" });
    const upgrade = await rawRequest(
      stack.proxy.port,
      "GET /ws HTTP/1.1\nHost: a@b\nConnection: Upgrade\nUpgrade: websocket\nSec-WebSocket-Version: 13\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    );
    expect(upgrade.status).toBe(400);
    expect(stack.proxy.logs.at(-1)).toMatchObject({ reason: "bad-host" });
  });

  it("control characters in Host are refused (by Node's parser or the proxy), and valid forms pass", async () => {
    for (const host of ["a\tb", "a\u0001b", "a\u007fb"]) {
      const response = await rawRequest(stack.proxy.port, `GET /healthz HTTP/1.1\nHost: ${host}`);
      expect(response.status, JSON.stringify(host)).toBe(400);
    }
    for (const host of ["api.example", "api.example:8080", "10.1.2.3:80", "[::1]:8080"]) {
      expect((await rawRequest(stack.proxy.port, `GET /healthz HTTP/1.1\nHost: ${host}`)).status, host).toBe(
        200,
      );
    }
    // HTTP/1.0 may omit Host.
    expect((await rawRequest(stack.proxy.port, "GET /healthz HTTP/1.0")).status).toBe(200);
  });
});
