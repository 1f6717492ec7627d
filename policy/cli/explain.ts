// `portcullis explain <policy> --method GET --path /orders/7 [--claims file.json | --token JWT] [--json]`:
// the rule that matches, the roles the token maps to, the decision and why. A token is decoded, never
// verified (the CLI holds no keys): the output says so; its claims are checked as the proxy checks them
// now. A claims file describes a token at no point in time: its dates, when given, are only noted.

import { decodeJwt } from "jose";
import { type ClaimFailure, checkClaims } from "../claim-checks.ts";
import type { CompiledPolicy } from "../compile.ts";
import { decide, type Explanation, type Requirement } from "../decision.ts";
import { parseRequestTarget } from "../request-target.ts";
import type { Claims } from "../roles.ts";
import { METHODS } from "../schema.ts";
import { InputError, isRecord, parseCommandLine, readJson, readPolicy } from "./input.ts";

export const EXPLAIN_USAGE =
  "usage: portcullis explain <policy.yaml> --method GET --path /orders/7 [--claims claims.json | --token JWT] [--json]";

function describeRequirement(requires: Requirement): string {
  if ("public" in requires) return "nothing (public)";
  if ("deny" in requires) return "nothing can pass (deny)";
  if ("anyRole" in requires) return `any of [${requires.anyRole.join(", ")}]`;
  if ("allRoles" in requires) return `all of [${requires.allRoles.join(", ")}]`;
  return requires.defaultAction === "Deny"
    ? "defaultAction Deny: refused"
    : "defaultAction AllowAuthenticated: any valid token";
}

function decodeToken(token: string): Claims {
  try {
    return decodeJwt(token);
  } catch (e) {
    throw new InputError(`--token: not a JWT: ${(e as Error).message}`);
  }
}

// Dates a claims file may leave out without a note: it describes the token, not when it was issued.
const UNDESCRIBED: ReadonlySet<ClaimFailure> = new Set<ClaimFailure>(["missing_exp", "missing_iat"]);

/** For a claims file: what the proxy would refuse now about the dates it gives (policy/claim-checks.ts). */
function dateNotes(policy: CompiledPolicy, claims: Claims, nowSeconds: number): string[] {
  const issuer = typeof claims.iss === "string" ? policy.issuers.get(claims.iss) : undefined;
  if (issuer === undefined) return [];
  const checked = checkClaims(claims, issuer, nowSeconds);
  if (checked.ok || UNDESCRIBED.has(checked.reason)) return [];
  const at = (date: unknown) => (typeof date === "number" ? ` (${new Date(date * 1000).toISOString()})` : "");
  const what: Record<ClaimFailure, string> = {
    expired: `exp${at(claims.exp)} has passed`,
    not_yet_valid: `nbf${at(claims.nbf)} is still to come`,
    issued_in_future: `iat${at(claims.iat)} is in the future`,
    too_old: `iat${at(claims.iat)} is older than maxTokenAgeSeconds ${issuer.maxTokenAgeSeconds ?? ""}`,
    bad_numeric_date: "exp, nbf or iat is not an integer NumericDate",
    missing_exp: "exp is missing",
    missing_iat: "iat is missing",
    bad_audience: "aud is not accepted",
    missing_sub: "sub is missing",
  };
  return [`${what[checked.reason]}: the proxy would answer 401 (${checked.reason})`];
}

export function explainCommand(args: readonly string[]): number {
  const { values, positionals } = parseCommandLine(
    args,
    {
      method: { type: "string" },
      path: { type: "string" },
      claims: { type: "string" },
      token: { type: "string" },
      json: { type: "boolean" },
    },
    EXPLAIN_USAGE,
  );
  const [policyFile, ...rest] = positionals;
  const { method, path } = values;
  if (policyFile === undefined || rest.length > 0 || method === undefined || path === undefined) {
    throw new InputError(EXPLAIN_USAGE);
  }
  if (!(METHODS as readonly string[]).includes(method)) {
    throw new InputError(`--method: expected one of ${METHODS.join(", ")}, got ${JSON.stringify(method)}`);
  }
  if (!path.startsWith("/")) throw new InputError(`--path: must start with "/", got ${JSON.stringify(path)}`);
  // The proxy matches the path decoded as uvicorn decodes it, without its query; it refuses (400) a
  // target whose bytes could mean different paths to different parsers.
  const target = parseRequestTarget(path);
  if (!target.ok) {
    throw new InputError(`--path: the proxy refuses it (400 bad-request-target): ${target.reason}`);
  }
  if (values.claims !== undefined && values.token !== undefined) {
    throw new InputError("give --claims or --token, not both");
  }
  const policy = readPolicy(policyFile);
  let claims: Claims | undefined;
  let source = "none (no Authorization header)";
  if (values.claims !== undefined) {
    const read = readJson(values.claims);
    if (!isRecord(read)) throw new InputError(`${values.claims}: expected a JSON object of claims`);
    claims = read;
    source = `claims from ${values.claims}`;
  } else if (values.token !== undefined) {
    claims = decodeToken(values.token);
    source = "decoded, NOT verified: the signature is checked only by the proxy";
  }
  const requestPath = target.path;
  const nowSeconds = Math.floor(Date.now() / 1000);
  const explanation = decide(policy, {
    method,
    path: requestPath,
    ...(claims ? { claims } : {}),
    // A token's dates are checked now, as the proxy would; a claims file's are only noted.
    ...(values.token === undefined ? {} : { nowSeconds }),
  });
  const notes =
    values.claims !== undefined && claims !== undefined && explanation.decision !== "unauthenticated"
      ? dateNotes(policy, claims, nowSeconds)
      : [];
  if (values.json === true) {
    console.log(JSON.stringify({ ...explanation, ...(notes.length > 0 ? { notes } : {}) }, null, 2));
    return 0;
  }
  printExplanation(method, requestPath, explanation, claims, source, notes);
  return 0;
}

function printExplanation(
  method: string,
  path: string,
  e: Explanation,
  claims: Claims | undefined,
  source: string,
  notes: readonly string[],
): void {
  const row = (label: string, value: string) => console.log(`  ${label.padEnd(9)} ${value}`);
  console.log(`${method} ${path}`);
  row("rule", e.rule === undefined ? "none matches" : `${e.rule} (${e.template})`);
  row("requires", describeRequirement(e.requires));
  row("token", source);
  if (claims !== undefined) {
    row("issuer", typeof claims.iss === "string" ? claims.iss : "(none)");
    if (typeof claims.sub === "string") row("subject", claims.sub);
  }
  if (e.roles !== undefined) row("roles", `[${e.roles.join(", ")}]`);
  row("decision", e.status === undefined ? "allow (forwarded)" : `${e.decision} (${e.status}, ${e.reason})`);
  if (e.mode === "DryRun") {
    row(
      "mode",
      e.status === undefined ? "DryRun" : "DryRun: forwarded anyway, logged and counted as would_deny",
    );
  }
  row("why", e.why);
  for (const note of notes) row("note", note);
}
