// JWKS key sets against the real OpenID Provider: discovery, single-flight fetches, unknown-kid refetch
// cool-down, rotation under load, outage (stale-if-error, bounded), and the fetch limits. Hostile
// responses no real IdP sends (oversized, chunked, redirects, junk) come from a small local server.

import { generateKeyPairSync } from "node:crypto";
import { once } from "node:events";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { decodeProtectedHeader, importJWK, SignJWT } from "jose";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { type IdentityProvider, startIdentityProvider } from "../examples/idp.ts";
import {
  type FetchOutcome,
  type KeySetOptions,
  KeySetRegistry,
  type KeySetSource,
  RemoteKeySet,
} from "../proxy/authn/key-set.ts";
import { type BearerVerifier, createBearerVerifier } from "../proxy/authn/verify-bearer.ts";
import { examplePolicy, foreignKey, goodClaims, idpKey, publicPart, sign } from "./support/authn.ts";

let idp: IdentityProvider;
const cleanups: (() => unknown)[] = [];

beforeAll(async () => {
  idp = await startIdentityProvider({ tokenTtlSeconds: 300 });
});

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  // Every test starts from a running IdP that publishes one RSA and one EC key.
  await idp.start();
  await idp.dropPreviousKeys();
});

afterAll(async () => {
  await idp?.stop();
});

function keySet(source: KeySetSource, options: KeySetOptions = {}): RemoteKeySet {
  const set = new RemoteKeySet(source, options);
  cleanups.push(() => set.close());
  return set;
}

function verifierFor(options: KeySetOptions = {}, policy = examplePolicy(idp)) {
  const registry = new KeySetRegistry(options);
  const verifier = createBearerVerifier(policy, { keySets: registry });
  cleanups.push(
    () => registry.close(),
    () => verifier.close(),
  );
  const set = registry.keySets()[0]!;
  return { registry, verifier, set };
}

/** Resolves with the next fetch outcome of `set` that satisfies `match`. */
function nextFetch(
  set: RemoteKeySet,
  match: (outcome: FetchOutcome, detail?: string) => boolean = () => true,
): Promise<{ outcome: FetchOutcome; detail?: string | undefined }> {
  return new Promise((resolve) => {
    const stop = set.observe((_issuer, outcome, detail) => {
      if (!match(outcome, detail)) return;
      stop();
      resolve({ outcome, detail });
    });
  });
}

async function reason(verifier: BearerVerifier, token: string): Promise<string> {
  const result = await verifier.verify(token);
  return result.ok ? "ok" : result.reason;
}

async function tokens(count: number): Promise<string[]> {
  return Promise.all(
    Array.from({ length: count }, (_, i) => idp.token(["reader", "writer", "admin"][i % 3]!)),
  );
}

async function jwksText(): Promise<string> {
  return (await fetch(idp.jwksUri, { headers: { connection: "close" } })).text();
}

describe("loading keys", () => {
  it("discovers the JWKS URL from the issuer", async () => {
    idp.resetCounts();
    const set = keySet({ issuer: idp.issuer });
    await set.ready();
    expect(set.isReady()).toBe(true);
    expect(set.jwksUri()).toBe(idp.jwksUri);
    expect(set.kids()).toEqual(idp.kids());
    expect(idp.counts()).toMatchObject({ discovery: 1, jwks: 1 });
    expect(set.ageSeconds()).toBeLessThan(5);
  });

  it("uses an explicit jwksUri without discovery", async () => {
    idp.resetCounts();
    const set = keySet({ issuer: idp.issuer, jwksUri: idp.jwksUri });
    await set.ready();
    expect(idp.counts()).toMatchObject({ discovery: 0, jwks: 1 });
  });

  it("refuses a discovery document for another issuer (exact string match)", async () => {
    idp.resetCounts();
    const set = keySet({ issuer: `${idp.issuer}/` }, { retryMinMs: 10_000 });
    expect(await nextFetch(set)).toEqual({ outcome: "error", detail: "discovery_issuer_mismatch" });
    expect(set.isReady()).toBe(false);
    expect(set.ageSeconds()).toBe(Number.POSITIVE_INFINITY);
    expect(idp.counts()).toMatchObject({ discovery: 1, jwks: 0 });

    const { verifier } = verifierFor(
      { retryMinMs: 10_000 },
      examplePolicy(idp, { issuer: `${idp.issuer}/` }),
    );
    const token = await sign(idpKey(idp), goodClaims(idp, { iss: `${idp.issuer}/` }));
    expect(await reason(verifier, token)).toBe("keys_unavailable");
    expect(verifier.isReady()).toBe(false);
  });

  it("retries with backoff until the first fetch succeeds", async () => {
    await idp.stop();
    const set = keySet({ issuer: idp.issuer }, { retryMinMs: 20, retryMaxMs: 40 });
    const errors = vi.fn();
    set.observe((_issuer, outcome) => outcome === "error" && errors());
    await vi.waitFor(() => expect(errors.mock.calls.length).toBeGreaterThanOrEqual(3), { timeout: 10_000 });
    expect(set.isReady()).toBe(false);
    await idp.start();
    await set.ready();
    expect(set.isReady()).toBe(true);
  });

  it("keeps one fetch in flight", async () => {
    const set = keySet({ issuer: idp.issuer, jwksUri: idp.jwksUri });
    await set.ready();
    idp.resetCounts();
    await Promise.all([set.refresh(), set.refresh(), set.refresh(), set.refresh(), set.refresh()]);
    expect(idp.counts().jwks).toBe(1);
  });

  it("reports every fetch to onFetch, and never a reason for a successful one", async () => {
    const events: unknown[] = [];
    const set = keySet(
      { issuer: idp.issuer },
      { onFetch: (issuer, outcome, detail) => events.push([issuer, outcome, detail]) },
    );
    await set.ready();
    expect(events).toEqual([[idp.issuer, "ok", undefined]]);
  });
});

describe("unknown kid", () => {
  it("refetches at most once per cool-down under a burst", async () => {
    // The key set's clock is ours: the cool-down passes when we say so, however slow the machine.
    let now = Date.now();
    const { verifier } = verifierFor({ now: () => now });
    await verifier.ready();
    const attacker = await foreignKey("RS256");
    const forged = await Promise.all(
      Array.from({ length: 40 }, (_, i) => sign(attacker, goodClaims(idp), { kid: `unknown-${i}` })),
    );
    const burst = async () => new Set(await Promise.all(forged.map((token) => reason(verifier, token))));
    idp.resetCounts();
    expect(await burst()).toEqual(new Set(["unknown_kid"]));
    now += 29_000;
    expect(await burst()).toEqual(new Set(["unknown_kid"]));
    expect(idp.counts().jwks).toBe(1);
    now += 1_000;
    expect(await burst()).toEqual(new Set(["unknown_kid"]));
    expect(idp.counts().jwks).toBe(2);
  });

  it("rotation at the IdP during a burst loses no valid token: the new kid triggers one refetch", async () => {
    const { verifier, set } = verifierFor();
    await verifier.ready();
    const oldTokens = await tokens(30);
    idp.resetCounts();
    const inFlight = oldTokens.map((token) => verifier.verify(token));
    await idp.rotateKeys();
    const newTokens = await tokens(30);
    expect(decodeProtectedHeader(newTokens[0]!).kid).not.toBe(decodeProtectedHeader(oldTokens[0]!).kid);
    const results = await Promise.all([
      ...inFlight,
      ...newTokens.map((token) => verifier.verify(token)),
      ...oldTokens.map((token) => verifier.verify(token)),
    ]);
    expect(results.filter((result) => !result.ok)).toEqual([]);
    expect(idp.counts().jwks).toBe(1);
    expect(set.kids()).toEqual(idp.kids());
  });

  it("drops cached verifications when the key that verified them is removed", async () => {
    const { verifier, set } = verifierFor();
    await verifier.ready();
    const [before] = await tokens(1);
    expect(await reason(verifier, before!)).toBe("ok");
    expect(await reason(verifier, before!)).toBe("ok");
    await idp.rotateKeys({ keepPrevious: false });
    const [after] = await tokens(1);
    expect(await reason(verifier, after!)).toBe("ok");
    expect(set.kids()).not.toContain(decodeProtectedHeader(before!).kid);
    expect(verifier.verifyCached(before!)).toBeUndefined();
    expect(await reason(verifier, before!)).toBe("unknown_kid");
  });

  it("keeps cached verifications whose key is still published after a rotation", async () => {
    const { verifier } = verifierFor();
    await verifier.ready();
    const [before] = await tokens(1);
    const first = await verifier.verify(before!);
    await idp.rotateKeys();
    expect(await reason(verifier, (await tokens(1))[0]!)).toBe("ok");
    const again = await verifier.verify(before!);
    expect(again.ok && again.identity).toBe(first.ok && first.identity);
  });

  it("refuses a token without kid when several keys of its type are published", async () => {
    const { verifier, set } = verifierFor();
    await verifier.ready();
    const key = idpKey(idp);
    const withoutKid = await new SignJWT(goodClaims(idp))
      .setProtectedHeader({ alg: "RS256", typ: "at+jwt" })
      .sign(await importJWK({ ...key, kid: undefined }, "RS256"));
    expect(await reason(verifier, withoutKid)).toBe("ok");
    await idp.rotateKeys();
    await set.refresh();
    expect(await reason(verifier, withoutKid)).toBe("ambiguous_key");
  });
});

describe("IdP outage", () => {
  const fast = { refreshIntervalMs: 50, retryMinMs: 10, retryMaxMs: 50 };

  it("keeps verifying with the last good keys (stale-if-error), past several refresh intervals", async () => {
    const { verifier, set } = verifierFor(fast);
    await verifier.ready();
    const [cached, fresh] = await tokens(2);
    expect(await reason(verifier, cached!)).toBe("ok");
    await idp.stop();
    const errors = vi.fn();
    set.observe((_issuer, outcome) => outcome === "error" && errors());
    await vi.waitFor(() => expect(errors.mock.calls.length).toBeGreaterThanOrEqual(4), { timeout: 10_000 });
    expect(set.ageSeconds()).toBeGreaterThan(0.1);
    expect(verifier.isReady()).toBe(true);
    expect(await reason(verifier, cached!)).toBe("ok");
    expect(await reason(verifier, fresh!)).toBe("ok");
  });

  it("stops accepting once the keys are older than the max staleness, and recovers with the IdP", async () => {
    const { verifier, set } = verifierFor({ ...fast, maxStalenessMs: 1_000 });
    await verifier.ready();
    const [cached, fresh] = await tokens(2);
    expect(await reason(verifier, cached!)).toBe("ok");
    await idp.stop();
    await vi.waitFor(() => expect(set.ageSeconds()).toBeGreaterThan(1), { timeout: 10_000 });
    expect(verifier.isReady()).toBe(false);
    expect(await reason(verifier, cached!)).toBe("keys_unavailable");
    expect(await reason(verifier, fresh!)).toBe("keys_unavailable");
    await idp.start();
    await vi.waitFor(() => expect(verifier.isReady()).toBe(true), { timeout: 10_000 });
    expect(await reason(verifier, fresh!)).toBe("ok");
  });
});

describe("fetch limits", () => {
  it("refuses a JWKS over the size cap and keeps the last good set", async () => {
    const size = Buffer.byteLength(await jwksText());
    // An explicit jwksUri: the discovery document alone is larger than this cap.
    const { verifier, set } = verifierFor(
      { maxResponseBytes: size + 200 },
      examplePolicy(idp, { jwksUri: idp.jwksUri }),
    );
    await verifier.ready();
    const [old] = await tokens(1);
    await idp.rotateKeys(); // four keys now: about twice the size
    expect(Buffer.byteLength(await jwksText())).toBeGreaterThan(size + 200);
    const refused = nextFetch(set);
    await set.refresh();
    expect(await refused).toEqual({ outcome: "error", detail: "too_large" });
    expect(await reason(verifier, old!)).toBe("ok");
    expect(await reason(verifier, (await tokens(1))[0]!)).toBe("unknown_kid");
  });

  describe("against a hostile JWKS server", () => {
    let server: Server;
    let base: string;
    let respond: (req: IncomingMessage, res: ServerResponse) => void;

    beforeAll(async () => {
      server = createServer((req, res) => respond(req, res));
      server.listen(0, "127.0.0.1");
      await once(server, "listening");
      base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    });

    afterAll(async () => {
      server.closeAllConnections();
      server.close();
    });

    const realJwks = async (res: ServerResponse) => res.end(await jwksText());

    async function firstOutcome(options: KeySetOptions = {}) {
      const set = keySet({ issuer: idp.issuer, jwksUri: `${base}/jwks` }, { retryMinMs: 10_000, ...options });
      return nextFetch(set);
    }

    it("does not follow a redirect, even to the real JWKS, and keeps the last good set", async () => {
      respond = (_req, res) => void realJwks(res);
      const set = keySet({ issuer: idp.issuer, jwksUri: `${base}/jwks` });
      await set.ready();
      const { verifier } = verifierFor({}, examplePolicy(idp, { jwksUri: `${base}/jwks` }));
      await verifier.ready();
      for (const status of [301, 302, 307, 308]) {
        respond = (_req, res) => res.writeHead(status, { location: idp.jwksUri }).end();
        idp.resetCounts();
        const refused = nextFetch(set);
        await set.refresh();
        expect(await refused).toEqual({ outcome: "error", detail: "redirect" });
        expect(idp.counts().jwks).toBe(0);
        expect(set.isReady()).toBe(true);
      }
      expect(await reason(verifier, (await tokens(1))[0]!)).toBe("ok");
    });

    it("counts a chunked body while streaming it", async () => {
      respond = (_req, res) => {
        res.writeHead(200, { "content-type": "application/json" });
        const chunk = `{"keys":[${" ".repeat(16 * 1024)}`;
        let sent = 0;
        const write = () => {
          while (sent < 100 && res.write(chunk)) sent++;
          if (sent < 100 && !res.destroyed) res.once("drain", write);
          else res.end("]}");
        };
        write();
      };
      expect(await firstOutcome({ maxResponseBytes: 64 * 1024 })).toEqual({
        outcome: "error",
        detail: "too_large",
      });
    });

    it("refuses a declared Content-Length over the cap without reading the body", async () => {
      respond = (_req, res) => res.writeHead(200, { "content-length": 10 * 1024 * 1024 }).flushHeaders();
      expect(await firstOutcome({ maxResponseBytes: 1024 })).toEqual({
        outcome: "error",
        detail: "too_large",
      });
    });

    it("times out a server that never answers", async () => {
      respond = () => {};
      expect(await firstOutcome({ timeoutMs: 200 })).toEqual({ outcome: "error", detail: "timeout" });
    });

    it("times out a body that never ends", async () => {
      respond = (_req, res) => res.writeHead(200).write('{"keys":[');
      expect(await firstOutcome({ timeoutMs: 200 })).toEqual({ outcome: "error", detail: "timeout" });
    });

    it.each([
      ["a server error", (res: ServerResponse) => res.writeHead(500).end("{}"), "http_500"],
      ["not JSON", (res: ServerResponse) => res.end("<html>"), "invalid_json"],
      ["not a key set", (res: ServerResponse) => res.end('{"keys":{}}'), "not_a_jwks"],
      ["an array", (res: ServerResponse) => res.end("[]"), "not_a_jwks"],
      ["invalid UTF-8", (res: ServerResponse) => res.end(Buffer.from([0x7b, 0xff, 0x7d])), "invalid_utf8"],
    ])("refuses %s", async (_name, send, detail) => {
      respond = (_req, res) => send(res);
      expect(await firstOutcome()).toEqual({ outcome: "error", detail });
    });

    it("skips keys it must not use, and refuses a set with none left", async () => {
      const rsa = publicPart(await foreignKey("RS256", "rsa"));
      // jose will not generate an RSA key under 2048 bits; node:crypto will.
      const weak = generateKeyPairSync("rsa", { modulusLength: 1024 }).publicKey.export({ format: "jwk" });
      const unusable = [
        { kty: "oct", k: "c2VjcmV0", kid: "hmac", alg: "HS256" },
        { ...rsa, kid: "enc", use: "enc" },
        { ...rsa, kid: "ops", key_ops: ["encrypt"] },
        { ...rsa, kid: "rsa-oaep", alg: "RSA-OAEP" },
        { ...rsa, kid: "hs", alg: "HS256" },
        await foreignKey("ES256", "private"),
        { ...weak, kid: "weak" },
        { kty: "EC", crv: "secp256k1", x: "AA", y: "AA", kid: "k1" },
        { kty: "RSA", n: "not base64url!", e: "AQAB", kid: "broken" },
        { kid: "no-kty" },
        "a string",
        null,
      ];
      respond = (_req, res) => res.end(JSON.stringify({ keys: unusable }));
      expect(await firstOutcome()).toEqual({ outcome: "error", detail: "no_usable_keys" });

      respond = (_req, res) => res.end(JSON.stringify({ keys: [...unusable, { ...rsa, kid: "good" }] }));
      const set = keySet({ issuer: idp.issuer, jwksUri: `${base}/jwks` });
      await set.ready();
      expect(set.kids()).toEqual(["good"]);
    });
  });
});

describe("key set registry", () => {
  it("shares warm key sets between verifiers of the same issuers, across a policy reload", async () => {
    const registry = new KeySetRegistry();
    cleanups.push(() => registry.close());
    idp.resetCounts();
    const first = createBearerVerifier(examplePolicy(idp), { keySets: registry });
    await first.ready();
    const [token] = await tokens(1);
    const reloaded = createBearerVerifier(examplePolicy(idp), { keySets: registry });
    first.close();
    expect(reloaded.isReady()).toBe(true);
    expect(await reason(reloaded, token!)).toBe("ok");
    expect(registry.keySets()).toHaveLength(1);
    expect(idp.counts()).toMatchObject({ discovery: 1, jwks: 1 });

    const explicit = createBearerVerifier(examplePolicy(idp, { jwksUri: idp.jwksUri }), {
      keySets: registry,
    });
    expect(registry.keySets()).toHaveLength(2);
    await explicit.ready();
    explicit.close();
    reloaded.close();
    expect(registry.keySets()).toHaveLength(0);
  });

  it("reports fetches to a verifier's onFetch only while it is open", async () => {
    const registry = new KeySetRegistry();
    cleanups.push(() => registry.close());
    const keep = createBearerVerifier(examplePolicy(idp), { keySets: registry });
    cleanups.push(() => keep.close());
    const events: string[] = [];
    const watched = createBearerVerifier(examplePolicy(idp), {
      keySets: registry,
      onFetch: (_issuer, outcome) => events.push(outcome),
    });
    await watched.ready();
    const set = registry.keySets()[0]!;
    await set.refresh();
    expect(events).toContain("ok");
    watched.close();
    const count = events.length;
    await set.refresh();
    expect(events).toHaveLength(count);
  });
});
