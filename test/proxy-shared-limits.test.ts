// `store: redis` rate limits across sidecars: proxy/main.ts processes (as the container runs them) with
// --redis-url pointing at one real redis-server, in front of the real FastAPI app, trusting the real IdP.
// The limit refills at 1 token/s: a few requests sent back to back see a refill or two, per-sidecar
// buckets would let twice the burst through.
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startUpstream, type Upstream } from "../examples/fastapi/upstream.ts";
import { type IdentityProvider, startIdentityProvider } from "../examples/idp.ts";
import { documentText, exampleDocument } from "./support/example-policy.ts";
import { type ProxyProcess, startProxyProcess } from "./support/proxy-process.ts";
import { type RedisServer, startRedis } from "./support/redis.ts";

const BURST = 10;
let idp: IdentityProvider;
let upstream: Upstream;
let redis: RedisServer;
let dir: string;
/** Two replicas sharing Redis, and one sidecar without --redis-url. */
let a: ProxyProcess;
let b: ProxyProcess;
let alone: ProxyProcess;
const tokens: Record<string, string> = {};

beforeAll(async () => {
  [idp, upstream, redis] = await Promise.all([startIdentityProvider(), startUpstream(), startRedis()]);
  for (const client of ["writer", "admin"]) tokens[client] = await idp.token(client);
  dir = await mkdtemp(join(tmpdir(), "portcullis-shared-"));
  const document = exampleDocument(idp.issuer);
  document.spec.rateLimits = [
    {
      name: "shared-writes",
      rules: ["write-orders"],
      key: "clientId",
      requestsPerSecond: 1,
      burst: BURST,
      store: "redis",
    },
  ];
  const policy = join(dir, "policy.yaml");
  await writeFile(policy, documentText(document));
  const common = ["--policy", policy, "--upstream", upstream.url];
  [a, b, alone] = await Promise.all([
    startProxyProcess([...common, "--redis-url", redis.url]),
    startProxyProcess([...common, "--redis-url", redis.url]),
    startProxyProcess(common),
  ]);
  await Promise.all([a, b, alone].map((proxy) => proxy.waitForLine((line) => line.msg === "ready")));
});

afterAll(async () => {
  await Promise.all([a, b, alone].map((proxy) => proxy?.stop()));
  await Promise.all([upstream?.stop(), idp?.stop(), redis?.remove()]);
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function post(proxy: ProxyProcess, client: string): Promise<Response> {
  const response = await fetch(`${proxy.url}/orders`, {
    method: "POST",
    headers: { authorization: `Bearer ${tokens[client]}`, "content-type": "application/json" },
    body: '{"item":"cups"}',
  });
  await response.arrayBuffer();
  return response;
}

const count = (statuses: number[], status: number) => statuses.filter((s) => s === status).length;

describe("store: redis limits", () => {
  it("share one budget across two sidecars: the burst is allowed in total, not per sidecar", async () => {
    const statuses: number[] = [];
    const refusedBy = new Set<ProxyProcess>();
    for (let i = 0; i < 2 * BURST; i++) {
      const proxy = i % 2 === 0 ? a : b;
      const response = await post(proxy, "writer");
      statuses.push(response.status);
      if (response.status === 429) {
        refusedBy.add(proxy);
        expect(Number(response.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
      }
    }
    expect(count(statuses, 201) + count(statuses, 429)).toBe(2 * BURST);
    // Per-sidecar buckets would have let all 20 through.
    expect(count(statuses, 201)).toBeGreaterThanOrEqual(BURST);
    expect(count(statuses, 201)).toBeLessThanOrEqual(BURST + 3);
    expect(refusedBy).toEqual(new Set([a, b]));
    await a.waitForLine((line) => line.status === 429 && line.rateLimit === "shared-writes");
    const metrics = await (await fetch(`${a.adminUrl}/metrics`)).text();
    expect(metrics).toMatch(
      /portcullis_requests_total\{rule="write-orders",decision="deny",status="429"\} [1-9]/,
    );
  });

  it("count on local buckets, with one warning, when the sidecar has no --redis-url", async () => {
    const warning = await alone.waitForLine(
      (line) => line.level === "warn" && /no --redis-url/.test(String(line.msg)),
    );
    expect(warning.limits).toEqual(["shared-writes"]);
    const statuses: number[] = [];
    for (let i = 0; i < BURST + 4; i++) statuses.push((await post(alone, "writer")).status);
    expect(count(statuses, 201)).toBeGreaterThanOrEqual(BURST);
    expect(count(statuses, 429)).toBeGreaterThanOrEqual(1);
    expect(alone.lines.filter((line) => /no --redis-url/.test(String(line.msg)))).toHaveLength(1);
    expect(a.lines.some((line) => /no --redis-url/.test(String(line.msg)))).toBe(false);
  });

  it("fall back to local buckets while Redis is down: still limited, never a 5xx", async () => {
    await redis.stop();
    const statuses: number[] = [];
    for (let i = 0; i < BURST + 4; i++) statuses.push((await post(a, "admin")).status);
    expect(count(statuses, 201) + count(statuses, 429)).toBe(statuses.length);
    expect(count(statuses, 201)).toBeGreaterThanOrEqual(BURST);
    expect(count(statuses, 429)).toBeGreaterThanOrEqual(1);
    await a.waitForLine((line) => line.level === "warn" && /Redis unreachable/.test(String(line.msg)));
    // One warning per interval, not one per request.
    expect(a.lines.filter((line) => /Redis unreachable/.test(String(line.msg)))).toHaveLength(1);
    // The Redis client never holds up the drain.
    expect(await a.stop()).toBe(0);
  });
});

describe("the admin listener of proxy/main.ts", () => {
  it("publishes the assertion's public key at /jwks.json, a key of each process's own", async () => {
    const jwks = async (proxy: ProxyProcess) =>
      (await (await fetch(`${proxy.adminUrl}/jwks.json`)).json()) as { keys: Record<string, string>[] };
    const [fromB, fromAlone] = await Promise.all([jwks(b), jwks(alone)]);
    expect(fromB.keys).toEqual([
      {
        kty: "OKP",
        crv: "Ed25519",
        x: expect.any(String),
        kid: expect.any(String),
        alg: "EdDSA",
        use: "sig",
      },
    ]);
    expect(fromB.keys[0]?.kid).not.toBe(fromAlone.keys[0]?.kid);
    expect(JSON.stringify(fromB)).not.toMatch(/"d"/);
  });
});
