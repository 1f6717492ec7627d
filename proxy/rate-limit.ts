// Rate limits: token buckets per (limit, key). `store: local` keeps buckets in this sidecar;
// `store: redis` shares them across replicas with GCRA in one Lua script (one round trip, Redis's
// clock, so sidecars' clocks don't matter). When Redis is unreachable the limit falls back to this
// sidecar's local bucket: degraded to per-replica limits, never to no limit and never to an outage
// (Kong's fault_tolerant behaviour, without giving up the limit entirely).

import { isIPv6 } from "node:net";
import type { RateLimit } from "../policy/schema.ts";

export interface RateLimitSubject {
  /** The verified token's issuer: subjects and client ids are only unique within one. */
  issuer?: string;
  subject?: string;
  clientId?: string;
  /** The peer's bucket address (peerBucket of the socket's address), computed once per request. */
  ip: string;
  header(name: string): string | undefined;
}

export type RateLimitVerdict =
  | { allowed: true }
  | { allowed: false; limit: string; retryAfterSeconds: number };

/** The refusal of an exhausted limit: Retry-After is the wait in whole seconds, at least 1. */
export function exhausted(limit: string, waitMs: number): RateLimitVerdict {
  return { allowed: false, limit, retryAfterSeconds: Math.max(1, Math.ceil(waitMs / 1000)) };
}

export interface SharedBucketStore {
  /** Takes one token from the shared bucket; resolves the wait in ms (0 when allowed). Rejects when unreachable. */
  take(key: string, intervalMs: number, burst: number): Promise<number>;
}

export interface RateLimiterOptions {
  shared?: SharedBucketStore;
  now?: () => number;
  maxBuckets?: number;
  onFallback?: (limit: string, error: unknown) => void;
}

/** The bucket key for a request; requests lacking the key value share the "-" bucket. */
export function bucketKey(limit: RateLimit, who: RateLimitSubject): string {
  const { key } = limit;
  let value: string | undefined;
  // Two issuers may well both have a "alice" or a "web-app": their buckets must not be shared.
  if (key === "subject")
    value = who.subject === undefined ? undefined : `${who.issuer ?? ""}\u0000${who.subject}`;
  else if (key === "clientId")
    value = who.clientId === undefined ? undefined : `${who.issuer ?? ""}\u0000${who.clientId}`;
  else if (key === "ip") value = who.ip;
  else value = who.header(key.slice("header:".length));
  return `${limit.name}\u0000${value ?? "-"}`;
}

/**
 * The local bucket of a peer's failed authentications, by its bucket address (peerBucket). Rate limit
 * names are DNS labels, so no rule's bucket key starts with "(".
 */
export function failedAuthenticationKey(peer: string): string {
  return `(failed-authentications)\u0000${peer}`;
}

/**
 * What a peer address counts as: an IPv4 address (IPv4-mapped IPv6 too) by itself, an IPv6 address
 * by its /64, the smallest network a host is given (RFC 6177): per address, one host could rotate
 * through 2^64 of them and never meet its limit.
 */
export function peerBucket(address: string): string {
  if (!address.includes(":")) return address;
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(address);
  if (mapped?.[1] !== undefined) return mapped[1];
  const bare = address.split("%", 1)[0] ?? address;
  if (!isIPv6(bare)) return address;
  return `${ipv6Groups(bare).slice(0, 4).join(":")}::/64`;
}

/** The eight 16-bit groups of a valid IPv6 address, in short hex ("::" and a dotted IPv4 tail expanded). */
function ipv6Groups(address: string): string[] {
  let text = address;
  const dotted = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (dotted !== null) {
    const [a, b, c, d] = dotted.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, dotted.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = "", tail] = text.split("::");
  const before = head === "" ? [] : head.split(":");
  const after = tail === undefined || tail === "" ? [] : tail.split(":");
  const zeros = tail === undefined ? [] : Array<string>(8 - before.length - after.length).fill("0");
  return [...before, ...zeros, ...after].map((group) => Number.parseInt(group, 16).toString(16));
}

interface Bucket {
  tokens: number;
  updatedMs: number;
}

export class RateLimiter {
  readonly #buckets = new Map<string, Bucket>();
  readonly #shared: SharedBucketStore | undefined;
  readonly #now: () => number;
  readonly #maxBuckets: number;
  readonly #onFallback: RateLimiterOptions["onFallback"];

  constructor(options: RateLimiterOptions = {}) {
    this.#shared = options.shared;
    this.#now = options.now ?? Date.now;
    this.#maxBuckets = options.maxBuckets ?? 100_000;
    this.#onFallback = options.onFallback;
  }

  /** Checks every limit of a rule; the first exhausted one denies. */
  async check(limits: readonly RateLimit[], who: RateLimitSubject): Promise<RateLimitVerdict> {
    for (const limit of limits) {
      const key = bucketKey(limit, who);
      const waitMs =
        limit.store === "redis" && this.#shared
          ? await this.#takeShared(limit, key)
          : this.takeLocal(key, limit.requestsPerSecond, limit.burst ?? limit.requestsPerSecond);
      if (waitMs > 0) return exhausted(limit.name, waitMs);
    }
    return { allowed: true };
  }

  async #takeShared(limit: RateLimit, key: string): Promise<number> {
    const burst = limit.burst ?? limit.requestsPerSecond;
    try {
      return await this.#shared!.take(key, 1000 / limit.requestsPerSecond, burst);
    } catch (error) {
      this.#onFallback?.(limit.name, error);
      return this.takeLocal(key, limit.requestsPerSecond, burst);
    }
  }

  /** Gives back a token takeLocal took (never above the burst; a bucket evicted since is left alone). */
  refundLocal(key: string, burst: number): void {
    const bucket = this.#buckets.get(key);
    if (bucket !== undefined) bucket.tokens = Math.min(burst, bucket.tokens + 1);
  }

  /**
   * Takes a token from the local bucket `key`: 0 when taken, else the ms until one is available. With
   * refundLocal, a token held while something runs (a verification) and given back when it succeeds.
   */
  takeLocal(key: string, perSecond: number, burst: number): number {
    const now = this.#now();
    let bucket = this.#buckets.get(key);
    if (bucket === undefined) {
      // Bounded memory: the oldest bucket goes first. A bucket idle for burst/rate seconds is full
      // anyway, so under normal load eviction forgets nothing.
      if (this.#buckets.size >= this.#maxBuckets)
        this.#buckets.delete(this.#buckets.keys().next().value as string);
      bucket = { tokens: burst, updatedMs: now };
      this.#buckets.set(key, bucket);
    } else {
      bucket.tokens = Math.min(burst, bucket.tokens + ((now - bucket.updatedMs) / 1000) * perSecond);
      bucket.updatedMs = now;
    }
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return 0;
    }
    return ((1 - bucket.tokens) / perSecond) * 1000;
  }
}
