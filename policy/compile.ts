// A validated AccessPolicy compiled once into what the request path needs: a rule matcher, a role
// mapper, issuer lookup, and the header sets. Nothing here runs per request except the closures.

import { compileRoleMappings, type RoleMapper } from "./roles.ts";
import { compileRules, type RuleMatch } from "./rule-matcher.ts";
import type { AccessPolicyDocument, AccessPolicySpec, Issuer, Mode, RateLimit, Rule } from "./schema.ts";
import { canonicalHeaderName } from "./semantics.ts";

export type RuleAction =
  | { kind: "public" }
  | { kind: "deny" }
  | { kind: "anyRole"; roles: readonly string[] }
  | { kind: "allRoles"; roles: readonly string[] };

export interface CompiledRule {
  name: string;
  paths: readonly string[];
  methods?: readonly string[];
  action: RuleAction;
  /** Every limit counting this rule's requests, in policy order. */
  rateLimits: readonly RateLimit[];
  /** The `key: ip` ones: counted before the token is verified (a peer's every request, refused or not). */
  peerRateLimits: readonly RateLimit[];
  /** The others: counted once the request is authorised (they key on the identity or a header). */
  admittedRateLimits: readonly RateLimit[];
  /** Set only when the rule names its own mode; otherwise the policy's applies. */
  mode?: Mode;
}

export interface IdentityHeaderNames {
  subject: string;
  roles: string;
  scopes: string;
  clientId: string;
  issuer: string;
  /** [claim name or dotted path, header name] */
  claims: readonly (readonly [string, string])[];
  assertion?: { header: string; ttlSeconds: number };
  forwardAuthorization: boolean;
}

export interface CompiledPolicy {
  name: string;
  spec: AccessPolicySpec;
  matchRule(method: string, path: string): RuleMatch<CompiledRule> | undefined;
  defaultAction: "Deny" | "AllowAuthenticated";
  /** spec.mode: for rules without their own mode, and requests no rule matches. */
  mode: Mode;
  /** Some rule or the policy is in DryRun: refusals may be forwarded (the proxy checks only then). */
  dryRun: boolean;
  /** By exact `iss`. */
  issuers: ReadonlyMap<string, Issuer>;
  /** spec.authentication.failedAuthenticationLimit with its burst defaulted; undefined when off. */
  failedAuthenticationLimit: { perSecond: number; burst: number } | undefined;
  rolesFor: RoleMapper;
  identityHeaders: IdentityHeaderNames;
  /**
   * Canonical names (lower case, `_` and `.` as `-`, see canonicalHeaderName) of every inbound header
   * removed before forwarding: the identity headers, the configured extra ones, the proxy's internal ones.
   */
  strippedHeaders: ReadonlySet<string>;
  /** Lower-case inbound headers that may carry a request id, in order of preference. */
  requestIdHeaders: readonly string[];
  upstreamTimeoutMs: number;
}

/** `<identity header>-Encoding: percent` marks a value sent percent-encoded (UTF-8 beyond ASCII). */
export const ENCODING_SUFFIX = "-Encoding";

/** Headers only the proxy itself may set; a client-sent copy is always dropped. */
export const INTERNAL_HEADERS = ["x-portcullis-rule", "x-portcullis-decision"] as const;

export function ruleAction(rule: Rule): RuleAction {
  if (rule.public === true) return { kind: "public" };
  if (rule.deny === true) return { kind: "deny" };
  if (rule.anyRole !== undefined) return { kind: "anyRole", roles: rule.anyRole };
  if (rule.allRoles !== undefined) return { kind: "allRoles", roles: rule.allRoles };
  // Validation guarantees exactly one; deny is the safe reading of anything else.
  return { kind: "deny" };
}

/** Compiles a policy that passed validatePolicy*(); throws only on programming errors. */
export function compilePolicy(document: AccessPolicyDocument): CompiledPolicy {
  const { spec } = document;
  const limitsByRule = new Map<string, RateLimit[]>();
  for (const limit of spec.rateLimits) {
    for (const rule of limit.rules) limitsByRule.set(rule, [...(limitsByRule.get(rule) ?? []), limit]);
  }
  const rules: CompiledRule[] = spec.authorization.rules.map((rule) => ({
    name: rule.name,
    paths: rule.paths,
    ...(rule.methods ? { methods: rule.methods } : {}),
    action: ruleAction(rule),
    rateLimits: limitsByRule.get(rule.name) ?? [],
    peerRateLimits: (limitsByRule.get(rule.name) ?? []).filter((limit) => limit.key === "ip"),
    admittedRateLimits: (limitsByRule.get(rule.name) ?? []).filter((limit) => limit.key !== "ip"),
    ...(rule.mode ? { mode: rule.mode } : {}),
  }));
  const matcher = compileRules(rules);
  const h = spec.identityHeaders;
  const failedLimit = spec.authentication.failedAuthenticationLimit;
  const identityHeaders: IdentityHeaderNames = {
    subject: h.subject,
    roles: h.roles,
    scopes: h.scopes,
    clientId: h.clientId,
    issuer: h.issuer,
    claims: Object.entries(h.claims ?? {}),
    ...(h.assertion ? { assertion: h.assertion } : {}),
    forwardAuthorization: h.forwardAuthorization,
  };
  const identityNames = [
    h.subject,
    h.roles,
    h.scopes,
    h.clientId,
    h.issuer,
    ...Object.values(h.claims ?? {}),
  ];
  const stripped = [
    ...identityNames,
    // The sibling that says a value is percent-encoded (proxy/headers.ts identityHeaders).
    ...identityNames.map((name) => `${name}${ENCODING_SUFFIX}`),
    // The default assertion header is stripped even when no assertion is configured: an app that
    // checks it must never see a client's copy.
    h.assertion?.header ?? "X-Auth-Assertion",
    ...h.steeringHeaders,
    ...(h.remove ?? []),
    ...INTERNAL_HEADERS,
  ].map(canonicalHeaderName);
  return {
    name: document.metadata?.name ?? "policy",
    spec,
    matchRule: (method, path) => matcher.match(method, path),
    defaultAction: spec.authorization.defaultAction,
    mode: spec.mode,
    dryRun: spec.mode === "DryRun" || rules.some((rule) => rule.mode === "DryRun"),
    issuers: new Map(spec.authentication.issuers.map((i) => [i.issuer, i])),
    failedAuthenticationLimit: failedLimit && {
      perSecond: failedLimit.perSecond,
      burst: failedLimit.burst ?? failedLimit.perSecond,
    },
    rolesFor: compileRoleMappings(spec.authorization.roleMappings),
    identityHeaders,
    strippedHeaders: new Set(stripped),
    requestIdHeaders: spec.listener.requestIdHeaders.map((n) => n.toLowerCase()),
    upstreamTimeoutMs: spec.upstream.timeoutSeconds * 1000,
  };
}

export type Authorization =
  | { allow: true; reason: "public" | "roles" | "authenticated" }
  | { allow: false; reason: "deny-rule" | "missing-roles" | "no-rule" };

/** The decision for an authenticated caller with `roles` (public rules never reach here). */
export function authorize(
  rule: CompiledRule | undefined,
  defaultAction: CompiledPolicy["defaultAction"],
  roles: readonly string[],
): Authorization {
  if (!rule)
    return defaultAction === "AllowAuthenticated"
      ? { allow: true, reason: "authenticated" }
      : { allow: false, reason: "no-rule" };
  const { action } = rule;
  switch (action.kind) {
    case "public":
      return { allow: true, reason: "public" };
    case "deny":
      return { allow: false, reason: "deny-rule" };
    case "anyRole":
      return action.roles.some((r) => roles.includes(r))
        ? { allow: true, reason: "roles" }
        : { allow: false, reason: "missing-roles" };
    case "allRoles":
      return action.roles.every((r) => roles.includes(r))
        ? { allow: true, reason: "roles" }
        : { allow: false, reason: "missing-roles" };
  }
}
