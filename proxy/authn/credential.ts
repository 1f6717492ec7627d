// The one credential a request carries: `Authorization: Bearer <token68>` and nothing else.
// Runs on every protected request, so it allocates nothing unless something is present.

import type { IncomingMessage } from "node:http";

/** Longer tokens are refused before any parsing. Real access tokens are 1-3 KiB; headers cap at 16 KiB. */
export const MAX_TOKEN_LENGTH = 8192;

/**
 * `status`/`error` say how to answer (RFC 6750 section 3.1): 400 `invalid_request` for a malformed
 * request, 401 `invalid_token` for an unusable token, and a bare 401 challenge (no error code) for a
 * scheme we do not support: the client may simply not know that Bearer is required.
 */
export type Credential<Known = never> =
  | { kind: "none" }
  /** `known`: what the lookup found for this token (see TokenLookup). */
  | { kind: "bearer"; token: string; known?: Known }
  | {
      kind: "invalid";
      reason: CredentialProblem;
      status: 400 | 401;
      error?: "invalid_request" | "invalid_token";
    };

export type CredentialProblem =
  | "multiple_credentials"
  | "token_in_query"
  | "malformed_authorization"
  | "unsupported_scheme"
  | "token_too_long";

// RFC 9110 section 11.2: credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ].
const AUTH_SCHEME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const TOKEN68 = /^[A-Za-z0-9\-._~+/]+=*$/;
// Room for the scheme and its spaces on top of the token itself.
const MAX_HEADER_LENGTH = MAX_TOKEN_LENGTH + 64;

const tooLong: Credential = {
  kind: "invalid",
  reason: "token_too_long",
  status: 401,
  error: "invalid_token",
};
const malformed: Credential = {
  kind: "invalid",
  reason: "malformed_authorization",
  status: 400,
  error: "invalid_request",
};
const multiple: Credential = {
  kind: "invalid",
  reason: "multiple_credentials",
  status: 400,
  error: "invalid_request",
};
const inQuery: Credential = {
  kind: "invalid",
  reason: "token_in_query",
  status: 400,
  error: "invalid_request",
};
const otherScheme: Credential = { kind: "invalid", reason: "unsupported_scheme", status: 401 };
const none: Credential = { kind: "none" };

/**
 * Looks a token up among those verified before (the verifier's cache). A token found there skips the
 * token68 scan (~1 us per KiB of token), and what was found travels with the credential, so the
 * request path looks it up once.
 */
export type TokenLookup<Known> = (token: string) => Known | undefined;

/**
 * Reads the request's bearer token. `query` is the raw query string (with or without the `?`).
 *
 * Tokens in the URL (`?access_token=`, RFC 6750 section 2.3) are refused even alone: URLs end up in
 * access logs, browser history, Referer headers and the app's own logs, and the query is forwarded.
 * A form-body `access_token` (section 2.2) is never read: bodies are streamed to the app untouched.
 */
export function readCredential<Known = never>(
  req: IncomingMessage,
  query: string,
  lookup?: TokenLookup<Known>,
): Credential<Known> {
  const header = req.headers.authorization;
  const queryToken = query !== "" && hasAccessTokenParameter(query);
  if (header === undefined) return queryToken ? inQuery : none;
  // req.headers keeps only the first copy. Counting in rawHeaders sees every copy, as
  // req.headersDistinct would, without building an object of all headers per request.
  if (queryToken || countAuthorizationHeaders(req.rawHeaders) > 1) return multiple;
  return parseAuthorization(header, lookup);
}

/** Parses one Authorization header value (Node has already trimmed surrounding whitespace). */
export function parseAuthorization<Known = never>(
  value: string,
  lookup?: TokenLookup<Known>,
): Credential<Known> {
  if (value.length > MAX_HEADER_LENGTH) return tooLong;
  const space = value.indexOf(" ");
  const scheme = space === -1 ? value : value.slice(0, space);
  if (!AUTH_SCHEME.test(scheme)) return malformed;
  if (scheme.length !== 6 || scheme.toLowerCase() !== "bearer") return otherScheme;
  if (space === -1) return malformed;
  let start = space + 1;
  while (value.charCodeAt(start) === 32) start++;
  const token = value.slice(start);
  if (token.length > MAX_TOKEN_LENGTH) return tooLong;
  // A verified token is a compact JWS: base64url and dots, token68 by construction.
  const known = lookup?.(token);
  if (known !== undefined) return { kind: "bearer", token, known };
  if (!TOKEN68.test(token)) return malformed;
  return { kind: "bearer", token };
}

function countAuthorizationHeaders(raw: readonly string[]): number {
  let count = 0;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length === 13 && name.toLowerCase() === "authorization") count++;
  }
  return count;
}

function hasAccessTokenParameter(query: string): boolean {
  // Only a literal `access_token` or a percent-encoded name can decode to it: skip the parse otherwise.
  if (!query.includes("access_token") && !query.includes("%")) return false;
  return new URLSearchParams(query).has("access_token");
}
