// Bearer JWT -> verified identity, per policy. The steps, cheapest first: length cap, verified-token
// cache, refused-token cache (by SHA-256), one verification in flight per token, untrusted decode to
// pick the issuer by exact `iss` (an unknown issuer costs no network call), header checks, every claim
// check that needs no key (policy/claim-checks.ts: expiry, audience, dates, sub, age), jose's
// jwtVerify against that issuer's key set, identity.

import { hash } from "node:crypto";
import {
  decodeJwt,
  decodeProtectedHeader,
  errors,
  type JWTPayload,
  type JWTVerifyOptions,
  jwtVerify,
} from "jose";
import { type ClaimFailure, type ClaimIssuer, checkClaims } from "../../policy/claim-checks.ts";
import type { CompiledPolicy } from "../../policy/compile.ts";
import { type Identity, identityFromClaims } from "../../policy/identity.ts";
import { MAX_TOKEN_LENGTH } from "./credential.ts";
import { type FetchObserver, type KeySetRegistry, KeysUnavailable, type RemoteKeySet } from "./key-set.ts";

export type { Identity };

/** `reason` is a short code for logs and metrics; it never carries token material. */
export type Verification = { ok: true; identity: Identity } | { ok: false; reason: VerificationFailure };

export type VerificationFailure =
  | "token_too_long"
  | "malformed"
  | "unknown_issuer"
  | "forbidden_header"
  | "unsupported_crit"
  | "alg_not_allowed"
  | "bad_typ"
  | "keys_unavailable"
  | "unknown_kid"
  | "ambiguous_key"
  | "bad_key"
  | "bad_signature"
  | ClaimFailure
  | "internal";

export interface BearerVerifier {
  verify(token: string): Promise<Verification>;
  /**
   * The verification of a token verified before and still valid now (exp, nbf and its key checked at
   * every call), without a promise; undefined otherwise: then `verify` decides. A plain function: it
   * may be passed on unbound (readCredential's lookup).
   */
  verifyCached(token: string): Verification | undefined;
  /** Resolves when every issuer's key set has loaded once. */
  ready(): Promise<void>;
  isReady(): boolean;
  /** Releases the key sets (closed when no other verifier uses them) and drops the cache. */
  close(): void;
}

export interface BearerVerifierOptions {
  keySets: KeySetRegistry;
  /** Epoch ms. Default Date.now. */
  now?: () => number;
  /** Fetch outcomes of this verifier's key sets, while it is open. */
  onFetch?: FetchObserver;
  /** Verified tokens kept. Default 10,000. */
  cacheSize?: number;
  /** Upper bound of the cache's token characters (an estimate of its memory). Default 16 Mi. */
  cacheChars?: number;
  /** Refused tokens remembered (by SHA-256, ~150 bytes each). Default 4,096; 0 turns it off. */
  refusedCacheSize?: number;
  /** How long a refused token is answered from memory, in ms. Default 30 s. */
  refusedTtlMs?: number;
}

export const DEFAULT_CACHE_SIZE = 10_000;
export const DEFAULT_CACHE_CHARS = 16 * 1024 * 1024;
export const DEFAULT_REFUSED_CACHE_SIZE = 4096;
export const DEFAULT_REFUSED_TTL_MS = 30_000;

// Refusals remembered for the token alone: they depend only on the token, the policy (a reload builds
// a new verifier) and time, which only moves on (an expired or too old token stays so).
const REFUSED_FOR_THE_TOKEN: ReadonlySet<VerificationFailure> = new Set<VerificationFailure>([
  "malformed",
  "unknown_issuer",
  "forbidden_header",
  "unsupported_crit",
  "alg_not_allowed",
  "bad_typ",
  "bad_audience",
  "expired",
  "missing_exp",
  "bad_numeric_date",
  "missing_sub",
  "missing_iat",
  "too_old",
]);
// Refusals that depend on the issuer's published keys: remembered only while that key set is unchanged,
// so a rotation (a kid now naming another key) is honoured at once. Never remembered: unknown_kid (the
// next request must still be able to trigger the key refetch that finds a rotated-in key),
// keys_unavailable (the IdP or the network, not the token), not_yet_valid and issued_in_future (they
// become valid), internal.
const REFUSED_FOR_THE_KEYS: ReadonlySet<VerificationFailure> = new Set<VerificationFailure>([
  "bad_signature",
  "bad_key",
  "ambiguous_key",
]);

// Accepted `typ` values (RFC 9068 access tokens, plain JWT), compared as jose does: lower case,
// `application/` implied.
const ACCEPTED_TYP = new Set(["application/jwt", "application/at+jwt"]);
// Headers that point at keys chosen by the token itself: never honoured, refused outright.
const KEY_HEADERS = ["jwk", "jku", "x5u", "x5c"] as const;

interface IssuerVerification {
  issuer: string;
  keySet: RemoteKeySet;
  algorithms: ReadonlySet<string>;
  /** Audiences, clock skew and maxTokenAgeSeconds, for the claim checks before the signature's. */
  claims: ClaimIssuer;
  options: JWTVerifyOptions;
}

interface CachedVerification {
  /** The exact token (the cache is keyed by a hash of its tail: equality is checked in full). */
  token: string;
  /** The frozen `{ ok: true, identity }` every hit returns: a hit allocates nothing. */
  verified: Verification & { ok: true };
  issuer: IssuerVerification;
  kid: string;
  fingerprint: string;
  generation: number;
  /** The cache's tick when the entry was last put at the newest end. */
  refreshed: number;
  /** Valid while notBefore <= now < expiresBefore (epoch s, skew applied as jose applies it). */
  notBefore: number;
  expiresBefore: number;
}

export function createBearerVerifier(
  policy: Pick<CompiledPolicy, "issuers" | "rolesFor">,
  options: BearerVerifierOptions,
): BearerVerifier {
  const now = options.now ?? Date.now;
  const clockGiven = options.now !== undefined;
  const issuers = new Map<string, IssuerVerification>();
  const unobserve: (() => void)[] = [];
  for (const [name, config] of policy.issuers) {
    const keySet = options.keySets.acquire({
      issuer: name,
      ...(config.jwksUri === undefined ? {} : { jwksUri: config.jwksUri }),
      ...(config.caBundle === undefined ? {} : { caBundle: config.caBundle }),
    });
    if (options.onFetch) unobserve.push(keySet.observe(options.onFetch));
    issuers.set(name, {
      issuer: name,
      keySet,
      algorithms: new Set(config.algorithms),
      claims: config,
      options: {
        issuer: name,
        audience: config.audiences,
        algorithms: config.algorithms,
        clockTolerance: config.clockSkewSeconds,
        requiredClaims: ["exp"],
      },
    });
  }
  const cache = new VerifiedTokenCache(
    options.cacheSize ?? DEFAULT_CACHE_SIZE,
    options.cacheChars ?? DEFAULT_CACHE_CHARS,
  );
  const refused = new RefusedTokenCache(
    options.refusedCacheSize ?? DEFAULT_REFUSED_CACHE_SIZE,
    options.refusedTtlMs ?? DEFAULT_REFUSED_TTL_MS,
  );
  // One verification per distinct token at a time: a burst of one token (forged or not) costs one.
  const inFlight = new Map<string, Promise<Verification>>();
  let closed = false;

  /** Verifies, and remembers a refusal that will not change by itself (see REFUSED_FOR_*). */
  async function verifyAndRemember(token: string, digest: string): Promise<Verification> {
    const nowMs = now();
    const seen: { issuer?: IssuerVerification } = {};
    const verification = await verifyUncached(token, Math.floor(nowMs / 1000), seen);
    if (verification.ok || closed) return verification;
    const { reason } = verification;
    if (REFUSED_FOR_THE_TOKEN.has(reason)) refused.set(digest, verification, nowMs, undefined);
    else if (REFUSED_FOR_THE_KEYS.has(reason) && seen.issuer !== undefined) {
      refused.set(digest, verification, nowMs, seen.issuer.keySet);
    }
    return verification;
  }

  /** `seen.issuer` is set once the token's issuer is known (its key set decides REFUSED_FOR_THE_KEYS). */
  async function verifyUncached(
    token: string,
    nowSeconds: number,
    seen: { issuer?: IssuerVerification },
  ): Promise<Verification> {
    let header: ReturnType<typeof decodeProtectedHeader>;
    let claims: JWTPayload;
    try {
      header = decodeProtectedHeader(token);
      claims = decodeJwt(token);
    } catch {
      return fail("malformed");
    }
    const issuer = typeof claims.iss === "string" ? issuers.get(claims.iss) : undefined;
    if (!issuer) return fail("unknown_issuer");
    seen.issuer = issuer;
    for (const name of KEY_HEADERS) if (Object.hasOwn(header, name)) return fail("forbidden_header");
    // We understand no critical extension; jose would refuse unknown ones too.
    if (Object.hasOwn(header, "crit")) return fail("unsupported_crit");
    if (typeof header.alg !== "string" || !issuer.algorithms.has(header.alg)) return fail("alg_not_allowed");
    if (
      header.typ !== undefined &&
      !(typeof header.typ === "string" && ACCEPTED_TYP.has(normalizeTyp(header.typ)))
    ) {
      return fail("bad_typ");
    }
    // Every check that needs no key (expiry, audience, dates, sub, the token's age) on the still
    // unverified claims, before the signature: refusing early never admits anything, and a client
    // retrying with a stale token or one minted for another API would otherwise cost a signature check
    // and a thrown error every time (~150 us of CPU per request, bench/verify.ts).
    const checked = checkClaims(claims, issuer.claims, nowSeconds);
    if (!checked.ok) return fail(checked.reason);
    const { dates } = checked;
    let payload: JWTPayload;
    try {
      const verifyOptions = clockGiven
        ? { ...issuer.options, currentDate: new Date(nowSeconds * 1000) }
        : issuer.options;
      ({ payload } = await jwtVerify(token, issuer.keySet.getKey, verifyOptions));
    } catch (error) {
      return fail(failureOf(error));
    }
    const { expiresAt } = dates;
    const identity = identityFromClaims(payload, issuer.issuer, expiresAt, policy.rolesFor);
    // Cache only what can be tied to one published key: a kid that occurs once in the current set.
    const kid = header.kid;
    const fingerprint = typeof kid === "string" ? issuer.keySet.fingerprint(kid) : undefined;
    const verified: Verification = Object.freeze({ ok: true, identity });
    if (!closed && kid !== undefined && fingerprint !== undefined) {
      cache.set({
        token,
        verified,
        issuer,
        kid,
        fingerprint,
        generation: issuer.keySet.generation(),
        notBefore:
          dates.nbf === undefined ? Number.NEGATIVE_INFINITY : dates.nbf - issuer.claims.clockSkewSeconds,
        expiresBefore: expiresAt + issuer.claims.clockSkewSeconds,
        refreshed: 0,
      });
    }
    return verified;
  }

  function verifyCached(token: string): Verification | undefined {
    if (token.length > MAX_TOKEN_LENGTH) return undefined;
    const cached = cache.get(token);
    if (cached === undefined) return undefined;
    if (stillValid(cached, Math.floor(now() / 1000))) return cached.verified;
    cache.delete(cached);
    return undefined;
  }

  return {
    verifyCached,
    async verify(token) {
      if (token.length > MAX_TOKEN_LENGTH) return fail("token_too_long");
      const cached = verifyCached(token);
      if (cached !== undefined) return cached;
      const digest = hash("sha256", token, "base64url");
      const known = refused.get(digest, now());
      if (known !== undefined) return known;
      const pending = inFlight.get(digest);
      if (pending !== undefined) return pending;
      const verification = verifyAndRemember(token, digest).catch(
        // Nothing above should throw; if it does, the request is refused, not crashed.
        () => fail("internal"),
      );
      inFlight.set(digest, verification);
      try {
        return await verification;
      } finally {
        inFlight.delete(digest);
      }
    },
    async ready() {
      await Promise.all([...issuers.values()].map((issuer) => issuer.keySet.ready()));
    },
    isReady() {
      for (const issuer of issuers.values()) if (!issuer.keySet.isReady()) return false;
      return true;
    },
    close() {
      if (closed) return;
      closed = true;
      cache.clear();
      refused.clear();
      for (const stop of unobserve) stop();
      for (const issuer of issuers.values()) options.keySets.release(issuer.keySet);
    },
  };
}

function stillValid(entry: CachedVerification, nowSeconds: number): boolean {
  if (nowSeconds >= entry.expiresBefore || nowSeconds < entry.notBefore) return false;
  const { keySet } = entry.issuer;
  if (!keySet.isReady()) return false;
  const generation = keySet.generation();
  if (generation === entry.generation) return true;
  // The set changed: the entry stays only while the very key that verified it is still published.
  if (keySet.fingerprint(entry.kid) !== entry.fingerprint) return false;
  entry.generation = generation;
  return true;
}

function fail(reason: VerificationFailure): Verification {
  return { ok: false, reason };
}

function normalizeTyp(typ: string): string {
  const lower = typ.toLowerCase();
  return lower.includes("/") ? lower : `application/${lower}`;
}

function failureOf(error: unknown): VerificationFailure {
  if (error instanceof KeysUnavailable) return "keys_unavailable";
  if (error instanceof errors.JWTExpired) return "expired";
  if (error instanceof errors.JWTClaimValidationFailed) {
    switch (error.claim) {
      case "nbf":
        return error.reason === "check_failed" ? "not_yet_valid" : "bad_numeric_date";
      case "exp":
        return error.reason === "missing" ? "missing_exp" : "bad_numeric_date";
      case "iat":
        return "bad_numeric_date";
      case "aud":
        return "bad_audience";
      case "iss":
        return "unknown_issuer";
      case "typ":
        return "bad_typ";
      default:
        return "malformed";
    }
  }
  if (error instanceof errors.JWSSignatureVerificationFailed) return "bad_signature";
  if (error instanceof errors.JOSEAlgNotAllowed) return "alg_not_allowed";
  if (error instanceof errors.JWKSNoMatchingKey) return "unknown_kid";
  if (error instanceof errors.JWKSMultipleMatchingKeys) return "ambiguous_key";
  if (error instanceof errors.JWSInvalid || error instanceof errors.JWTInvalid) return "malformed";
  if (error instanceof errors.JOSENotSupported) return "alg_not_allowed";
  // jose throws TypeError for keys it refuses to use (e.g. an RSA modulus under 2048 bits).
  if (error instanceof TypeError) return "bad_key";
  return "internal";
}

// The cache key: a hash of the token's last characters (signature bytes, unpredictable without the
// issuer's key). A Map keyed by the string hashes the whole ~1 KB token on every request.
const KEY_CHARS = 32;

function cacheKey(token: string): number {
  let hash = 0x811c9dc5;
  for (let i = Math.max(0, token.length - KEY_CHARS); i < token.length; i++) {
    hash = Math.imul(hash ^ token.charCodeAt(i), 0x01000193);
  }
  // A small integer: Map keys V8 hashes without allocating.
  return (hash ^ token.length) & 0x3fffffff;
}

/**
 * Verified tokens, least recently used evicted first. Only verified tokens get in, so the memory is
 * bounded by `maxChars` rather than by what clients send. A hit compares the whole token; two tokens
 * with one key share the slot (the later one wins: a miss costs a verification, never a wrong hit).
 * Recency is refreshed only when an entry has aged past half the capacity: a hot token costs one
 * lookup, not a delete and re-insert, and a token used within the last maxEntries/2 insertions is
 * still never evicted.
 */
class VerifiedTokenCache {
  readonly #entries = new Map<number, CachedVerification>();
  readonly #maxEntries: number;
  readonly #maxChars: number;
  readonly #refreshAfter: number;
  #chars = 0;
  /** Insertions and refreshes so far: an entry's position from the newest end is at most #tick - refreshed. */
  #tick = 0;

  constructor(maxEntries: number, maxChars: number) {
    this.#maxEntries = Math.max(0, maxEntries);
    this.#maxChars = Math.max(0, maxChars);
    this.#refreshAfter = Math.floor(this.#maxEntries / 2);
  }

  get(token: string): CachedVerification | undefined {
    const key = cacheKey(token);
    const entry = this.#entries.get(key);
    if (entry === undefined || entry.token !== token) return undefined;
    if (this.#tick - entry.refreshed > this.#refreshAfter) {
      // Re-insert to mark as recently used (Map keeps insertion order).
      this.#entries.delete(key);
      this.#entries.set(key, entry);
      entry.refreshed = ++this.#tick;
    }
    return entry;
  }

  set(entry: CachedVerification): void {
    const { token } = entry;
    if (this.#maxEntries === 0 || token.length > this.#maxChars) return;
    const key = cacheKey(token);
    const previous = this.#entries.get(key);
    if (previous !== undefined) this.delete(previous);
    entry.refreshed = ++this.#tick;
    this.#entries.set(key, entry);
    this.#chars += token.length;
    while (this.#entries.size > this.#maxEntries || this.#chars > this.#maxChars) {
      const oldest = this.#entries.values().next();
      if (oldest.done) break;
      this.delete(oldest.value);
    }
  }

  /** Removes this very entry (not a newer one that took its slot). */
  delete(entry: CachedVerification): void {
    const key = cacheKey(entry.token);
    if (this.#entries.get(key) !== entry) return;
    this.#entries.delete(key);
    this.#chars -= entry.token.length;
  }

  clear(): void {
    this.#entries.clear();
    this.#chars = 0;
  }
}

interface RefusedToken {
  verification: Verification & { ok: false };
  /** Epoch ms after which the refusal is forgotten. */
  until: number;
  /** For refusals that depend on published keys: the set and its generation at the time. */
  keySet: RemoteKeySet | undefined;
  generation: number;
}

/**
 * Refused tokens by SHA-256 digest (never the token itself), for a short TTL, oldest evicted first: a
 * client replaying one bad token costs a hash, not a parse and a signature check. A forger who varies
 * the token gets past it, which is what the per-peer failed-authentication limit is for.
 */
class RefusedTokenCache {
  readonly #entries = new Map<string, RefusedToken>();
  readonly #maxEntries: number;
  readonly #ttlMs: number;

  constructor(maxEntries: number, ttlMs: number) {
    this.#maxEntries = Math.max(0, maxEntries);
    this.#ttlMs = Math.max(0, ttlMs);
  }

  get(digest: string, nowMs: number): Verification | undefined {
    const entry = this.#entries.get(digest);
    if (entry === undefined) return undefined;
    const stale = entry.keySet !== undefined && entry.keySet.generation() !== entry.generation;
    if (nowMs >= entry.until || stale) {
      this.#entries.delete(digest);
      return undefined;
    }
    return entry.verification;
  }

  set(
    digest: string,
    verification: Verification & { ok: false },
    nowMs: number,
    keySet: RemoteKeySet | undefined,
  ): void {
    if (this.#maxEntries === 0 || this.#ttlMs === 0) return;
    this.#entries.delete(digest);
    if (this.#entries.size >= this.#maxEntries) {
      const oldest = this.#entries.keys().next();
      if (!oldest.done) this.#entries.delete(oldest.value);
    }
    this.#entries.set(digest, {
      verification,
      until: nowMs + this.#ttlMs,
      keySet,
      generation: keySet?.generation() ?? 0,
    });
  }

  clear(): void {
    this.#entries.clear();
  }
}
