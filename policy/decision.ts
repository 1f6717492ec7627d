// What a policy decides for a request, and why, as data. The proxy builds an Explanation only when it
// refuses (or, in dry run, would refuse) a request, for the access line; `portcullis explain` and
// `portcullis test` run `decide` on a method, a path and claims. Both go through the same steps the
// proxy takes (proxy/pipeline.ts admit): match the rule (rule-matcher.ts), public and deny rules
// before any token, then the token's issuer, the claim checks that need no key (claim-checks.ts: the
// proxy's own), its roles (the policy's role mapping, roles.ts), and authorize (compile.ts). Only the signature
// is the proxy's alone.

import { checkClaims } from "./claim-checks.ts";
import { type Authorization, authorize, type CompiledPolicy, type CompiledRule } from "./compile.ts";
import type { Claims } from "./roles.ts";
import type { RuleMatch } from "./rule-matcher.ts";
import type { Mode } from "./schema.ts";

/** What the matched rule, or the default action when none matched, asks of a request. */
export type Requirement =
  | { public: true }
  | { deny: true }
  | { anyRole: readonly string[] }
  | { allRoles: readonly string[] }
  | { defaultAction: CompiledPolicy["defaultAction"] };

/** As the access line says it: allow, deny (403 or 429), unauthenticated (401), invalid (400). */
export type Outcome = "allow" | "deny" | "unauthenticated" | "invalid";

export interface Explanation {
  /** The matched rule's name; absent when no rule matched. */
  rule?: string;
  /** The rule's path template that matched. */
  template?: string;
  requires: Requirement;
  /** The mode the decision is carried out in (the rule's, else the policy's). */
  mode: Mode;
  decision: Outcome;
  /** The refusal's status (401, 403, 400, 429); absent when allowed. */
  status?: number;
  /** The proxy's reason code, as in the access line: public, roles, missing-roles, no-credential... */
  reason: string;
  /** The roles the token maps to, when a token was read. */
  roles?: readonly string[];
  /** Roles the rule asks for that the token lacks (missing-roles). */
  missing?: readonly string[];
  /** One sentence. */
  why: string;
}

/** A request as the CLI describes it: claims of a token (not verified), or none. */
export interface DecisionRequest {
  method: string;
  path: string;
  /** Claims of the bearer token; undefined: no token. */
  claims?: Claims;
  /**
   * Epoch seconds: the token's exp, nbf, iat and age are checked as the proxy checks them at that
   * time. Undefined: the claims describe a token at no point in time; only audience and sub are checked.
   */
  nowSeconds?: number;
}

function requirementOf(rule: CompiledRule | undefined, policy: CompiledPolicy): Requirement {
  if (rule === undefined) return { defaultAction: policy.defaultAction };
  const { action } = rule;
  switch (action.kind) {
    case "public":
      return { public: true };
    case "deny":
      return { deny: true };
    case "anyRole":
      return { anyRole: action.roles };
    case "allRoles":
      return { allRoles: action.roles };
  }
}

export function modeOf(rule: CompiledRule | undefined, policy: CompiledPolicy): Mode {
  return rule?.mode ?? policy.mode;
}

/** The facts the proxy holds when it decides; `roles` once a token was verified. */
export interface DecisionFacts {
  method: string;
  path: string;
  match: RuleMatch<CompiledRule> | undefined;
  decision: Outcome;
  reason: string;
  roles?: readonly string[];
  /** The refusal's status when not the outcome's usual one (429 for a rate limit). */
  status?: number;
}

const USUAL_STATUS = { deny: 403, unauthenticated: 401, invalid: 400 } as const;

/** Explains a decision already made (the proxy's refusals, and `decide` below). */
export function explain(policy: CompiledPolicy, facts: DecisionFacts): Explanation {
  const rule = facts.match?.rule;
  const requires = requirementOf(rule, policy);
  const explanation: Explanation = {
    ...(facts.match === undefined ? {} : { rule: facts.match.rule.name, template: facts.match.template }),
    requires,
    mode: modeOf(rule, policy),
    decision: facts.decision,
    ...(facts.decision === "allow" ? {} : { status: facts.status ?? USUAL_STATUS[facts.decision] }),
    reason: facts.reason,
    why: "",
  };
  const roles = facts.roles;
  if (roles !== undefined) {
    explanation.roles = roles;
    if (facts.reason === "missing-roles") {
      const needed =
        "anyRole" in requires ? requires.anyRole : "allRoles" in requires ? requires.allRoles : [];
      explanation.missing = needed.filter((r) => !roles.includes(r));
    }
  }
  explanation.why = sentence(facts, explanation);
  return explanation;
}

const list = (roles: readonly string[]): string => `[${roles.join(", ")}]`;

function sentence(facts: DecisionFacts, e: Explanation): string {
  const { requires } = e;
  const matched =
    e.rule === undefined
      ? `no rule matches ${facts.method} ${facts.path}`
      : `rule ${e.rule} matches ${facts.method} ${facts.path} (${e.template})`;
  let asks: string;
  if ("public" in requires) asks = "it is public: forwarded without a token";
  else if ("deny" in requires) asks = "it denies every request";
  else if ("anyRole" in requires) asks = `it needs a token with any of ${list(requires.anyRole)}`;
  else if ("allRoles" in requires) asks = `it needs a token with all of ${list(requires.allRoles)}`;
  else if (requires.defaultAction === "Deny") asks = "the default action Deny refuses every caller";
  else asks = "the default action AllowAuthenticated admits any valid token";
  const roles = e.roles === undefined ? "" : `; the token maps to roles ${list(e.roles)}`;
  let outcome: string;
  switch (facts.reason) {
    case "no-credential":
      outcome = "; the request has no token";
      break;
    case "missing-roles":
      outcome = `${roles}, missing ${list(e.missing ?? [])}`;
      break;
    case "public":
    case "deny-rule":
      outcome = "";
      break;
    case "roles":
    case "authenticated":
    case "no-rule":
      outcome = roles;
      break;
    case "rate-limited":
      outcome = `${roles}; a rate limit refused it`;
      break;
    default:
      outcome = `; the token was refused: ${facts.reason}`;
  }
  return `${matched}; ${asks}${outcome}`;
}

/** What the proxy decides for `request`, in the proxy's order; the token's signature is taken as valid. */
export function decide(policy: CompiledPolicy, request: DecisionRequest): Explanation {
  const match = policy.matchRule(request.method, request.path);
  const rule = match?.rule;
  const facts = { method: request.method, path: request.path, match };
  if (rule?.action.kind === "public")
    return explain(policy, { ...facts, decision: "allow", reason: "public" });
  if (rule?.action.kind === "deny")
    return explain(policy, { ...facts, decision: "deny", reason: "deny-rule" });
  if (request.claims === undefined) {
    return explain(policy, { ...facts, decision: "unauthenticated", reason: "no-credential" });
  }
  const issuer = request.claims.iss;
  const issuerConfig = typeof issuer === "string" ? policy.issuers.get(issuer) : undefined;
  if (typeof issuer !== "string" || issuerConfig === undefined) {
    return explain(policy, { ...facts, decision: "unauthenticated", reason: "unknown_issuer" });
  }
  const checked = checkClaims(request.claims, issuerConfig, request.nowSeconds);
  if (!checked.ok) {
    return explain(policy, { ...facts, decision: "unauthenticated", reason: checked.reason });
  }
  const roles = policy.rolesFor(request.claims, issuer);
  const authorization: Authorization = authorize(rule, policy.defaultAction, roles);
  return explain(policy, {
    ...facts,
    decision: authorization.allow ? "allow" : "deny",
    reason: authorization.reason,
    roles,
  });
}
