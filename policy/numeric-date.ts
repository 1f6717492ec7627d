// NumericDate checks jose leaves out: it only asks `typeof === "number"`, so a validly signed
// `exp: 1e400` (Infinity after JSON.parse), `exp: 9e15`, a fractional `exp` or a negative `nbf` pass.

/** Exclusive upper bound, 2^33 s: the year 2242. Larger values are never a real expiry. */
export const MAX_NUMERIC_DATE = 2 ** 33;

export type NumericDateCheck =
  | { ok: true; exp: number; nbf?: number; iat?: number }
  | { ok: false; claim: "exp" | "nbf" | "iat"; problem: "missing" | "invalid" };

/**
 * `exp` is required; `exp`, `nbf` and `iat`, when present, must be integers in (0, 2^33).
 * RFC 7519 allows fractional NumericDates, but no issuer we know sends them, and accepting them would
 * leave rounding (and so the last valid second) to each consumer of the identity.
 */
export function checkNumericDates(claims: Readonly<Record<string, unknown>>): NumericDateCheck {
  const { exp, nbf, iat } = claims;
  if (exp === undefined) return { ok: false, claim: "exp", problem: "missing" };
  if (!isNumericDate(exp)) return { ok: false, claim: "exp", problem: "invalid" };
  if (nbf !== undefined && !isNumericDate(nbf)) return { ok: false, claim: "nbf", problem: "invalid" };
  if (iat !== undefined && !isNumericDate(iat)) return { ok: false, claim: "iat", problem: "invalid" };
  return {
    ok: true,
    exp,
    ...(nbf === undefined ? {} : { nbf }),
    ...(iat === undefined ? {} : { iat: iat as number }),
  };
}

export function isNumericDate(value: unknown): value is number {
  // Number.isInteger is false for NaN, Infinity and fractions.
  return Number.isInteger(value) && (value as number) > 0 && (value as number) < MAX_NUMERIC_DATE;
}
