// Floods before authentication, through the in-process proxy with the real IdP and the real FastAPI
// app: spec.authentication.failedAuthenticationLimit (a bucket per peer address, held by every
// verification and given back when the token checks out) answers a flood of forged, expired or garbage
// tokens with 429 before any signature check, on every path that needs a token, while tokens the
// sidecar verified before keep passing. Signature checks are counted at the real key set's key lookup;
// the limiter runs on a controlled clock, so "the bucket is empty" does not depend on this machine.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RemoteKeySet } from "../proxy/authn/key-set.ts";
import { RateLimiter } from "../proxy/rate-limit.ts";
import { countKeyLookups, foreignKey, goodClaims, idpKey, sign } from "./support/authn.ts";
import { compileDocument, exampleDocument } from "./support/example-policy.ts";
import { identityOf, type RunningProxy, type Stack, startProxy, startStack } from "./support/proxy.ts";

let stack: Stack;
let proxy: RunningProxy;
let keySet: RemoteKeySet;
let lookups: { count(): number };
let now = 1_000_000;

beforeAll(async () => {
  stack = await startStack();
  const document = exampleDocument(stack.idp.issuer);
  Object.assign(document.spec.authentication, { failedAuthenticationLimit: { perSecond: 1, burst: 3 } });
  proxy = await startProxy(compileDocument(document), new URL(stack.app.url), stack.keySets, {
    rateLimiter: new RateLimiter({ now: () => now }),
  });
  await proxy.runtime.verifier.ready();
  // The proxy's verifier and this share the registry's one key set for the issuer.
  keySet = stack.keySets.acquire({ issuer: stack.idp.issuer });
  lookups = countKeyLookups(keySet);
});

afterAll(async () => {
  await proxy?.close();
  if (keySet) stack.keySets.release(keySet);
  await stack?.stop();
});

async function get(path: string, authorization?: string): Promise<Response> {
  const response = await fetch(`${proxy.url}${path}`, {
    headers: authorization === undefined ? {} : { authorization },
  });
  await response.arrayBuffer();
  return response;
}

let forgeries = 0;
/** A distinct token each time (so no cache helps), under the IdP's kid, signed by a foreign key. */
async function forged(): Promise<string> {
  const key = await foreignKey("RS256", idpKey(stack.idp).kid);
  return sign(key, goodClaims(stack.idp, { jti: `forged-${++forgeries}` }));
}

describe("failedAuthenticationLimit (perSecond 1, burst 3)", () => {
  let reader: string;

  it("lets valid tokens through without draining the bucket", async () => {
    reader = await stack.token("reader");
    expect((await get("/orders", `Bearer ${reader}`)).status).toBe(200);
    // Five tokens never seen before, each verified: all pass, the peer's bucket stays full.
    for (let i = 0; i < 5; i++) {
      const fresh = await stack.token(i % 2 === 0 ? "writer" : "admin");
      expect((await get("/orders", `Bearer ${fresh}`)).status).toBe(200);
    }
  });

  it("answers a flood of forged tokens with 429 before any signature check once 3 failed", async () => {
    const before = lookups.count();
    const statuses: number[] = [];
    for (let i = 0; i < 10; i++) statuses.push((await get("/orders", `Bearer ${await forged()}`)).status);
    expect(statuses).toEqual([401, 401, 401, ...Array(7).fill(429)]);
    expect(lookups.count() - before).toBe(3);

    const refused = await fetch(`${proxy.url}/orders/1`, {
      headers: { authorization: `Bearer ${await forged()}` },
    });
    expect(refused.status).toBe(429);
    expect(refused.headers.get("retry-after")).toBe("1");
    expect(await refused.json()).toMatchObject({ status: 429, title: "Too Many Requests" });
    expect(proxy.logs.at(-1)).toMatchObject({
      path: "/orders/1",
      rule: "read-orders",
      decision: "deny",
      reason: "rate-limited",
      rateLimit: "failedAuthenticationLimit",
      status: 429,
    });
  });

  it("covers every path that needs a token, garbage and malformed credentials too", async () => {
    const before = lookups.count();
    // A path no rule matches still verifies a token (401 or 403): limited as well.
    expect((await get("/nowhere", `Bearer ${await forged()}`)).status).toBe(429);
    expect((await get("/orders", "Bearer not.a.jwt")).status).toBe(429);
    expect((await get("/orders", "Bearer ")).status).toBe(429);
    expect(lookups.count()).toBe(before);
    // Public rules need no token and are never limited by it; nor is a request without a token.
    expect((await get("/healthz", `Bearer ${await forged()}`)).status).toBe(200);
    expect((await get("/orders")).status).toBe(401);
  });

  it("keeps serving tokens the sidecar verified before, from the peer whose bucket is empty", async () => {
    const before = lookups.count();
    expect((await get("/orders", `Bearer ${reader}`)).status).toBe(200);
    expect(lookups.count()).toBe(before);
    // A valid token never seen before would need a verification: it waits like the rest.
    expect((await get("/orders", `Bearer ${await stack.token("writer")}`)).status).toBe(429);
  });

  it("refills at perSecond: one more verification a second", async () => {
    now += 1000;
    const writer = await stack.token("writer");
    // The held token comes back: a valid token does not use up the refill.
    expect((await get("/orders", `Bearer ${writer}`)).status).toBe(200);
    expect((await get("/orders", `Bearer ${await forged()}`)).status).toBe(401);
    expect((await get("/orders", `Bearer ${await forged()}`)).status).toBe(429);
  });

  it("counts expired tokens and foreign audiences as failures too", async () => {
    now += 2000;
    const key = idpKey(stack.idp);
    const expired = await sign(key, goodClaims(stack.idp, { iat: 1_000, exp: 2_000 }));
    const foreign = await sign(key, goodClaims(stack.idp, { aud: "api://other" }));
    expect((await get("/orders", `Bearer ${expired}`)).status).toBe(401);
    expect((await get("/orders", `Bearer ${foreign}`)).status).toBe(401);
    expect((await get("/orders", `Bearer ${expired}`)).status).toBe(429);
  });
});

describe("without failedAuthenticationLimit (the default)", () => {
  it("refuses every forged token with 401, each costing a signature check", async () => {
    const before = lookups.count();
    for (let i = 0; i < 5; i++) {
      expect(
        (
          await fetch(`${stack.proxy.url}/orders`, {
            headers: { authorization: `Bearer ${await forged()}` },
          })
        ).status,
      ).toBe(401);
    }
    expect(lookups.count() - before).toBe(5);
  });
});

describe("key: ip limits count before authentication", () => {
  let limited: RunningProxy;

  beforeAll(async () => {
    const document = exampleDocument(stack.idp.issuer);
    document.spec.rateLimits.push({
      name: "reads-per-peer",
      rules: ["read-orders"],
      key: "ip",
      requestsPerSecond: 1,
      burst: 3,
    });
    limited = await startProxy(compileDocument(document), new URL(stack.app.url), stack.keySets, {
      rateLimiter: new RateLimiter({ now: () => now }),
    });
  });
  afterAll(async () => {
    await limited?.close();
  });

  it("counts the peer's refused requests too, and answers 429 before looking at the token", async () => {
    const send = async (authorization?: string) => {
      const response = await fetch(`${limited.url}/orders`, {
        headers: authorization === undefined ? {} : { authorization },
      });
      await response.arrayBuffer();
      return response.status;
    };
    expect(await send(`Bearer ${await forged()}`)).toBe(401);
    expect(await send()).toBe(401);
    expect(await send("Bearer garbage")).toBe(401);
    // Three requests, all refused, used the bucket up: a valid token from the same peer waits.
    const before = lookups.count();
    expect(await send(`Bearer ${await stack.token("reader")}`)).toBe(429);
    expect(await send(`Bearer ${await forged()}`)).toBe(429);
    expect(lookups.count()).toBe(before);
    expect(limited.logs.at(-1)).toMatchObject({ reason: "rate-limited", rateLimit: "reads-per-peer" });
  });
});

describe("in DryRun", () => {
  let dry: RunningProxy;

  beforeAll(async () => {
    const document = exampleDocument(stack.idp.issuer);
    Object.assign(document.spec, { mode: "DryRun" });
    Object.assign(document.spec.authentication, { failedAuthenticationLimit: { perSecond: 1, burst: 1 } });
    dry = await startProxy(compileDocument(document), new URL(stack.app.url), stack.keySets, {
      rateLimiter: new RateLimiter({ now: () => now }),
    });
    await dry.runtime.verifier.ready();
  });
  afterAll(async () => {
    await dry?.close();
  });

  it("records the 429 a limit before authentication would answer, and still forwards the verified identity", async () => {
    const forgedResponse = await fetch(`${dry.url}/orders`, {
      headers: { authorization: `Bearer ${await forged()}` },
    });
    expect(forgedResponse.status).toBe(200);
    expect(identityOf((await forgedResponse.json()) as Record<string, unknown>).x_auth).toEqual({});
    // The peer's bucket is empty: Enforce would answer 429; DryRun verifies and forwards as without it.
    const response = await fetch(`${dry.url}/orders`, {
      headers: { authorization: `Bearer ${await stack.token("reader")}` },
    });
    expect(response.status).toBe(200);
    const seen = identityOf((await response.json()) as Record<string, unknown>);
    expect(seen.x_auth["x-auth-subject"]).toEqual(["reader"]);
    expect(dry.logs.at(-1)).toMatchObject({
      decision: "would_deny",
      reason: "rate-limited",
      rateLimit: "failedAuthenticationLimit",
      wouldStatus: 429,
      subject: "reader",
      status: 200,
    });
  });
});
