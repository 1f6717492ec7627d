// Shared by the authn tests: the example policy pointed at a running IdP, and tokens minted by hand
// (with the IdP's own signing keys or foreign ones) that the IdP would never issue.
import { readFileSync } from "node:fs";
import { base64url, CompactSign, exportJWK, generateKeyPair, importJWK, type JWK, SignJWT } from "jose";
import { parse } from "yaml";
import type { IdentityProvider } from "../../examples/idp.ts";
import { type CompiledPolicy, compilePolicy } from "../../policy/compile.ts";
import type { Issuer } from "../../policy/schema.ts";
import { validatePolicyObject } from "../../policy/validate.ts";
import type { RemoteKeySet } from "../../proxy/authn/key-set.ts";

const POLICY_FILE = new URL("../../examples/fastapi/policy.yaml", import.meta.url);

/** The example policy with its one issuer replaced by `idp`'s (plus `overrides`). */
export function examplePolicy(idp: IdentityProvider, overrides: Partial<Issuer> = {}): CompiledPolicy {
  const document = parse(readFileSync(POLICY_FILE, "utf8")) as {
    spec: { authentication: { issuers: Record<string, unknown>[] } };
  };
  const issuer = document.spec.authentication.issuers[0]!;
  Object.assign(issuer, { issuer: idp.issuer, ...overrides });
  const { policy, problems } = validatePolicyObject(document, Date.now());
  if (!policy) throw new Error(`example policy invalid: ${JSON.stringify(problems)}`);
  return compilePolicy(policy);
}

export type SigningAlg = "RS256" | "ES256";

/** The IdP's current private signing key for `alg` (with its kid). */
export function idpKey(idp: IdentityProvider, alg: SigningAlg = "RS256"): JWK {
  const key = idp.signingKeys().find((candidate) => candidate.alg === alg);
  if (!key) throw new Error(`IdP has no ${alg} key`);
  return key;
}

/** A key pair the IdP never published, as a private JWK with the given kid. */
export async function foreignKey(alg: SigningAlg = "RS256", kid = "foreign"): Promise<JWK> {
  const { privateKey } = await generateKeyPair(alg, { extractable: true });
  return { ...(await exportJWK(privateKey)), alg, kid };
}

export function publicPart(jwk: JWK): JWK {
  const { d: _d, p: _p, q: _q, dp: _dp, dq: _dq, qi: _qi, ...rest } = jwk;
  return rest;
}

/** Claims the example policy accepts from `idp`, valid for 5 minutes from now. */
export function goodClaims(
  idp: IdentityProvider,
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  const now = Math.floor(Date.now() / 1000);
  return {
    iss: idp.issuer,
    aud: idp.audience,
    sub: "forged",
    client_id: "forged",
    scope: "orders.read",
    iat: now,
    exp: now + 300,
    ...extra,
  };
}

/** Signs `claims` with `key` (RS256/ES256 by the key's alg); `header` adds to or replaces alg/kid/typ. */
export async function sign(
  key: JWK,
  claims: Record<string, unknown>,
  header: Record<string, unknown> = {},
): Promise<string> {
  const alg = String(header.alg ?? key.alg);
  const privateKey = await importJWK(withoutAlg(key), alg);
  return new SignJWT(claims)
    .setProtectedHeader({ alg, kid: key.kid, typ: "at+jwt", ...header })
    .sign(
      privateKey,
      header.crit ? { crit: Object.fromEntries((header.crit as string[]).map((n) => [n, true])) } : {},
    );
}

/** Signs a payload given as raw JSON text (for values JSON.stringify cannot produce, like 1e400). */
export async function signRaw(
  key: JWK,
  payloadJson: string,
  header: Record<string, unknown> = {},
): Promise<string> {
  const alg = String(header.alg ?? key.alg);
  return new CompactSign(new TextEncoder().encode(payloadJson))
    .setProtectedHeader({ alg, kid: key.kid, typ: "at+jwt", ...header })
    .sign(await importJWK(withoutAlg(key), alg));
}

/** A compact JWS with arbitrary header and payload and the given signature bytes (none by default). */
export function handBuilt(header: unknown, payload: unknown, signature = ""): string {
  const part = (value: unknown) =>
    base64url.encode(typeof value === "string" ? value : JSON.stringify(value));
  return `${part(header)}.${part(payload)}.${signature}`;
}

// jose refuses to import a JWK for an algorithm other than its own `alg`: forged tokens may want that.
function withoutAlg(key: JWK): JWK {
  const { alg: _alg, ...rest } = key;
  return rest;
}

/** Counts the key lookups (one per signature check) made through `keySet` from now on. */
export function countKeyLookups(keySet: RemoteKeySet): { count(): number } {
  const original = keySet.getKey;
  let lookups = 0;
  Object.defineProperty(keySet, "getKey", {
    configurable: true,
    value: (...args: Parameters<RemoteKeySet["getKey"]>) => {
      lookups++;
      return original(...args);
    },
  });
  return { count: () => lookups };
}
