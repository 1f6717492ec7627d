// Rate limits on the request path, through the in-process proxy with the real IdP and the real FastAPI
// app: the example policy's writes-per-client limit, limits by ip and by header on other rules (public
// ones included), WebSocket upgrades, and buckets that outlive a policy hot reload. The limiter runs on
// a controlled clock, so "the bucket is empty" does not depend on how fast this machine is.
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createProxyMetrics } from "../proxy/metrics.ts";
import { openPolicySource, type PolicySource } from "../proxy/policy-source.ts";
import { RateLimiter } from "../proxy/rate-limit.ts";
import {
  compileDocument,
  documentText,
  type ExampleDocument,
  exampleDocument,
} from "./support/example-policy.ts";
import { type RunningProxy, rawRequest, type Stack, startProxy, startStack } from "./support/proxy.ts";

/** A limiter whose clock moves only when the test says so. */
function frozenLimiter(): { limiter: RateLimiter; advance(ms: number): void } {
  let now = 1_000_000;
  return {
    limiter: new RateLimiter({ now: () => now }),
    advance: (ms) => {
      now += ms;
    },
  };
}

let stack: Stack;
const clock = frozenLimiter();
const metrics = createProxyMetrics();
const tokens: Record<string, string> = {};

beforeAll(async () => {
  stack = await startStack({ parts: { rateLimiter: clock.limiter, metrics } });
  for (const client of ["reader", "writer", "admin"]) tokens[client] = await stack.token(client);
});

afterAll(async () => {
  await stack?.stop();
});

async function call(
  proxy: RunningProxy,
  method: string,
  path: string,
  client?: string,
  headers: Record<string, string> = {},
): Promise<Response> {
  const post = method === "POST";
  const response = await fetch(`${proxy.url}${path}`, {
    method,
    headers: {
      ...headers,
      ...(client === undefined ? {} : { authorization: `Bearer ${tokens[client]}` }),
      ...(post ? { "content-type": "application/json" } : {}),
    },
    ...(post ? { body: '{"item":"cups"}' } : {}),
  });
  await response.arrayBuffer();
  return response;
}

const statuses = async (n: number, send: () => Promise<Response>): Promise<number[]> => {
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push((await send()).status);
  return out;
};

describe("the example policy's writes-per-client limit (5/s, burst 10, by clientId)", () => {
  it("lets the writer's burst of 10 POSTs through, then answers 429 with Retry-After and a problem", async () => {
    const post = () => call(stack.proxy, "POST", "/orders", "writer");
    expect(await statuses(10, post)).toEqual(Array(10).fill(201));

    const response = await fetch(`${stack.proxy.url}/orders`, {
      method: "POST",
      headers: { authorization: `Bearer ${tokens.writer}`, "content-type": "application/json" },
      body: '{"item":"cups"}',
    });
    expect(response.status).toBe(429);
    // 5/s: the next token is 200 ms away, rounded up to whole seconds.
    expect(response.headers.get("retry-after")).toBe("1");
    expect(response.headers.get("content-type")).toBe("application/problem+json");
    expect(await response.json()).toEqual({
      type: "https://portcullis.dev/problems/too-many-requests",
      title: "Too Many Requests",
      status: 429,
      detail: "The rate limit was exceeded.",
      requestId: response.headers.get("x-request-id"),
    });
  });

  it("keeps other clients and other rules out of the writer's bucket", async () => {
    expect((await call(stack.proxy, "POST", "/orders", "admin")).status).toBe(201);
    expect((await call(stack.proxy, "GET", "/orders", "writer")).status).toBe(200);
    expect((await call(stack.proxy, "POST", "/orders", "writer")).status).toBe(429);
  });

  it("logs deny / rate-limited with the limit's name, and counts 429 by rule", async () => {
    const line = stack.proxy.logs.find((entry) => entry.status === 429);
    expect(line).toMatchObject({
      msg: "request",
      method: "POST",
      path: "/orders",
      rule: "write-orders",
      decision: "deny",
      reason: "rate-limited",
      rateLimit: "writes-per-client",
      clientId: "writer",
    });
    const admitted = stack.proxy.logs.find((entry) => entry.status === 201);
    expect(admitted).not.toHaveProperty("rateLimit");
    const text = await metrics.register.metrics();
    expect(text).toMatch(/portcullis_requests_total\{rule="write-orders",decision="deny",status="429"\} 2\n/);
    expect(text).toMatch(
      /portcullis_requests_total\{rule="write-orders",decision="allow",status="201"\} 11\n/,
    );
  });

  it("refills at the configured rate", async () => {
    clock.advance(1000);
    const post = () => call(stack.proxy, "POST", "/orders", "writer");
    expect(await statuses(6, post)).toEqual([201, 201, 201, 201, 201, 429]);
  });
});

describe("limits by ip and by header, public rules, WebSocket upgrades", () => {
  let limited: RunningProxy;

  beforeAll(async () => {
    const document = exampleDocument(stack.idp.issuer);
    document.spec.rateLimits.push(
      { name: "health-per-ip", rules: ["health"], key: "ip", requestsPerSecond: 1, burst: 2 },
      {
        name: "reads-per-tenant",
        rules: ["read-orders"],
        key: "header:X-Tenant",
        requestsPerSecond: 1,
        burst: 2,
      },
      { name: "files-per-client", rules: ["files"], key: "clientId", requestsPerSecond: 1, burst: 1 },
    );
    limited = await startProxy(compileDocument(document), new URL(stack.app.url), stack.keySets, {
      rateLimiter: frozenLimiter().limiter,
    });
  });
  afterAll(async () => {
    await limited?.close();
  });

  it("limits a public rule by the socket's peer address; X-Forwarded-For does not make a new bucket", async () => {
    expect((await call(limited, "GET", "/healthz")).status).toBe(200);
    expect(
      (await call(limited, "GET", "/healthz", undefined, { "x-forwarded-for": "10.1.1.1" })).status,
    ).toBe(200);
    const refused = await call(limited, "GET", "/healthz", undefined, { "x-forwarded-for": "10.2.2.2" });
    expect(refused.status).toBe(429);
    expect(refused.headers.get("retry-after")).toBe("1");
    expect(limited.logs.at(-1)).toMatchObject({
      rule: "health",
      decision: "deny",
      reason: "rate-limited",
      rateLimit: "health-per-ip",
    });
  });

  it("keeps a bucket per value of the header (the policy's X-Tenant matches the wire's x-tenant)", async () => {
    const read = (tenant: string) => call(limited, "GET", "/orders", "reader", { "x-tenant": tenant });
    expect((await read("a")).status).toBe(200);
    expect((await read("a")).status).toBe(200);
    expect((await read("a")).status).toBe(429);
    expect((await read("b")).status).toBe(200);
  });

  it("counts WebSocket upgrades in the same buckets as requests", async () => {
    expect((await call(limited, "GET", "/download?size=16", "reader")).status).toBe(200);
    const upgrade = await rawRequest(
      limited.port,
      [
        "GET /ws HTTP/1.1",
        "Host: proxy",
        `Authorization: Bearer ${tokens.reader}`,
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
      ].join("\n"),
    );
    expect(upgrade.status).toBe(429);
    expect(upgrade.header("retry-after")).toBe("1");
    expect(upgrade.json()).toMatchObject({ status: 429, title: "Too Many Requests" });
    expect(limited.logs.at(-1)).toMatchObject({
      path: "/ws",
      reason: "rate-limited",
      rateLimit: "files-per-client",
    });
  });
});

describe("a policy hot reload", () => {
  let dir: string;
  let source: PolicySource;
  let proxy: RunningProxy;
  let document: ExampleDocument;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "portcullis-limits-"));
    document = exampleDocument(stack.idp.issuer);
    await writeFile(join(dir, "policy.yaml"), documentText(document));
    source = await openPolicySource({
      file: join(dir, "policy.yaml"),
      logger: pino({ level: "silent" }),
      metrics: createProxyMetrics(),
      keySets: stack.keySets,
      pollIntervalMs: 60_000,
    });
    await source.keysReady();
    proxy = await startProxy(source.current().policy, new URL(stack.app.url), stack.keySets, {
      current: source.current,
      rateLimiter: frozenLimiter().limiter,
    });
  });
  afterAll(async () => {
    await proxy?.close();
    source?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("keeps a drained bucket drained: the limiter is the process's, not the policy's", async () => {
    const post = () => call(proxy, "POST", "/orders", "writer");
    expect(await statuses(11, post)).toEqual([...Array(10).fill(201), 429]);

    // A visible change: the admin area opened to readers.
    const admin = document.spec.authorization.rules.find((rule) => rule.name === "admin");
    if (!admin) throw new Error("example policy has no admin rule");
    delete admin.allRoles;
    admin.anyRole = ["reader"];
    const before = source.current();
    await writeFile(join(dir, "policy.yaml"), documentText(document));
    await source.refresh();
    expect(source.current()).not.toBe(before);
    expect((await call(proxy, "GET", "/admin/x", "reader")).status).toBe(200);

    expect((await post()).status).toBe(429);
  });
});
