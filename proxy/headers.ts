// Header hygiene, request and response. One pass over `req.rawHeaders` (every copy, names as sent)
// against a lookup table compiled once per policy:
//   1. names nominated by the client's Connection header(s) are removed (RFC 9110 section 7.6.1);
//   2. hop-by-hop headers are removed;
//   3. every spelling (case, `_` or `.` for `-`, repeated) of an identity header, a configured extra
//      header, an internal header or a header the proxy sets itself is removed;
//   4. the proxy's own headers are appended AFTER that, so no nomination can strip them.
// Identity header values are computed once per verified token (cached on the Identity object).

import { type CompiledPolicy, ENCODING_SUFFIX, type IdentityHeaderNames } from "../policy/compile.ts";
import { readClaim } from "../policy/roles.ts";
import { canonicalHeaderName } from "../policy/semantics.ts";
import type { Identity } from "./authn/verify-bearer.ts";

// What the request pass does with a header, by canonical name. Capturing kinds act only on the exact
// spelling; a variant (`x_forwarded_for`) is simply dropped.
const DROP = 1;
const HOST = 2;
const CONNECTION = 3;
const FORWARDED_FOR = 4;
const REQUEST_ID = 5;
const TRACEPARENT = 6;
const TRACESTATE = 7;
const AUTHORIZATION = 8;
const CONTENT_LENGTH = 9;
const TRANSFER_ENCODING = 10;
const UPGRADE = 11;

/** Hop-by-hop request headers (RFC 9110 section 7.6.1, plus legacy and HTTP/2 ones). */
const HOP_BY_HOP: readonly (readonly [string, number])[] = [
  ["connection", CONNECTION],
  ["proxy-connection", CONNECTION],
  ["keep-alive", DROP],
  ["transfer-encoding", TRANSFER_ENCODING],
  ["te", DROP],
  ["trailer", DROP],
  ["upgrade", UPGRADE],
  ["proxy-authorization", DROP],
  ["expect", DROP],
  ["http2-settings", DROP],
];

/** Headers the proxy sets itself: a client copy is never forwarded. */
const PROXY_SET: readonly (readonly [string, number])[] = [
  ["x-forwarded-for", FORWARDED_FOR],
  ["x-forwarded-proto", DROP],
  ["x-forwarded-host", DROP],
  ["x-request-id", REQUEST_ID],
  ["traceparent", TRACEPARENT],
  ["tracestate", TRACESTATE],
];

/** Connection tokens that name nothing beyond the hop-by-hop headers already removed. */
const PLAIN_CONNECTION_TOKENS = new Set(["close", "keep-alive", "upgrade", ""]);
/** End-to-end framing and routing: a Connection nomination never removes these. */
const NEVER_NOMINATED = new Set(["host", "content-length"]);

const RESPONSE_HOP_BY_HOP = new Set([
  "connection",
  "proxy-connection",
  "keep-alive",
  "transfer-encoding",
  "te",
  "trailer",
  "upgrade",
  "proxy-authenticate",
  "http2-settings",
  // Replaced by the proxy's own.
  "x-request-id",
]);

const REQUEST_ID_FORMAT = /^[A-Za-z0-9._:-]{1,128}$/;
// W3C Trace Context: version 00 exactly; later versions may append fields. Version ff is invalid.
const TRACEPARENT_FORMAT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(-.*)?$/;
const ZERO_TRACE_ID = "0".repeat(32);
const ZERO_PARENT_ID = "0".repeat(16);
const ENCODING_SUFFIX_WIRE = ENCODING_SUFFIX.toLowerCase();

/** What the request pass needs from a policy, compiled once per CompiledPolicy. */
export interface HeaderPlan {
  readonly kinds: ReadonlyMap<string, number>;
  /** Lower-case request id header names -> preference order. */
  readonly requestIdIndex: ReadonlyMap<string, number>;
  readonly requestIdCount: number;
  readonly forwardAuthorization: boolean;
  /** The policy's identity header names, in lower case (see wireNames). */
  readonly identity: CompiledPolicy["identityHeaders"];
  /** Identity header name (lower case) -> its `<name>-encoding` sibling, built once per policy. */
  readonly encodingHeaders: ReadonlyMap<string, string>;
}

const plans = new WeakMap<CompiledPolicy, HeaderPlan>();

export function headerPlan(policy: CompiledPolicy): HeaderPlan {
  let plan = plans.get(policy);
  if (plan === undefined) {
    const kinds = new Map<string, number>();
    for (const name of policy.strippedHeaders) kinds.set(name, DROP);
    for (const [name, kind] of HOP_BY_HOP) kinds.set(name, kind);
    for (const [name, kind] of PROXY_SET) kinds.set(name, kind);
    kinds.set("host", HOST);
    kinds.set("content-length", CONTENT_LENGTH);
    kinds.set("authorization", AUTHORIZATION);
    const identity = wireNames(policy.identityHeaders);
    const identityNames = [
      identity.subject,
      identity.roles,
      identity.scopes,
      identity.clientId,
      identity.issuer,
      ...identity.claims.map(([, header]) => header),
    ];
    plan = {
      kinds,
      requestIdIndex: new Map(policy.requestIdHeaders.map((name, i) => [name, i])),
      requestIdCount: policy.requestIdHeaders.length,
      forwardAuthorization: policy.identityHeaders.forwardAuthorization,
      identity,
      encodingHeaders: new Map(identityNames.map((name) => [name, `${name}${ENCODING_SUFFIX_WIRE}`])),
    };
    plans.set(policy, plan);
  }
  return plan;
}

/**
 * Identity headers go upstream in lower case: names are case-insensitive (RFC 9110 section 5.1) and
 * ASGI lower-cases them anyway, while undici lower-cases and re-validates a mixed-case name it does
 * not know on every request (~0.1 us per header, measured on its Request constructor).
 */
function wireNames(names: IdentityHeaderNames): IdentityHeaderNames {
  const { assertion } = names;
  return {
    ...names,
    subject: names.subject.toLowerCase(),
    roles: names.roles.toLowerCase(),
    scopes: names.scopes.toLowerCase(),
    clientId: names.clientId.toLowerCase(),
    issuer: names.issuer.toLowerCase(),
    claims: names.claims.map(([claim, header]) => [claim, header.toLowerCase()] as const),
    ...(assertion === undefined
      ? {}
      : { assertion: { ...assertion, header: assertion.header.toLowerCase() } }),
  };
}

// uri-host [":" port]: an IP literal, or a reg-name of unreserved and sub-delims characters and
// %-escapes. No comma (a list of values), no "@" (userinfo), no space or control character. The port
// range (0-65535) is in the pattern, so the check on every request is one test() with no match array.
const HOST_AND_PORT =
  /^(?:\[[0-9A-Fa-f:.]{2,45}\]|(?:[A-Za-z0-9\-._~!$&'()*+;=]|%[0-9A-Fa-f]{2})+)(?::(?:[0-9]{1,4}|[0-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?$/;

/** A Host value the app's server would accept: host[:port], the port at most 65535. */
function isHostAndPort(value: string): boolean {
  return HOST_AND_PORT.test(value);
}

export type InboundRefusal = "bad-host" | "ambiguous-headers";

/** The result of one pass over the client's headers. */
export interface InboundHeaders {
  /** Surviving client headers, flat `[name, value, ...]`, names as sent. */
  forward: string[];
  host: string | undefined;
  /**
   * Why the request must be refused with a 400 before anything else, undefined when it need not be:
   * bad-host, the Host value is not a host[:port] (RFC 9110 section 7.2: spaces, userinfo, a list, a
   * bad port); ambiguous-headers, more than one Host or Content-Length: ambiguous routing or framing
   * (RFC 9112 section 3.2, 6.3).
   */
  refusal: InboundRefusal | undefined;
  /** Every client X-Forwarded-For copy, joined; undefined when none (or nominated in Connection). */
  forwardedFor: string | undefined;
  /** The first well-formed inbound request id, by the policy's preference. */
  requestId: string | undefined;
  /** The inbound traceparent when it is valid W3C (and sent once). */
  traceparent: string | undefined;
  tracestate: string | undefined;
  /** The request has a body to stream: a non-zero Content-Length, or a Transfer-Encoding. */
  hasBody: boolean;
  /** The Upgrade header's value (kept in `forward` only when asked for). */
  upgrade: string | undefined;
}

/**
 * Steps 1-3 over `raw` (Node's `req.rawHeaders`). `keepUpgrade` keeps the Upgrade header for the
 * WebSocket path; everything else about the connection is the proxy's to set.
 */
export function readInboundHeaders(
  raw: readonly string[],
  plan: HeaderPlan,
  keepUpgrade = false,
): InboundHeaders {
  const { kinds, requestIdIndex } = plan;
  const forward: string[] = [];
  let host: string | undefined;
  let hosts = 0;
  let lengths = 0;
  let hasBody = false;
  let forwardedFor: string | undefined;
  let traceparent: string | undefined;
  let traceparents = 0;
  let tracestate: string | undefined;
  let upgrade: string | undefined;
  let nominated: Set<string> | undefined;
  let requestIds: (string | undefined)[] | undefined;

  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    const value = raw[i + 1]!;
    const lower = name.toLowerCase();
    const idIndex = requestIdIndex.get(lower);
    if (idIndex !== undefined) {
      requestIds ??= new Array<string | undefined>(plan.requestIdCount);
      requestIds[idIndex] ??= value;
    }
    const exact = lower.indexOf("_") === -1 && lower.indexOf(".") === -1;
    const canonical = exact ? lower : canonicalHeaderName(lower);
    const kind = kinds.get(canonical);
    if (kind === undefined) {
      forward.push(name, value);
      continue;
    }
    if (!exact) continue;
    switch (kind) {
      case HOST:
        hosts++;
        host ??= value;
        forward.push(name, value);
        break;
      case CONTENT_LENGTH:
        lengths++;
        if (value !== "0") hasBody = true;
        forward.push(name, value);
        break;
      case TRANSFER_ENCODING:
        hasBody = true;
        break;
      case CONNECTION:
        nominated = nominate(value, nominated);
        break;
      case FORWARDED_FOR:
        forwardedFor = forwardedFor === undefined ? value : `${forwardedFor}, ${value}`;
        break;
      case TRACEPARENT:
        traceparents++;
        traceparent = value;
        break;
      case TRACESTATE:
        tracestate = tracestate === undefined ? value : `${tracestate},${value}`;
        break;
      case AUTHORIZATION:
        if (plan.forwardAuthorization) forward.push(name, value);
        break;
      case UPGRADE:
        upgrade ??= value;
        if (keepUpgrade) forward.push(name, value);
        break;
      // DROP, REQUEST_ID: the proxy sets its own.
    }
  }

  const inbound: InboundHeaders = {
    forward,
    host,
    refusal:
      hosts === 1 && !isHostAndPort(host ?? "")
        ? "bad-host"
        : hosts > 1 || lengths > 1
          ? "ambiguous-headers"
          : undefined,
    forwardedFor,
    requestId: requestIds === undefined ? undefined : pickRequestId(requestIds, plan, nominated),
    traceparent: traceparents === 1 && isValidTraceparent(traceparent) ? traceparent : undefined,
    tracestate,
    hasBody,
    upgrade,
  };
  if (nominated !== undefined) applyNominations(inbound, nominated);
  return inbound;
}

/** The first well-formed candidate, in the policy's order, from headers not nominated in Connection. */
function pickRequestId(
  candidates: readonly (string | undefined)[],
  plan: HeaderPlan,
  nominated: ReadonlySet<string> | undefined,
): string | undefined {
  for (const [name, index] of plan.requestIdIndex) {
    const candidate = candidates[index];
    if (candidate === undefined || !REQUEST_ID_FORMAT.test(candidate)) continue;
    if (nominated?.has(canonicalHeaderName(name))) continue;
    return candidate;
  }
  return undefined;
}

/** Adds the canonical names a Connection header value nominates (beyond the plain tokens). */
function nominate(value: string, into: Set<string> | undefined): Set<string> | undefined {
  let set = into;
  for (const token of value.split(",")) {
    const name = token.trim().toLowerCase();
    if (PLAIN_CONNECTION_TOKENS.has(name)) continue;
    const canonical = canonicalHeaderName(name);
    if (NEVER_NOMINATED.has(canonical)) continue;
    set ??= new Set();
    set.add(canonical);
  }
  return set;
}

/** The rare path: the client nominated end-to-end headers as hop-by-hop, so they are not forwarded. */
function applyNominations(inbound: InboundHeaders, nominated: ReadonlySet<string>): void {
  const kept: string[] = [];
  const { forward } = inbound;
  for (let i = 0; i < forward.length; i += 2) {
    const name = forward[i]!;
    if (!nominated.has(canonicalHeaderName(name))) kept.push(name, forward[i + 1]!);
  }
  inbound.forward = kept;
  if (nominated.has("x-forwarded-for")) inbound.forwardedFor = undefined;
  if (nominated.has("traceparent")) inbound.traceparent = undefined;
  if (nominated.has("tracestate")) inbound.tracestate = undefined;
}

function isValidTraceparent(value: string | undefined): value is string {
  if (value === undefined) return false;
  const m = TRACEPARENT_FORMAT.exec(value);
  if (m === null) return false;
  const version = m[1];
  if (version === "ff") return false;
  if (version === "00" && m[4] !== undefined) return false;
  return m[2] !== ZERO_TRACE_ID && m[3] !== ZERO_PARENT_ID;
}

/** What the proxy adds to every forwarded request. */
export interface ForwardContext {
  peerAddress: string;
  proto: "http" | "https";
  requestId: string;
  traceparent: string;
}

/**
 * The headers sent upstream: the surviving client headers, then the proxy's own (one copy each):
 * X-Forwarded-For/-Proto/-Host, X-Request-Id, traceparent (+ tracestate), the identity headers.
 */
export function forwardHeaders(
  inbound: InboundHeaders,
  context: ForwardContext,
  identity: readonly string[],
): string[] {
  const out = inbound.forward;
  out.push(
    "x-forwarded-for",
    inbound.forwardedFor === undefined
      ? context.peerAddress
      : `${inbound.forwardedFor}, ${context.peerAddress}`,
    "x-forwarded-proto",
    context.proto,
  );
  if (inbound.host !== undefined) out.push("x-forwarded-host", inbound.host);
  out.push("x-request-id", context.requestId, "traceparent", context.traceparent);
  // A tracestate belongs to the trace it came with; a new trace starts without one.
  if (inbound.tracestate !== undefined && inbound.traceparent === context.traceparent) {
    out.push("tracestate", inbound.tracestate);
  }
  for (let i = 0; i < identity.length; i++) out.push(identity[i]!);
  return out;
}

/** The identity headers for a verified token, or the claim that must not become one. */
export type IdentityHeaderValues =
  | { ok: true; headers: readonly string[] }
  | { ok: false; header: string; problem: "control-character" | "unpaired-surrogate" };

const identityCache = new WeakMap<Identity, { plan: HeaderPlan; values: IdentityHeaderValues }>();
/** C0 controls (CR, LF, NUL, ...) and DEL: in a header they split or end it, or are dropped on the way. */
function hasControlCharacter(value: string): boolean {
  for (let i = 0; i < value.length; i++) {
    const code = value.charCodeAt(i);
    if (code < 0x20 || code === 0x7f) return true;
  }
  return false;
}
const VISIBLE_ASCII = /^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$/;

/**
 * The identity headers for a verified token, flat `[name, value, ...]`, each name at most once, cached
 * per identity. A value of visible ASCII goes as it is; one with other characters (UTF-8 names and
 * emails, leading or trailing spaces) goes percent-encoded (UTF-8) with a sibling `<name>-encoding:
 * percent`, so the app can decode it and nothing is dropped. A value with a control character is
 * refused: the token is rejected (the caller answers 401) rather than the header silently left out.
 */
export function identityHeaders(plan: HeaderPlan, identity: Identity): IdentityHeaderValues {
  const cached = identityCache.get(identity);
  if (cached !== undefined && cached.plan === plan) return cached.values;
  const names = plan.identity;
  const headers: string[] = [];
  let refused: IdentityHeaderValues | undefined;
  const add = (name: string, value: string | undefined) => {
    if (value === undefined || value === "" || refused) return;
    if (VISIBLE_ASCII.test(value)) headers.push(name, value);
    else if (hasControlCharacter(value)) refused = { ok: false, header: name, problem: "control-character" };
    // A lone UTF-16 surrogate (a JSON "\ud800" escape) has no UTF-8 form: encodeURIComponent throws.
    else if (!value.isWellFormed()) refused = { ok: false, header: name, problem: "unpaired-surrogate" };
    else headers.push(name, encodeURIComponent(value), plan.encodingHeaders.get(name)!, "percent");
  };
  add(names.subject, identity.subject);
  add(names.roles, [...identity.roles].sort().join(","));
  add(names.scopes, identity.scopes.join(" "));
  add(names.clientId, identity.clientId);
  add(names.issuer, identity.issuer);
  for (const [claim, header] of names.claims) {
    const value = readClaim(identity.claims, claim);
    if (typeof value === "string") add(header, value);
    else if (typeof value === "number" && Number.isFinite(value)) add(header, String(value));
  }
  const values: IdentityHeaderValues = refused ?? { ok: true, headers };
  identityCache.set(identity, { plan, values });
  return values;
}

export type ParsedHeaders = Readonly<Record<string, string | string[] | undefined>>;

/**
 * The upstream's response headers as sent to the client: hop-by-hop ones (and any the upstream's
 * Connection header nominates) removed, X-Request-Id set to the proxy's. `headers` is undici's parsed
 * object (lower-case names, repeated headers as arrays), which undici builds for every response anyway.
 */
export function responseHeaders(headers: ParsedHeaders, requestId: string): (string | string[])[] {
  const out: (string | string[])[] = [];
  const connection = headers.connection;
  const nominated = connection === undefined ? undefined : responseNominations(connection);
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined || RESPONSE_HOP_BY_HOP.has(name) || nominated?.has(name)) continue;
    out.push(name, value);
  }
  out.push("x-request-id", requestId);
  return out;
}

function responseNominations(connection: string | string[]): Set<string> | undefined {
  // What nearly every app sends, or nothing at all.
  if (connection === "keep-alive" || connection === "close") return undefined;
  let nominated: Set<string> | undefined;
  for (const value of Array.isArray(connection) ? connection : [connection]) {
    for (const token of value.split(",")) {
      const name = token.trim().toLowerCase();
      if (PLAIN_CONNECTION_TOKENS.has(name) || name === "content-length") continue;
      nominated ??= new Set();
      nominated.add(name);
    }
  }
  return nominated;
}
