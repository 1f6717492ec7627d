// Tokens refused a moment ago, refused again without a second look: a client (or an attacker)
// repeating a forged token costs a map lookup, not a signature check. Only refusals that the token
// alone decides are kept, never one a key set decided (keys unavailable, an unknown kid: a rotation
// may make the same token good a second later), and only briefly, within a bounded number of tokens.

/** Refusals the token alone decides (its signature, its claims, its header), not the key set. */
export const TOKEN_DECIDED = new Set([
  "malformed",
  "unknown_issuer",
  "forbidden_header",
  "unsupported_crit",
  "alg_not_allowed",
  "bad_typ",
  "bad_signature",
  "bad_audience",
  "expired",
  "missing_exp",
  "bad_numeric_date",
  "missing_sub",
  "missing_iat",
  "too_old",
]);

export class RefusedTokens<T> {
  readonly #entries = new Map<string, { refusal: T; until: number }>();
  readonly #max: number;
  readonly #ttlMs: number;

  constructor(max = 4096, ttlMs = 30_000) {
    this.#max = max;
    this.#ttlMs = ttlMs;
  }

  get(token: string, nowMs: number): T | undefined {
    const entry = this.#entries.get(token);
    if (entry === undefined) return undefined;
    if (nowMs < entry.until) return entry.refusal;
    this.#entries.delete(token);
    return undefined;
  }

  add(token: string, refusal: T, nowMs: number): void {
    // Oldest first out: a flood of distinct tokens recycles the space instead of growing it.
    if (this.#entries.size >= this.#max && !this.#entries.has(token)) {
      const oldest = this.#entries.keys().next().value;
      if (oldest !== undefined) this.#entries.delete(oldest);
    }
    this.#entries.set(token, { refusal, until: nowMs + this.#ttlMs });
  }

  get size(): number {
    return this.#entries.size;
  }

  clear(): void {
    this.#entries.clear();
  }
}
