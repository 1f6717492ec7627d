// One issuer's signing keys, fetched from its JWKS and served to jose as a key resolver.
//
// Why not jose's createRemoteJWKSet: once its cache is older than the max age it awaits a reload, so an
// IdP outage fails every request (no stale-if-error), and it reads the body without a size cap. Here the
// last good set keeps serving (up to a bounded staleness), fetches are capped, never redirected, and
// single-flight, and jose's createLocalJWKSet still does the key selection on the current set.
//
// Key selection: a token without `kid` that matches several keys of its type is REJECTED
// (JWKSMultipleMatchingKeys, reason `ambiguous_key`), as jose does; trying each key (Envoy) would let
// one token cost several signature checks.

import { createHash } from "node:crypto";
import {
  type CryptoKey,
  createLocalJWKSet,
  errors,
  type FlattenedJWSInput,
  importJWK,
  type JWK,
  type JWSHeaderParameters,
  type LocalJWKSet,
} from "jose";
import { Agent, type Dispatcher, request } from "undici";
import { ALGORITHMS } from "../../policy/schema.ts";

export type FetchOutcome = "ok" | "error" | "not_modified";
/** Called once per fetch attempt. `detail` is a short code (`timeout`, `http_404`, `too_large`...). */
export type FetchObserver = (issuer: string, outcome: FetchOutcome, detail?: string) => void;

export interface KeySetOptions {
  /** Whole-exchange timeout of one HTTP request. Default 5 s. */
  timeoutMs?: number;
  /** Response bodies larger than this are refused, counted while streaming. Default 512 KiB. */
  maxResponseBytes?: number;
  /** An unknown `kid` triggers at most one refetch per this interval. Default 30 s. */
  unknownKidCooldownMs?: number;
  /** Background refresh interval once loaded. Default 5 min. */
  refreshIntervalMs?: number;
  /** After this long without a successful fetch, the set stops serving keys. Default 24 h. */
  maxStalenessMs?: number;
  /** Retry backoff after a failed fetch: doubles from min to max (with jitter). Default 500 ms .. 30 s. */
  retryMinMs?: number;
  retryMaxMs?: number;
  /** Clock in epoch ms. Default Date.now. */
  now?: () => number;
  onFetch?: FetchObserver;
}

export interface KeySetSource {
  issuer: string;
  /** When absent, discovered from `<issuer>/.well-known/openid-configuration`. */
  jwksUri?: string;
  /** PEM CA certificates that alone are trusted for this issuer's https fetches (a private CA). */
  caBundle?: string;
}

/** Thrown by getKey when there is no key set to serve: never loaded, or older than the max staleness. */
export class KeysUnavailable extends Error {
  readonly reason: "not_loaded" | "stale" | "closed";
  constructor(reason: "not_loaded" | "stale" | "closed") {
    super(`signing keys unavailable (${reason})`);
    this.name = "KeysUnavailable";
    this.reason = reason;
  }
}

/** A fetch that failed; `detail` is safe to log and to use as a metric label. */
export class KeyFetchError extends Error {
  readonly detail: string;
  constructor(detail: string) {
    super(`key fetch failed: ${detail}`);
    this.name = "KeyFetchError";
    this.detail = detail;
  }
}

export const KEY_SET_DEFAULTS = {
  timeoutMs: 5_000,
  maxResponseBytes: 512 * 1024,
  unknownKidCooldownMs: 30_000,
  refreshIntervalMs: 5 * 60_000,
  maxStalenessMs: 24 * 3600_000,
  retryMinMs: 500,
  retryMaxMs: 30_000,
} as const;

interface LoadedKeys {
  local: LocalJWKSet;
  generation: number;
  /** kid -> the key's public material, for kids that occur once; lets cached verifications outlive
   * a refetch only while the very key that verified them is still published. */
  fingerprints: ReadonlyMap<string, string>;
  /** The response body, to recognise an unchanged set without rebuilding it. */
  text: string;
}

const DEFAULT_ALGORITHM: Readonly<Record<string, string>> = {
  RSA: "RS256",
  "P-256": "ES256",
  "P-384": "ES384",
  "P-521": "ES512",
  Ed25519: "EdDSA",
};
const ASYMMETRIC = new Set<string>(ALGORITHMS);
const EC_CURVES = new Set(["P-256", "P-384", "P-521"]);
const MIN_RSA_BITS = 2048;

export class RemoteKeySet {
  readonly issuer: string;
  readonly configuredJwksUri: string | undefined;
  readonly caBundle: string | undefined;
  /** Connections for this issuer's fetches: its own only when it trusts its own CAs. */
  readonly #dispatcher: Dispatcher | undefined;
  readonly #options: Required<Omit<KeySetOptions, "onFetch">>;
  readonly #observers = new Set<FetchObserver>();
  #discoveredJwksUri: string | undefined;
  #current: LoadedKeys | undefined;
  #fetchedAt = 0;
  #etag: string | undefined;
  #inflight: Promise<void> | undefined;
  #lastKidRefetchAt = Number.NEGATIVE_INFINITY;
  #failures = 0;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  readonly #abort = new AbortController();
  readonly #ready: Promise<void>;
  #resolveReady: () => void = () => {};
  #rejectReady: (error: Error) => void = () => {};

  constructor(source: KeySetSource, options: KeySetOptions = {}) {
    this.issuer = source.issuer;
    this.configuredJwksUri = source.jwksUri;
    this.caBundle = source.caBundle;
    this.#dispatcher =
      source.caBundle === undefined ? undefined : new Agent({ connect: { ca: source.caBundle } });
    const { onFetch, ...rest } = options;
    this.#options = { ...KEY_SET_DEFAULTS, now: Date.now, ...definedOnly(rest) };
    if (onFetch) this.#observers.add(onFetch);
    this.#ready = new Promise<void>((resolve, reject) => {
      this.#resolveReady = resolve;
      this.#rejectReady = reject;
    });
    // Nobody may be awaiting ready() when close() rejects it.
    this.#ready.catch(() => {});
    this.#tick();
  }

  /** The jose key resolver (JWTVerifyGetKey-compatible): selects from the current set, refetching once
   * per cool-down on an unknown `kid`. Throws KeysUnavailable when there is no set to serve. */
  readonly getKey = async (header: JWSHeaderParameters, token: FlattenedJWSInput): Promise<CryptoKey> => {
    const keys = await this.#servingKeys();
    const found = await selectKey(keys, header, token);
    if (found) return found;
    return this.#selectAfterRefetch(header, token);
  };

  /** Resolves once the first fetch succeeded (retrying with backoff until then); rejects on close(). */
  ready(): Promise<void> {
    return this.#ready;
  }

  /** Loaded and not older than the max staleness. */
  isReady(): boolean {
    return this.#current !== undefined && !this.#tooStale();
  }

  /** Seconds since the last successful fetch (or 304); Infinity before the first. */
  ageSeconds(): number {
    return this.#current ? (this.#options.now() - this.#fetchedAt) / 1000 : Number.POSITIVE_INFINITY;
  }

  /** Increments whenever the published set changes (not on an identical refetch). 0 before the first. */
  generation(): number {
    return this.#current?.generation ?? 0;
  }

  /** The public material of the key with this kid in the current set, if exactly one has it. */
  fingerprint(kid: string): string | undefined {
    return this.#current?.fingerprints.get(kid);
  }

  /** The kids of the current set's usable keys. */
  kids(): string[] {
    return this.#current?.local.jwks().keys.flatMap((key) => (key.kid === undefined ? [] : [key.kid])) ?? [];
  }

  /** The JWKS URL in use (configured or discovered), once known. */
  jwksUri(): string | undefined {
    return this.configuredJwksUri ?? this.#discoveredJwksUri;
  }

  /** Adds a fetch observer; returns its removal. */
  observe(observer: FetchObserver): () => void {
    this.#observers.add(observer);
    return () => this.#observers.delete(observer);
  }

  /** Fetches now (joining a fetch already in flight). Never rejects. */
  refresh(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#inflight ??= this.#fetch();
    return this.#inflight;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#abort.abort();
    void this.#dispatcher?.close().catch(() => {});
    this.#observers.clear();
    this.#rejectReady(new KeysUnavailable("closed"));
  }

  async #servingKeys(): Promise<LoadedKeys> {
    if (this.#closed) throw new KeysUnavailable("closed");
    // Before the first load, join a fetch in flight rather than fail at once; never start one here:
    // the retry loop owns the pace while the IdP is down.
    if (!this.#current && this.#inflight) await this.#inflight;
    const keys = this.#current;
    if (!keys) throw new KeysUnavailable("not_loaded");
    if (this.#tooStale()) throw new KeysUnavailable("stale");
    return keys;
  }

  async #selectAfterRefetch(header: JWSHeaderParameters, token: FlattenedJWSInput): Promise<CryptoKey> {
    // Waits for at most two fetches: one already in flight (it may predate the new key) and one of ours.
    for (let waits = 0; waits < 2; waits++) {
      if (!this.#inflight) {
        const now = this.#options.now();
        if (now - this.#lastKidRefetchAt < this.#options.unknownKidCooldownMs) break;
        this.#lastKidRefetchAt = now;
      }
      await this.refresh();
      const keys = await this.#servingKeys();
      const found = await selectKey(keys, header, token);
      if (found) return found;
    }
    throw new errors.JWKSNoMatchingKey();
  }

  #tooStale(): boolean {
    return this.#options.now() - this.#fetchedAt > this.#options.maxStalenessMs;
  }

  #tick(): void {
    void this.refresh().then(() => {
      if (this.#closed) return;
      const { refreshIntervalMs, retryMinMs, retryMaxMs } = this.#options;
      let delay = refreshIntervalMs;
      if (this.#failures > 0) {
        const backoff = Math.min(retryMaxMs, retryMinMs * 2 ** Math.min(this.#failures - 1, 30));
        delay = backoff * (0.5 + Math.random() / 2);
        // Once loaded, a failing refresh retries sooner than the interval but never later.
        if (this.#current) delay = Math.min(delay, refreshIntervalMs);
      }
      clearTimeout(this.#timer);
      this.#timer = setTimeout(() => this.#tick(), delay);
      this.#timer.unref();
    });
  }

  // Only refresh() calls this, and stores the promise as #inflight before the first await below.
  async #fetch(): Promise<void> {
    let outcome: FetchOutcome;
    let detail: string | undefined;
    try {
      outcome = await this.#load();
      this.#failures = 0;
      this.#fetchedAt = this.#options.now();
    } catch (error) {
      outcome = "error";
      detail = error instanceof KeyFetchError ? error.detail : "internal";
      this.#failures++;
      // A failing JWKS URL may have moved: discover again next time.
      if (this.configuredJwksUri === undefined) this.#discoveredJwksUri = undefined;
    }
    // Cleared before anyone hears of the outcome, so a refresh() right after ready() fetches anew.
    this.#inflight = undefined;
    if (outcome !== "error") this.#resolveReady();
    this.#report(outcome, detail);
  }

  async #load(): Promise<"ok" | "not_modified"> {
    const jwksUri = this.configuredJwksUri ?? this.#discoveredJwksUri ?? (await this.#discover());
    const etag = this.#current ? this.#etag : undefined;
    const response = await fetchText(jwksUri, this.#options, this.#abort.signal, this.#dispatcher, etag);
    if (response.notModified) return "not_modified";
    if (this.#current?.text === response.text) return "ok";
    const keys = await usableKeys(parseJson(response.text));
    if (this.#closed) throw new KeyFetchError("closed");
    this.#current = {
      local: keys.local,
      fingerprints: keys.fingerprints,
      generation: this.generation() + 1,
      text: response.text,
    };
    this.#etag = response.etag;
    return "ok";
  }

  async #discover(): Promise<string> {
    const base = this.issuer.endsWith("/") ? this.issuer.slice(0, -1) : this.issuer;
    let document: unknown;
    try {
      const response = await fetchText(
        `${base}/.well-known/openid-configuration`,
        this.#options,
        this.#abort.signal,
        this.#dispatcher,
      );
      document = parseJson(response.text);
    } catch (error) {
      throw new KeyFetchError(`discovery_${error instanceof KeyFetchError ? error.detail : "internal"}`);
    }
    if (!isRecord(document)) throw new KeyFetchError("discovery_invalid");
    // OpenID Connect Discovery 1.0 section 4.3: the issuer must be exactly the one asked for.
    if (document.issuer !== this.issuer) throw new KeyFetchError("discovery_issuer_mismatch");
    const jwksUri = document.jwks_uri;
    if (typeof jwksUri !== "string" || !isAllowedFetchUrl(jwksUri)) {
      throw new KeyFetchError("discovery_bad_jwks_uri");
    }
    this.#discoveredJwksUri = jwksUri;
    return jwksUri;
  }

  #report(outcome: FetchOutcome, detail?: string): void {
    for (const observer of this.#observers) {
      try {
        observer(this.issuer, outcome, detail);
      } catch {
        // A metrics hook never breaks key fetching.
      }
    }
  }
}

/** Keeps key sets by (issuer, jwksUri, caBundle), so a policy reload with the same issuers reuses warm sets. */
export class KeySetRegistry {
  readonly #options: KeySetOptions;
  readonly #entries = new Map<string, { keySet: RemoteKeySet; users: number }>();

  constructor(options: KeySetOptions = {}) {
    this.#options = options;
  }

  /** The key set for this source, created (and its first fetch started) on first use. */
  acquire(source: KeySetSource): RemoteKeySet {
    const id = registryKey(source);
    let entry = this.#entries.get(id);
    if (!entry) {
      entry = { keySet: new RemoteKeySet(source, this.#options), users: 0 };
      this.#entries.set(id, entry);
    }
    entry.users++;
    return entry.keySet;
  }

  /** Gives a key set back; the last user's release closes it. Acquire the new before releasing the old. */
  release(keySet: RemoteKeySet): void {
    const id = registryKey({
      issuer: keySet.issuer,
      jwksUri: keySet.configuredJwksUri,
      caBundle: keySet.caBundle,
    });
    const entry = this.#entries.get(id);
    if (entry?.keySet !== keySet) return;
    entry.users--;
    if (entry.users > 0) return;
    this.#entries.delete(id);
    keySet.close();
  }

  /** The live key sets, for metrics (age per issuer). */
  keySets(): RemoteKeySet[] {
    return [...this.#entries.values()].map((entry) => entry.keySet);
  }

  close(): void {
    for (const { keySet } of this.#entries.values()) keySet.close();
    this.#entries.clear();
  }
}

/** The bundle enters as a hash: a reload that changes only the trusted CAs gets a new key set. */
function registryKey(source: KeySetSource): string {
  const bundle =
    source.caBundle === undefined ? null : createHash("sha256").update(source.caBundle).digest("hex");
  return JSON.stringify([source.issuer, source.jwksUri ?? null, bundle]);
}

async function selectKey(
  keys: LoadedKeys,
  header: JWSHeaderParameters,
  token: FlattenedJWSInput,
): Promise<CryptoKey | undefined> {
  try {
    return await keys.local(header, token);
  } catch (error) {
    if (error instanceof errors.JWKSNoMatchingKey) return undefined;
    throw error;
  }
}

interface FetchedText {
  notModified: boolean;
  text: string;
  etag?: string;
}

/** GET with a whole-exchange timeout, no redirects, only 200 (or 304), and a streamed size cap. */
async function fetchText(
  url: string,
  options: Required<Omit<KeySetOptions, "onFetch">>,
  closed: AbortSignal,
  dispatcher: Dispatcher | undefined,
  etag?: string,
): Promise<FetchedText> {
  if (!isAllowedFetchUrl(url)) throw new KeyFetchError("url_not_allowed");
  const timeout = AbortSignal.timeout(options.timeoutMs);
  const signal = AbortSignal.any([timeout, closed]);
  try {
    const response = await request(url, {
      method: "GET",
      headers:
        etag === undefined
          ? { accept: "application/json" }
          : { accept: "application/json", "if-none-match": etag },
      signal,
      ...(dispatcher === undefined ? {} : { dispatcher }),
      headersTimeout: options.timeoutMs,
      bodyTimeout: options.timeoutMs,
    });
    const { statusCode, headers, body } = response;
    if (statusCode !== 200) {
      discard(body);
      if (statusCode === 304 && etag !== undefined) return { notModified: true, text: "" };
      throw new KeyFetchError(statusCode >= 300 && statusCode < 400 ? "redirect" : `http_${statusCode}`);
    }
    const declared = Number(headers["content-length"]);
    if (declared > options.maxResponseBytes) {
      discard(body);
      throw new KeyFetchError("too_large");
    }
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of body) {
      const bytes = chunk as Buffer;
      size += bytes.length;
      if (size > options.maxResponseBytes) {
        discard(body);
        throw new KeyFetchError("too_large");
      }
      chunks.push(bytes);
    }
    let text: string;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(Buffer.concat(chunks, size));
    } catch {
      throw new KeyFetchError("invalid_utf8");
    }
    const tag = headers.etag;
    return typeof tag === "string" ? { notModified: false, text, etag: tag } : { notModified: false, text };
  } catch (error) {
    if (error instanceof KeyFetchError) throw error;
    if (closed.aborted) throw new KeyFetchError("closed");
    if (timeout.aborted || isUndiciTimeout(error)) throw new KeyFetchError("timeout");
    throw new KeyFetchError(tlsFailure(error) ?? "network");
  }
}

/** Drops a response body: destroying an undici body emits an error that must have a listener. */
function discard(body: Dispatcher.ResponseData["body"]): void {
  body.on("error", () => {});
  body.destroy();
}

/** A TLS verification failure, as a short detail: an untrusted chain or a certificate for another name. */
function tlsFailure(error: unknown): string | undefined {
  for (let cause = error; cause instanceof Error; cause = cause.cause) {
    const code = (cause as { code?: unknown }).code;
    if (code === "ERR_TLS_CERT_ALTNAME_INVALID") return "tls_name_mismatch";
    if (code === "CERT_HAS_EXPIRED" || code === "CERT_NOT_YET_VALID") return "tls_expired";
    if (
      typeof code === "string" &&
      /^(UNABLE_TO_|SELF_SIGNED_CERT|DEPTH_ZERO_SELF_SIGNED|CERT_UNTRUSTED|CERT_SIGNATURE_FAILURE)/.test(code)
    )
      return "tls_untrusted";
  }
  return undefined;
}

function isUndiciTimeout(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return code === "UND_ERR_HEADERS_TIMEOUT" || code === "UND_ERR_BODY_TIMEOUT";
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw new KeyFetchError("invalid_json");
  }
}

/** Keys an attacker-free IdP could sign tokens with; anything else in the set is skipped. */
async function usableKeys(
  document: unknown,
): Promise<{ local: LocalJWKSet; fingerprints: Map<string, string> }> {
  if (!isRecord(document) || !Array.isArray(document.keys)) throw new KeyFetchError("not_a_jwks");
  const usable: JWK[] = [];
  for (const candidate of document.keys as unknown[]) {
    const key = await usableKey(candidate);
    if (key) usable.push(key);
  }
  if (usable.length === 0) throw new KeyFetchError("no_usable_keys");
  const local = createLocalJWKSet({ keys: usable });
  const kidCounts = new Map<string, number>();
  for (const key of usable)
    if (key.kid !== undefined) kidCounts.set(key.kid, (kidCounts.get(key.kid) ?? 0) + 1);
  const fingerprints = new Map<string, string>();
  for (const key of usable) {
    if (key.kid === undefined || kidCounts.get(key.kid) !== 1) continue;
    fingerprints.set(key.kid, JSON.stringify([key.kty, key.crv, key.n, key.e, key.x, key.y, key.alg]));
    // Warms jose's per-key import cache, so the first token per key does not pay for the import.
    if (key.alg !== undefined) await local({ alg: key.alg, kid: key.kid }).catch(() => undefined);
  }
  return { local, fingerprints };
}

async function usableKey(candidate: unknown): Promise<JWK | undefined> {
  if (!isRecord(candidate)) return undefined;
  const { kty, use, key_ops: ops, alg, kid, crv } = candidate;
  if (kid !== undefined && typeof kid !== "string") return undefined;
  if (use !== undefined && use !== "sig") return undefined;
  if (ops !== undefined && !(Array.isArray(ops) && ops.includes("verify"))) return undefined;
  if (alg !== undefined && !(typeof alg === "string" && ASYMMETRIC.has(alg))) return undefined;
  // A private key in a JWKS is an IdP misconfiguration: do not touch it.
  if (candidate.d !== undefined) return undefined;
  let algorithm: string | undefined;
  if (kty === "RSA" && typeof candidate.n === "string" && typeof candidate.e === "string") {
    algorithm = DEFAULT_ALGORITHM.RSA;
  } else if (kty === "EC" && typeof crv === "string" && EC_CURVES.has(crv)) {
    if (typeof candidate.x !== "string" || typeof candidate.y !== "string") return undefined;
    algorithm = DEFAULT_ALGORITHM[crv];
  } else if (kty === "OKP" && crv === "Ed25519" && typeof candidate.x === "string") {
    algorithm = DEFAULT_ALGORITHM.Ed25519;
  }
  if (algorithm === undefined) return undefined;
  const jwk = { ...candidate } as JWK;
  try {
    const key = await importJWK(jwk, typeof alg === "string" ? alg : algorithm);
    if (key instanceof Uint8Array) return undefined;
    const { modulusLength } = key.algorithm as { modulusLength?: number };
    if (kty === "RSA" && (modulusLength ?? 0) < MIN_RSA_BITS) return undefined;
  } catch {
    return undefined;
  }
  return jwk;
}

/** https, or plain http to a loopback host (the same rule the policy validation applies). */
export function isAllowedFetchUrl(value: string): boolean {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return false;
  }
  if (url.username !== "" || url.password !== "") return false;
  if (url.protocol === "https:") return true;
  const host = url.hostname;
  return (
    url.protocol === "http:" &&
    (host === "localhost" || host === "[::1]" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host))
  );
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function definedOnly<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}
