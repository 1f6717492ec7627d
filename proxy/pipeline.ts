// The request path as a short pipeline of named steps:
//   readInboundHeaders -> requestIdFor / traceparentFor -> parseTarget -> matchRule
//   -> [public: forward | deny rule: 403] -> checkRateLimit (`key: ip`) -> readBearer
//   -> failed-authentication bucket -> verifyBearer -> authorizeRoles -> checkRateLimit (the others)
//   -> forward (identity headers + signed assertion)
// Every refusal answers with a problem and never forwards. The runtime (policy + verifier) is read once,
// at the start, and used for every step of the request. The rate limiter and the assertion signer are
// the process's (ProxyContext), so buckets and the signing key outlive policy reloads.

import { randomFillSync } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { TLSSocket } from "node:tls";
import type pino from "pino";
import type { Dispatcher } from "undici";
import { type Authorization, authorize, type CompiledPolicy, type CompiledRule } from "../policy/compile.ts";
import { type Explanation, explain, modeOf } from "../policy/decision.ts";
import { parseRequestTarget, type RequestTarget } from "../policy/request-target.ts";
import type { RuleMatch } from "../policy/rule-matcher.ts";
import type { RateLimit } from "../policy/schema.ts";
import { writeAccessLine } from "./access-log.ts";
import type { AssertionSigner } from "./assertion.ts";
import { type Credential, readCredential } from "./authn/credential.ts";
import type { BearerVerifier, Identity, Verification } from "./authn/verify-bearer.ts";
import { type ForwardOutcome, forward } from "./forward.ts";
import {
  forwardHeaders,
  type HeaderPlan,
  headerPlan,
  type InboundHeaders,
  identityHeaders,
  readInboundHeaders,
} from "./headers.ts";
import { PROBLEMS, type Problem, sendProblem } from "./problem.ts";
import {
  exhausted,
  failedAuthenticationKey,
  peerBucket,
  type RateLimiter,
  type RateLimitSubject,
  type RateLimitVerdict,
} from "./rate-limit.ts";
import type { ProxyRuntime } from "./runtime.ts";

export interface RequestMetrics {
  requestCompleted(event: {
    rule: string;
    decision: string;
    status: number;
    seconds: number;
    upstreamSeconds?: number;
    /** Dry run: the status the policy would have answered with. */
    wouldStatus?: number;
  }): void;
}

/** What every request shares: built once by createProxyServer. */
export interface ProxyContext {
  readonly current: () => ProxyRuntime;
  readonly pool: Dispatcher;
  readonly upstream: URL;
  readonly logger: pino.Logger;
  readonly metrics: RequestMetrics | undefined;
  /** One per process: buckets survive policy reloads. */
  readonly rateLimiter: RateLimiter;
  /** One per process: the key the app trusts survives policy reloads. */
  readonly assertionSigner: AssertionSigner;
  /** HTTP requests received and not yet answered (upgraded connections are not counted). */
  inFlight: number;
}

/**
 * allow: forwarded; deny: 403 (429 when rate-limited); unauthenticated: 401; invalid: 400; error: the
 * proxy or the upstream failed (5xx, or the client left); would_deny: refused by a rule or policy in
 * DryRun, so forwarded (`wouldStatus` says what it would have answered).
 */
export type Decision = "allow" | "deny" | "unauthenticated" | "invalid" | "error" | "would_deny";

/** The access log record of one request, filled in as the steps run. */
export interface Exchange {
  requestId: string;
  method: string;
  /** Decoded, without the query; undefined when the target was refused. */
  path: string | undefined;
  rule: string | undefined;
  decision: Decision;
  reason: string;
  subject: string | undefined;
  clientId: string | undefined;
  roles: readonly string[] | undefined;
  /** The limit that refused the request (reason "rate-limited"). */
  rateLimit: string | undefined;
  /** Why the policy refused (or in dry run would have refused) the request; built only then. */
  explanation: Explanation | undefined;
  /** Dry run: the status the refusal would have had. */
  wouldStatus: number | undefined;
  /** performance.now() at arrival. */
  start: number;
  /** Counted in ProxyContext.inFlight until completed (HTTP requests; not upgrades). */
  counted: boolean;
  completed: boolean;
}

/** The rule label of requests no rule matched (rule names are DNS labels: no clash). */
export const NO_RULE = "(none)";

// ---- request id and trace context ----------------------------------------------------------------

// One entropy buffer refilled in bulk and hex-encoded once per refill: a random id costs a substring,
// not a syscall nor an encode per request. Every hex digit is handed out once.
const entropy = Buffer.allocUnsafe(4096);
let entropyHex = "";
let entropyOffset = 0;

function randomHex(bytes: number): string {
  const chars = bytes * 2;
  if (entropyOffset + chars > entropyHex.length) {
    randomFillSync(entropy);
    entropyHex = entropy.toString("hex");
    entropyOffset = 0;
  }
  const hex = entropyHex.slice(entropyOffset, entropyOffset + chars);
  entropyOffset += chars;
  return hex;
}

export function newRequestId(): string {
  return randomHex(16);
}

/** The well-formed inbound id (see readInboundHeaders), else a new random one. */
export function requestIdFor(inbound: InboundHeaders): string {
  return inbound.requestId ?? newRequestId();
}

/**
 * The inbound traceparent when valid, else a new trace. Sampled flag set: a parent-based sampler in
 * the app then keeps its traces, instead of silently dropping every request that arrived untraced.
 */
export function traceparentFor(inbound: InboundHeaders): string {
  return inbound.traceparent ?? `00-${randomHex(16)}-${randomHex(8)}-01`;
}

// ---- steps ------------------------------------------------------------------------------------

/** Origin-form only; the path decoded the way the app will route it. */
export function parseTarget(url: string | undefined): RequestTarget {
  if (url === undefined) return { ok: false, reason: "no request target" };
  return parseRequestTarget(url);
}

/** The request's bearer credential, with the cached verification of a token verified before. */
export function readBearer(
  req: IncomingMessage,
  query: string,
  verifier: BearerVerifier,
): Credential<Verification> {
  return readCredential(req, query, verifier.verifyCached);
}

/** A token verified before and still valid is answered at once, without a promise. */
export function verifyBearer(
  verifier: BearerVerifier,
  bearer: { token: string; known?: Verification },
): Verification | Promise<Verification> {
  return bearer.known ?? verifier.verify(bearer.token);
}

export function authorizeRoles(
  rule: CompiledRule | undefined,
  policy: CompiledPolicy,
  identity: Identity,
): Authorization {
  return authorize(rule, policy.defaultAction, identity.roles);
}

const ALLOWED: RateLimitVerdict = { allowed: true };

/**
 * A rate-limit step. No limits (the common case) is answered here, synchronously and without
 * allocating; otherwise the process's limiter decides (a promise: a bucket may live in Redis).
 */
export function checkRateLimit(
  limiter: RateLimiter,
  limits: readonly RateLimit[],
  limiting: Limiting,
  identity?: Identity,
): RateLimitVerdict | Promise<RateLimitVerdict> {
  if (limits.length === 0) return ALLOWED;
  const who = subjectOf(limiting);
  if (identity !== undefined) {
    who.issuer = identity.issuer;
    who.subject = identity.subject;
    who.clientId = identity.clientId;
  }
  return limiter.check(limits, who);
}

/** A request's rate-limit subject, built once (when a limit first needs it) for all of its limits. */
export interface Limiting {
  readonly req: IncomingMessage;
  who: RateLimitSubject | undefined;
}

function subjectOf(limiting: Limiting): RateLimitSubject {
  limiting.who ??= rateLimitSubject(undefined, limiting.req);
  return limiting.who;
}

/**
 * Who a limited request counts against: the verified identity (none on public rules), the socket's
 * peer by its bucket address (never X-Forwarded-For, which the client writes), and the request's
 * headers by name.
 */
export function rateLimitSubject(identity: Identity | undefined, req: IncomingMessage): RateLimitSubject {
  return {
    issuer: identity?.issuer,
    subject: identity?.subject,
    clientId: identity?.clientId,
    ip: peerBucket(peerAddress(req)),
    header(name) {
      // Node's lower-cased map: repeated copies joined with ", " (a distinct bucket, not a bypass).
      const value = req.headers[name.toLowerCase()];
      return Array.isArray(value) ? value.join(", ") : value;
    },
  };
}

/** The signed identity assertion for an admitted identity: `aud` is the policy's name. */
export function signedAssertion(
  signer: AssertionSigner,
  policy: CompiledPolicy,
  identity: Identity,
  ttlSeconds: number,
): string {
  return signer.assertionFor(identity, policy.name, ttlSeconds, Math.floor(Date.now() / 1000));
}

// ---- admission: the steps from rule match to rate limit, shared with WebSocket upgrades -----------

/** A verified identity and the identity headers computed (and checked) for it, once per request. */
interface Verified {
  identity: Identity;
  headers: readonly string[];
}

/** Admitted: forwarded with `headers` (the identity headers; none when no identity is forwarded). */
export type Admitted =
  | { admitted: true; identity: Identity; headers: readonly string[] }
  | { admitted: true; identity: undefined; headers: readonly string[] };

export type Admission = Admitted | { admitted: false; problem: Problem };

const NO_IDENTITY: readonly string[] = [];
const PUBLIC: Admission = { admitted: true, identity: undefined, headers: NO_IDENTITY };

function admittedAs(verified: Verified | undefined): Admission {
  return verified === undefined ? PUBLIC : { admitted: true, ...verified };
}

/**
 * What the refusal steps need besides the exchange: the policy, its header plan and the rule match;
 * and the request's rate-limit subject once a limit has built it.
 */
interface Decided extends Limiting {
  policy: CompiledPolicy;
  plan: HeaderPlan;
  match: RuleMatch<CompiledRule> | undefined;
}

/**
 * A refusal, explained on the exchange. Where the deciding rule (or the policy, when none matched) is
 * in DryRun, the request is admitted instead, recorded as would_deny: with the verified identity when
 * the token checked out, with none otherwise (the app then sees an anonymous request).
 */
function refusal(
  exchange: Exchange,
  decided: Decided,
  decision: "deny" | "unauthenticated" | "invalid",
  reason: string,
  problem: Problem,
  verified?: Verified,
): Admission {
  // In DryRun a limit counted before authentication may already have recorded what Enforce would have
  // answered first; the steps after it run only to forward what they would without the limit.
  if (exchange.decision === "would_deny") return admittedAs(verified);
  const { policy, match } = decided;
  exchange.reason = reason;
  exchange.explanation = explain(policy, {
    method: exchange.method,
    path: exchange.path ?? "",
    match,
    decision,
    reason,
    status: problem.status,
    ...(verified === undefined ? {} : { roles: verified.identity.roles }),
  });
  if (policy.dryRun && modeOf(match?.rule, policy) === "DryRun") {
    exchange.decision = "would_deny";
    exchange.wouldStatus = problem.status;
    return admittedAs(verified);
  }
  exchange.decision = decision;
  return { admitted: false, problem };
}

/** 429 with Retry-After; the access line names the limit. */
function rateLimited(
  exchange: Exchange,
  decided: Decided,
  verdict: { limit: string; retryAfterSeconds: number },
  verified?: Verified,
): Admission {
  exchange.rateLimit = verdict.limit;
  const problem = { ...PROBLEMS.tooManyRequests, retryAfterSeconds: verdict.retryAfterSeconds };
  return refusal(exchange, decided, "deny", "rate-limited", problem, verified);
}

function admitPublic(exchange: Exchange, decided: Decided, verdict: RateLimitVerdict): Admission {
  return verdict.allowed ? PUBLIC : rateLimited(exchange, decided, verdict);
}

function admitIdentity(
  exchange: Exchange,
  decided: Decided,
  reason: Authorization["reason"],
  verified: Verified,
  verdict: RateLimitVerdict,
): Admission {
  if (!verdict.allowed) return rateLimited(exchange, decided, verdict, verified);
  if (exchange.decision !== "would_deny") {
    exchange.decision = "allow";
    exchange.reason = reason;
  }
  return { admitted: true, ...verified };
}

/** Decides whether the request is forwarded; records the decision on `exchange`. */
export function admit(
  ctx: ProxyContext,
  runtime: ProxyRuntime,
  plan: HeaderPlan,
  req: IncomingMessage,
  exchange: Exchange,
  target: { path: string; query: string },
): Admission | Promise<Admission> {
  const { policy } = runtime;
  const match = policy.matchRule(exchange.method, target.path);
  const rule = match?.rule;
  const decided: Decided = { policy, plan, match, req, who: undefined };
  exchange.rule = rule?.name;
  if (rule?.action.kind === "public") {
    exchange.decision = "allow";
    exchange.reason = "public";
    const limited = checkRateLimit(ctx.rateLimiter, rule.rateLimits, decided);
    if (limited instanceof Promise) return limited.then((verdict) => admitPublic(exchange, decided, verdict));
    return admitPublic(exchange, decided, limited);
  }
  if (rule?.action.kind === "deny")
    return refusal(exchange, decided, "deny", "deny-rule", PROBLEMS.forbidden);
  // `key: ip` limits count every request of the peer before its token is looked at, as a rate limit
  // placed before authentication does in Envoy or Kong: a flood of bad tokens drains them too.
  const peerLimited = checkRateLimit(ctx.rateLimiter, rule?.peerRateLimits ?? NO_LIMITS, decided);
  if (peerLimited instanceof Promise) {
    return peerLimited.then(
      (verdict) =>
        refusedBeforeAuthentication(exchange, decided, verdict) ??
        authenticate(ctx, runtime, req, exchange, target, decided),
    );
  }
  return (
    refusedBeforeAuthentication(exchange, decided, peerLimited) ??
    authenticate(ctx, runtime, req, exchange, target, decided)
  );
}

const NO_LIMITS: readonly RateLimit[] = [];

/**
 * The 429 of a limit counted before authentication, or undefined when the request goes on: allowed, or
 * refused in DryRun, where the refusal is recorded as would_deny and authentication goes on so the app
 * gets what it would get without the limit (the verified identity when the token checks out).
 */
function refusedBeforeAuthentication(
  exchange: Exchange,
  decided: Decided,
  verdict: RateLimitVerdict,
): Admission | undefined {
  if (verdict.allowed) return undefined;
  const admission = rateLimited(exchange, decided, verdict);
  return admission.admitted ? undefined : admission;
}

/** Credential, failed-authentication limit, verification, then admitVerified. */
function authenticate(
  ctx: ProxyContext,
  runtime: ProxyRuntime,
  req: IncomingMessage,
  exchange: Exchange,
  target: { path: string; query: string },
  decided: Decided,
): Admission | Promise<Admission> {
  const { policy } = runtime;
  const credential = readBearer(req, target.query, runtime.verifier);
  if (credential.kind === "none") {
    return refusal(exchange, decided, "unauthenticated", "no-credential", PROBLEMS.missingToken);
  }
  // Before any parse or signature check: a credential this sidecar has not verified before holds a
  // token of its peer's failed-authentication bucket, given back when it checks out (settleFailureToken).
  const failureLimit = policy.failedAuthenticationLimit;
  let held: HeldFailureToken | undefined;
  if (failureLimit !== undefined && !(credential.kind === "bearer" && credential.known !== undefined)) {
    const key = failedAuthenticationKey(subjectOf(decided).ip);
    const waitMs = ctx.rateLimiter.takeLocal(key, failureLimit.perSecond, failureLimit.burst);
    if (waitMs === 0) held = { key, burst: failureLimit.burst };
    else {
      const refused = refusedBeforeAuthentication(
        exchange,
        decided,
        exhausted(FAILED_AUTHENTICATION_LIMIT, waitMs),
      );
      if (refused !== undefined) return refused;
    }
  }
  if (credential.kind === "invalid") {
    const problem =
      credential.status === 400
        ? PROBLEMS.invalidRequest
        : credential.error === "invalid_token"
          ? PROBLEMS.invalidToken
          : PROBLEMS.missingToken;
    return refusal(
      exchange,
      decided,
      credential.status === 400 ? "invalid" : "unauthenticated",
      credential.reason,
      problem,
    );
  }
  const verification = verifyBearer(runtime.verifier, credential);
  if (verification instanceof Promise) {
    return verification.then((verified) => {
      if (held !== undefined) settleFailureToken(ctx, held, verified);
      return admitVerified(ctx, decided, exchange, verified);
    });
  }
  if (held !== undefined) settleFailureToken(ctx, held, verification);
  return admitVerified(ctx, decided, exchange, verification);
}

/** The failed-authentication limit's name in the access log (a field name: no rate limit has it). */
const FAILED_AUTHENTICATION_LIMIT = "failedAuthenticationLimit";

// Failures that are the sidecar's or the IdP's, not the peer's: the held token goes back.
const NOT_THE_PEERS_FAULT: ReadonlySet<string> = new Set(["keys_unavailable", "internal"]);

/** A token taken from a peer's failed-authentication bucket while its credential is verified. */
interface HeldFailureToken {
  key: string;
  burst: number;
}

/** A verification that checked out (or failed through no fault of the peer) gives its token back. */
function settleFailureToken(ctx: ProxyContext, held: HeldFailureToken, verification: Verification): void {
  if (verification.ok || NOT_THE_PEERS_FAULT.has(verification.reason)) {
    ctx.rateLimiter.refundLocal(held.key, held.burst);
  }
}

/** The steps after verification: roles, authorization, rate limit. */
function admitVerified(
  ctx: ProxyContext,
  decided: Decided,
  exchange: Exchange,
  verification: Verification,
): Admission | Promise<Admission> {
  if (!verification.ok) {
    return refusal(exchange, decided, "unauthenticated", verification.reason, PROBLEMS.invalidToken);
  }
  const { policy } = decided;
  const rule = decided.match?.rule;
  const { identity } = verification;
  // A claim that would become an identity header with a control character in it: the token is refused
  // (the app must never see an authenticated request whose subject went missing on the way).
  const values = identityHeaders(decided.plan, identity);
  if (!values.ok) {
    return refusal(
      exchange,
      decided,
      "unauthenticated",
      `${values.problem}-in-${values.header}`,
      PROBLEMS.invalidToken,
    );
  }
  const verified: Verified = { identity, headers: values.headers };
  exchange.subject = identity.subject;
  exchange.clientId = identity.clientId;
  exchange.roles = identity.roles;
  const authorization = authorizeRoles(rule, policy, identity);
  if (!authorization.allow) {
    return refusal(exchange, decided, "deny", authorization.reason, PROBLEMS.insufficientScope, verified);
  }
  const limited = checkRateLimit(ctx.rateLimiter, rule?.admittedRateLimits ?? NO_LIMITS, decided, identity);
  if (limited instanceof Promise) {
    return limited.then((verdict) =>
      admitIdentity(exchange, decided, authorization.reason, verified, verdict),
    );
  }
  return admitIdentity(exchange, decided, authorization.reason, verified, limited);
}

/**
 * Runs `proceed` with the admission, at once or when it settles. One promise, no .catch() chain;
 * what the async path throws goes to `fail`, never unhandled (the sync path throws to the caller).
 */
export function whenAdmitted(
  admission: Admission | Promise<Admission>,
  proceed: (decided: Admission) => void,
  fail: (error: unknown) => void,
): void {
  if (!(admission instanceof Promise)) {
    proceed(admission);
    return;
  }
  admission.then((decided) => {
    try {
      proceed(decided);
    } catch (error) {
      fail(error);
    }
  }, fail);
}

// ---- the HTTP request handler ---------------------------------------------------------------------

export function newExchange(requestId: string, method: string, start: number, counted: boolean): Exchange {
  return {
    requestId,
    method,
    path: undefined,
    rule: undefined,
    decision: "invalid",
    reason: "",
    subject: undefined,
    clientId: undefined,
    roles: undefined,
    rateLimit: undefined,
    explanation: undefined,
    wouldStatus: undefined,
    start,
    counted,
    completed: false,
  };
}

/**
 * Ends a request once (whatever path gets here first): the one access log line and metric. Never the
 * token, never query values.
 */
export function completeExchange(
  ctx: ProxyContext,
  exchange: Exchange,
  status: number,
  upstreamMs: number | undefined,
  failure?: string,
): void {
  if (exchange.completed) return;
  exchange.completed = true;
  if (exchange.counted) ctx.inFlight--;
  const latencyMs = performance.now() - exchange.start;
  const rule = exchange.rule ?? NO_RULE;
  writeAccessLine(ctx.logger, {
    requestId: exchange.requestId,
    method: exchange.method,
    path: exchange.path,
    rule,
    decision: exchange.decision,
    reason: exchange.reason,
    subject: exchange.subject,
    clientId: exchange.clientId,
    roles: exchange.roles,
    rateLimit: exchange.rateLimit,
    wouldStatus: exchange.wouldStatus,
    explanation: exchange.explanation,
    status,
    latencyMs: Math.round(latencyMs * 1000) / 1000,
    upstreamMs: upstreamMs === undefined ? undefined : Math.round(upstreamMs * 1000) / 1000,
    failure,
  });
  ctx.metrics?.requestCompleted({
    rule,
    decision: exchange.decision,
    status,
    seconds: latencyMs / 1000,
    upstreamSeconds: upstreamMs === undefined ? undefined : upstreamMs / 1000,
    wouldStatus: exchange.wouldStatus,
  });
}

/** Answers with a problem (never forwarding) and completes the request. */
function refuse(
  ctx: ProxyContext,
  res: ServerResponse,
  exchange: Exchange,
  problem: Problem,
  inbound: InboundHeaders,
): void {
  // An unread body is not drained just to keep the connection: close it after the answer.
  sendProblem(res, problem, exchange.requestId, inbound.hasBody);
  completeExchange(ctx, exchange, problem.status, undefined);
}

/** A bug or an unexpected rejection: 500 if nothing was sent yet, never a stack trace. */
function fail(ctx: ProxyContext, res: ServerResponse, exchange: Exchange, error: unknown): void {
  if (exchange.completed) return;
  ctx.logger.error({ err: error, requestId: exchange.requestId }, "request failed");
  exchange.decision = "error";
  exchange.reason = "internal";
  if (!res.headersSent) sendProblem(res, PROBLEMS.internal, exchange.requestId, true);
  else res.destroy();
  completeExchange(ctx, exchange, 500, undefined);
}

export function peerAddress(req: IncomingMessage): string {
  return req.socket.remoteAddress ?? "unknown";
}

export function protoOf(req: IncomingMessage): "http" | "https" {
  return (req.socket as Partial<TLSSocket>).encrypted === true ? "https" : "http";
}

/** The headers sent upstream for an admitted request; the assertion, when asked for, goes last. */
export function upstreamHeaders(
  ctx: ProxyContext,
  req: IncomingMessage,
  policy: CompiledPolicy,
  plan: HeaderPlan,
  inbound: InboundHeaders,
  requestId: string,
  admitted: Admitted,
): string[] {
  const headers = forwardHeaders(
    inbound,
    {
      peerAddress: peerAddress(req),
      proto: protoOf(req),
      requestId,
      traceparent: traceparentFor(inbound),
    },
    admitted.headers,
  );
  const { identity } = admitted;
  const assertion = plan.identity.assertion;
  if (identity !== undefined && assertion !== undefined) {
    // Every client copy of the header, in any spelling, was stripped with the identity headers.
    headers.push(
      assertion.header,
      signedAssertion(ctx.assertionSigner, policy, identity, assertion.ttlSeconds),
    );
  }
  return headers;
}

/**
 * The HTTP request handler. `expectsContinue`: the client sent `Expect: 100-continue` and waits; it
 * gets its 100 only once the request is admitted, so a refused upload is never sent at all.
 */
export function handleRequest(
  ctx: ProxyContext,
  req: IncomingMessage,
  res: ServerResponse,
  expectsContinue = false,
): void {
  const start = performance.now();
  ctx.inFlight++;
  let exchange: Exchange | undefined;
  try {
    const runtime = ctx.current();
    const plan = headerPlan(runtime.policy);
    const inbound = readInboundHeaders(req.rawHeaders, plan);
    const admitted = newExchange(requestIdFor(inbound), req.method ?? "", start, true);
    exchange = admitted;
    if (inbound.refusal !== undefined) {
      admitted.reason = inbound.refusal;
      refuse(ctx, res, admitted, PROBLEMS.badRequest, inbound);
      return;
    }
    const target = parseTarget(req.url);
    if (!target.ok) {
      admitted.reason = target.reason;
      refuse(ctx, res, admitted, PROBLEMS.badTarget, inbound);
      return;
    }
    admitted.path = target.path;
    const proceed = (decided: Admission): void => {
      if (!decided.admitted) {
        refuse(ctx, res, admitted, decided.problem, inbound);
        return;
      }
      if (res.destroyed || req.socket.destroyed) {
        // The client left while its token was being verified.
        admitted.decision = "error";
        admitted.reason = "client-aborted";
        completeExchange(ctx, admitted, 499, undefined);
        return;
      }
      if (expectsContinue) res.writeContinue();
      forward(
        ctx.pool,
        res,
        {
          method: admitted.method,
          path: target.query === "" ? target.rawPath : `${target.rawPath}?${target.query}`,
          headers: upstreamHeaders(ctx, req, runtime.policy, plan, inbound, admitted.requestId, decided),
          body: inbound.hasBody ? req : null,
          headersTimeoutMs: runtime.policy.upstreamTimeoutMs,
          requestId: admitted.requestId,
        },
        (outcome: ForwardOutcome) => {
          if (outcome.failure !== undefined) admitted.decision = "error";
          completeExchange(ctx, admitted, outcome.status, outcome.upstreamMs, outcome.failure);
        },
      );
    };
    whenAdmitted(admit(ctx, runtime, plan, req, admitted, target), proceed, (error) =>
      fail(ctx, res, admitted, error),
    );
  } catch (error) {
    exchange ??= newExchange(newRequestId(), req.method ?? "", start, true);
    fail(ctx, res, exchange, error);
  }
}
