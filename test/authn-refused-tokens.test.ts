// The refused-token cache of the bearer verifier, against the real OpenID Provider: a replayed bad
// token costs a hash, not a signature check; refusals that depend on the IdP's keys are forgotten when
// they change; and a token refused only because the keys could not be fetched, or its kid was not yet
// published, verifies as soon as they can (key rotation and IdP outages are never made worse).
// Signature checks are counted at the real key set's key lookup, which jose calls once per check.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type IdentityProvider, startIdentityProvider } from "../examples/idp.ts";
import { KeySetRegistry, type RemoteKeySet } from "../proxy/authn/key-set.ts";
import { type BearerVerifier, createBearerVerifier } from "../proxy/authn/verify-bearer.ts";
import { countKeyLookups, examplePolicy, foreignKey, goodClaims, idpKey, sign } from "./support/authn.ts";

async function reasonOf(verifier: BearerVerifier, token: string): Promise<string> {
  const result = await verifier.verify(token);
  return result.ok ? "ok" : result.reason;
}

describe("refused tokens", () => {
  let idp: IdentityProvider;
  let registry: KeySetRegistry;
  let verifier: BearerVerifier;
  let keySet: RemoteKeySet;
  let lookups: { count(): number };
  let nowMs = Date.now();

  beforeAll(async () => {
    idp = await startIdentityProvider();
    registry = new KeySetRegistry({ unknownKidCooldownMs: 0 });
    verifier = createBearerVerifier(examplePolicy(idp), { keySets: registry, now: () => nowMs });
    await verifier.ready();
    keySet = registry.acquire({ issuer: idp.issuer });
    lookups = countKeyLookups(keySet);
  });

  afterAll(async () => {
    verifier?.close();
    if (keySet) registry.release(keySet);
    registry?.close();
    await idp?.stop();
  });

  /** A token under the IdP's own kid, signed by a key the IdP never had. */
  async function forged(extra: Record<string, unknown> = {}): Promise<string> {
    const key = await foreignKey("RS256", idpKey(idp).kid);
    return sign(key, goodClaims(idp, { ...extra, iat: Math.floor(nowMs / 1000) }));
  }

  it("answers a replayed forged token from memory: one signature check, not one per request", async () => {
    const token = await forged();
    const before = lookups.count();
    for (let i = 0; i < 5; i++) expect(await reasonOf(verifier, token)).toBe("bad_signature");
    expect(lookups.count() - before).toBe(1);
  });

  it("verifies a burst of one token once (the verifications in flight are shared)", async () => {
    const token = await forged({ jti: "burst" });
    const before = lookups.count();
    const reasons = await Promise.all(Array.from({ length: 8 }, () => reasonOf(verifier, token)));
    expect(reasons).toEqual(Array(8).fill("bad_signature"));
    expect(lookups.count() - before).toBe(1);
    // A valid token in a burst, too: one check, and every caller gets the identity.
    const good = await sign(idpKey(idp), goodClaims(idp, { iat: Math.floor(nowMs / 1000) }));
    const valid = await Promise.all(Array.from({ length: 8 }, () => reasonOf(verifier, good)));
    expect(valid).toEqual(Array(8).fill("ok"));
    expect(lookups.count() - before).toBe(2);
  });

  it("forgets a refusal after its TTL (30 s)", async () => {
    const token = await forged({ jti: "ttl" });
    const before = lookups.count();
    expect(await reasonOf(verifier, token)).toBe("bad_signature");
    nowMs += 29_000;
    expect(await reasonOf(verifier, token)).toBe("bad_signature");
    expect(lookups.count() - before).toBe(1);
    nowMs += 2_000;
    expect(await reasonOf(verifier, token)).toBe("bad_signature");
    expect(lookups.count() - before).toBe(2);
  });

  it("refuses by its claims alone, before any signature check, a token no IdP issues", async () => {
    const nowSeconds = Math.floor(nowMs / 1000);
    const before = lookups.count();
    const noSubject = await sign(idpKey(idp), goodClaims(idp, { sub: undefined, iat: nowSeconds }));
    expect(await reasonOf(verifier, noSubject)).toBe("missing_sub");
    const fromTheFuture = await sign(idpKey(idp), goodClaims(idp, { iat: nowSeconds + 3600 }));
    expect(await reasonOf(verifier, fromTheFuture)).toBe("issued_in_future");
    expect(lookups.count() - before).toBe(0);
  });

  it("keeps refusing an expired token from memory, without decoding it again", async () => {
    const exp = Math.floor(nowMs / 1000) - 120;
    const token = await sign(idpKey(idp), goodClaims(idp, { iat: exp - 300, exp }));
    expect(await reasonOf(verifier, token)).toBe("expired");
    // Were it decoded again with the clock set back, it would pass; an expired token stays expired.
    nowMs -= 600_000;
    try {
      expect(await reasonOf(verifier, token)).toBe("expired");
    } finally {
      nowMs += 600_000;
    }
  });

  it("forgets a signature refusal when the issuer's published keys change", async () => {
    const token = await forged({ jti: "rotation" });
    const before = lookups.count();
    expect(await reasonOf(verifier, token)).toBe("bad_signature");
    expect(await reasonOf(verifier, token)).toBe("bad_signature");
    expect(lookups.count() - before).toBe(1);
    await idp.rotateKeys();
    await keySet.refresh();
    expect(await reasonOf(verifier, token)).toBe("bad_signature");
    expect(lookups.count() - before).toBe(2);
  });

  it("never remembers an unknown kid: a key published after the first try verifies at once", async () => {
    // The IdP signs with a new key, but its JWKS cannot be fetched when the first token arrives.
    await idp.rotateKeys();
    const token = await sign(idpKey(idp), goodClaims(idp, { iat: Math.floor(nowMs / 1000) }));
    await idp.stop();
    try {
      expect(await reasonOf(verifier, token)).toBe("unknown_kid");
      expect(await reasonOf(verifier, token)).toBe("unknown_kid");
    } finally {
      await idp.start();
    }
    expect(await reasonOf(verifier, token)).toBe("ok");
  });
});

describe("an IdP unreachable at start", () => {
  it("never remembers keys_unavailable: the same token verifies once the keys load", async () => {
    const idp = await startIdentityProvider();
    await idp.stop();
    const registry = new KeySetRegistry({ retryMinMs: 20, retryMaxMs: 50 });
    const verifier = createBearerVerifier(examplePolicy(idp), { keySets: registry });
    try {
      const token = await sign(idpKey(idp), goodClaims(idp));
      expect(await reasonOf(verifier, token)).toBe("keys_unavailable");
      expect(await reasonOf(verifier, token)).toBe("keys_unavailable");
      await idp.start();
      await verifier.ready();
      expect(await reasonOf(verifier, token)).toBe("ok");
    } finally {
      verifier.close();
      registry.close();
      await idp.stop();
    }
  });
});
