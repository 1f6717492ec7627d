// The signed identity assertion: a short-lived JWT the sidecar signs for the app, so the app can prove
// its identity headers came through the sidecar (headers alone are trusted only because the app binds
// to loopback). Ed25519: the cheapest signature Node offers. The key is generated at start and never
// leaves the process; the app fetches the public half from the admin listener's /jwks.json.

import { randomUUID } from "node:crypto";
import { calculateJwkThumbprint, exportJWK, generateKeyPair, type JWK, SignJWT } from "jose";
import type { Identity } from "./authn/verify-bearer.ts";

export const ASSERTION_TYPE = "portcullis-assertion+jwt";

export interface AssertionSigner {
  /** An assertion for this identity, reused for the same token while more than half its life remains. */
  assertionFor(token: string, identity: Identity, nowSeconds: number): Promise<string>;
  /** The public key set the app verifies assertions with. */
  readonly jwks: { keys: JWK[] };
}

export interface AssertionOptions {
  /** `iss` of assertions, e.g. `portcullis/<namespace>/<policy>`. */
  issuer: string;
  /** `aud` of assertions: the app. */
  audience: string;
  ttlSeconds: number;
  cacheSize?: number;
}

export async function createAssertionSigner(options: AssertionOptions): Promise<AssertionSigner> {
  const { privateKey, publicKey } = await generateKeyPair("EdDSA", { crv: "Ed25519" });
  const publicJwk = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(publicJwk);
  const jwks = { keys: [{ ...publicJwk, kid, alg: "EdDSA", use: "sig" }] };
  const cacheSize = options.cacheSize ?? 10_000;
  // Map iteration order is insertion order: deleting and re-inserting on a hit makes it an LRU.
  const cache = new Map<string, { assertion: string; refreshAt: number; expiresAt: number }>();

  async function sign(identity: Identity, now: number): Promise<{ assertion: string; expiresAt: number }> {
    const expiresAt = Math.min(now + options.ttlSeconds, identity.expiresAt);
    const assertion = await new SignJWT({
      idp: identity.issuer,
      ...(identity.clientId !== undefined ? { client_id: identity.clientId } : {}),
      roles: identity.roles,
      scope: identity.scopes.join(" "),
    })
      .setProtectedHeader({ alg: "EdDSA", kid, typ: ASSERTION_TYPE })
      .setIssuer(options.issuer)
      .setAudience(options.audience)
      .setSubject(identity.subject ?? identity.clientId ?? "")
      .setIssuedAt(now)
      .setExpirationTime(expiresAt)
      .setJti(randomUUID())
      .sign(privateKey);
    return { assertion, expiresAt };
  }

  return {
    jwks,
    async assertionFor(token, identity, now) {
      const hit = cache.get(token);
      if (hit && now < hit.refreshAt && now < hit.expiresAt) {
        cache.delete(token);
        cache.set(token, hit);
        return hit.assertion;
      }
      const { assertion, expiresAt } = await sign(identity, now);
      cache.delete(token);
      cache.set(token, { assertion, expiresAt, refreshAt: now + Math.floor((expiresAt - now) / 2) });
      if (cache.size > cacheSize) cache.delete(cache.keys().next().value as string);
      return assertion;
    },
  };
}
