// The claim checks of a bearer token that need no key: audience, subject and the NumericDates against
// a clock with the issuer's skew. The proxy runs them on every token before its signature check
// (proxy/authn/verify-bearer.ts); `portcullis explain` and `portcullis test` run them on the claims
// they were given, so the CLI refuses what the proxy refuses, with the proxy's reason codes.

import { checkNumericDates } from "./numeric-date.ts";
import type { Claims } from "./roles.ts";
import type { Issuer } from "./schema.ts";

/** The proxy's reason codes (access line, metrics) for a token whose claims it refuses. */
export type ClaimFailure =
  | "expired"
  | "not_yet_valid"
  | "bad_audience"
  | "missing_exp"
  | "bad_numeric_date"
  | "missing_sub"
  | "issued_in_future"
  | "missing_iat"
  | "too_old";

export type ClaimIssuer = Pick<Issuer, "audiences" | "clockSkewSeconds" | "maxTokenAgeSeconds">;

/** `expiresAt` is exp, or iat + maxTokenAgeSeconds when that comes sooner. */
export interface ClaimDates {
  exp: number;
  nbf?: number;
  expiresAt: number;
}

export type ClaimRefusal = { ok: false; reason: ClaimFailure };
/** With a clock: the dates as checked. */
export type DatedClaimCheck = { ok: true; dates: ClaimDates } | ClaimRefusal;
export type ClaimCheck = { ok: true; dates?: ClaimDates } | ClaimRefusal;

/** jose's own audience rule: `aud` (a string or an array) names at least one configured audience. */
export function audienceMatches(aud: unknown, audiences: readonly string[]): boolean {
  if (typeof aud === "string") return audiences.includes(aud);
  return Array.isArray(aud) && aud.some((value) => typeof value === "string" && audiences.includes(value));
}

/**
 * The checks in the proxy's order (all before the signature): expiry and audience, then jose's
 * claim checks, then the NumericDate ranges, `sub`, `iat` and the token's age. `nowSeconds` undefined:
 * the claims describe a token at no point in time, and only audience and `sub` are checked.
 */
export function checkClaims(claims: Claims, issuer: ClaimIssuer, nowSeconds: number): DatedClaimCheck;
export function checkClaims(claims: Claims, issuer: ClaimIssuer, nowSeconds: number | undefined): ClaimCheck;
export function checkClaims(claims: Claims, issuer: ClaimIssuer, nowSeconds: number | undefined): ClaimCheck {
  const skew = issuer.clockSkewSeconds;
  const { exp, nbf, iat } = claims;
  if (nowSeconds !== undefined && Number.isSafeInteger(exp) && nowSeconds >= (exp as number) + skew) {
    return fail("expired");
  }
  if (!audienceMatches(claims.aud, issuer.audiences)) return fail("bad_audience");
  if (nowSeconds === undefined) return hasSubject(claims) ? { ok: true } : fail("missing_sub");
  // What jose checks (requiredClaims exp, then iat, nbf, exp), in its order and with its codes.
  if (exp === undefined) return fail("missing_exp");
  if (iat !== undefined && typeof iat !== "number") return fail("bad_numeric_date");
  if (nbf !== undefined) {
    if (typeof nbf !== "number") return fail("bad_numeric_date");
    if (nbf > nowSeconds + skew) return fail("not_yet_valid");
  }
  if (typeof exp !== "number") return fail("bad_numeric_date");
  if (exp <= nowSeconds - skew) return fail("expired");
  const dates = checkNumericDates(claims);
  if (!dates.ok) return fail(dates.problem === "missing" ? "missing_exp" : "bad_numeric_date");
  // RFC 9068 requires sub, and every major IdP sets it (for client credentials too): without one
  // the app would get roles with no subject.
  if (!hasSubject(claims)) return fail("missing_sub");
  if (dates.iat !== undefined && dates.iat > nowSeconds + skew) return fail("issued_in_future");
  let expiresAt = dates.exp;
  const maxAge = issuer.maxTokenAgeSeconds;
  if (maxAge !== undefined) {
    if (dates.iat === undefined) return fail("missing_iat");
    if (nowSeconds >= dates.iat + maxAge + skew) return fail("too_old");
    expiresAt = Math.min(expiresAt, dates.iat + maxAge);
  }
  return {
    ok: true,
    dates: { exp: dates.exp, ...(dates.nbf === undefined ? {} : { nbf: dates.nbf }), expiresAt },
  };
}

const hasSubject = (claims: Claims): boolean => typeof claims.sub === "string" && claims.sub !== "";

const fail = (reason: ClaimFailure): ClaimRefusal => ({ ok: false, reason });
