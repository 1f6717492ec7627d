// The signed identity assertion: a short-lived JWT the sidecar signs for the app, so the app can prove
// its identity headers came through the sidecar (headers alone are trusted only because the app binds
// to loopback). Ed25519: the cheapest signature Node offers, and node:crypto signs it synchronously, so
// the request path needs no extra promise. The key is generated once per process and never leaves it
// (hot reloads keep it); the app fetches the public half from the admin listener's /jwks.json.

import { createHash, generateKeyPairSync, type KeyObject, randomUUID, sign } from "node:crypto";
import type { Identity } from "./authn/verify-bearer.ts";

export const ASSERTION_TYPE = "portcullis-assertion+jwt";
/** `iss` of every assertion. */
export const ASSERTION_ISSUER = "portcullis";

/** An Ed25519 public key as a JWK (RFC 8037). */
export interface AssertionJwk {
  kty: "OKP";
  crv: "Ed25519";
  x: string;
  kid: string;
  alg: "EdDSA";
  use: "sig";
}

export interface AssertionSigner {
  /**
   * The assertion for a verified identity, `aud` = `audience` (the policy's name), `exp` = the earlier of
   * the token's `exp` and now + `ttlSeconds`. Signed once per identity and reused while more than half
   * its life remains: the verifier hands out one Identity object per cached token, so a repeated token
   * costs a WeakMap lookup, and a policy reload (new verifier, new identities, maybe new roles) re-signs.
   */
  assertionFor(identity: Identity, audience: string, ttlSeconds: number, nowSeconds: number): string;
  /** The public key set the app verifies assertions with. */
  readonly jwks: { readonly keys: readonly AssertionJwk[] };
}

interface SignedAssertion {
  assertion: string;
  audience: string;
  ttlSeconds: number;
  refreshAt: number;
  expiresAt: number;
}

export function createAssertionSigner(): AssertionSigner {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const jwk = publicJwk(publicKey);
  const encodedHeader = base64url(JSON.stringify({ alg: "EdDSA", kid: jwk.kid, typ: ASSERTION_TYPE }));
  // Weak keys: an entry lives exactly as long as the verifier keeps the token's identity.
  const signed = new WeakMap<Identity, SignedAssertion>();

  function signFor(identity: Identity, audience: string, ttlSeconds: number, now: number): SignedAssertion {
    const expiresAt = Math.min(now + ttlSeconds, identity.expiresAt);
    const payload = {
      iss: ASSERTION_ISSUER,
      aud: audience,
      sub: identity.subject ?? identity.clientId ?? "",
      ...(identity.clientId !== undefined ? { client_id: identity.clientId } : {}),
      roles: identity.roles,
      scope: identity.scopes.join(" "),
      idp: identity.issuer,
      iat: now,
      exp: expiresAt,
      jti: randomUUID(),
    };
    const input = `${encodedHeader}.${base64url(JSON.stringify(payload))}`;
    const signature = sign(null, Buffer.from(input), privateKey).toString("base64url");
    return {
      assertion: `${input}.${signature}`,
      audience,
      ttlSeconds,
      refreshAt: now + Math.floor((expiresAt - now) / 2),
      expiresAt,
    };
  }

  return {
    jwks: Object.freeze({ keys: Object.freeze([jwk]) }),
    assertionFor(identity, audience, ttlSeconds, now) {
      const hit = signed.get(identity);
      if (
        hit !== undefined &&
        now < hit.refreshAt &&
        hit.audience === audience &&
        hit.ttlSeconds === ttlSeconds
      ) {
        return hit.assertion;
      }
      const fresh = signFor(identity, audience, ttlSeconds, now);
      signed.set(identity, fresh);
      return fresh.assertion;
    },
  };
}

function publicJwk(publicKey: KeyObject): AssertionJwk {
  const { x } = publicKey.export({ format: "jwk" });
  if (typeof x !== "string") throw new Error("Ed25519 public key without x");
  // RFC 7638 thumbprint: the required members in lexicographic order, no whitespace.
  const kid = createHash("sha256")
    .update(JSON.stringify({ crv: "Ed25519", kty: "OKP", x }))
    .digest("base64url");
  return Object.freeze({ kty: "OKP", crv: "Ed25519", x, kid, alg: "EdDSA", use: "sig" });
}

function base64url(text: string): string {
  return Buffer.from(text).toString("base64url");
}
