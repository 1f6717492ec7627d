// `portcullis test <policy> <cases.yaml>`: table-driven policy tests for CI and pre-merge checks. Each
// case is a request (method, path, and a token's claims or none) and the decision expected of it; the
// decision comes from policy/decision.ts, the proxy's own steps, with the token's dates checked now. Exit 0: every case passed; 1: some
// failed (each shown as expected vs got); 2: the policy or the cases file is unusable.

import { type Static, Type } from "@sinclair/typebox";
import { TypeCompiler } from "@sinclair/typebox/compiler";
import type { CompiledPolicy } from "../compile.ts";
import { decide, type Explanation } from "../decision.ts";
import { pointerToPath } from "../problems.ts";
import { METHODS } from "../schema.ts";
import { InputError, readPolicy, readYaml } from "./input.ts";

export const TEST_USAGE = "usage: portcullis test <policy.yaml> <cases.yaml>";

const Claims = Type.Record(Type.String(), Type.Unknown());

const Expectation = Type.Object(
  {
    decision: Type.Union([
      Type.Literal("allow"),
      Type.Literal("deny"),
      Type.Literal(401),
      Type.Literal(403),
      Type.Literal("401"),
      Type.Literal("403"),
    ]),
    rule: Type.Optional(Type.Union([Type.String(), Type.Null()])),
    roles: Type.Optional(Type.Array(Type.String())),
    reason: Type.Optional(Type.String()),
  },
  { additionalProperties: false },
);

const Case = Type.Object(
  {
    name: Type.String({ minLength: 1 }),
    method: Type.Union(METHODS.map((m) => Type.Literal(m))),
    path: Type.String({ pattern: "^/" }),
    /** Claims as the IdP issues them (`iss` included). */
    claims: Type.Optional(Claims),
    /**
     * Claims a token would carry, where `iss` (the policy's issuer: it must have exactly one), `aud`
     * (the issuer's first audience), `iat` and `exp` (a token issued now, valid 5 minutes) are filled in
     * when absent. `sub` is not: a token without one is refused (missing_sub).
     */
    token: Type.Optional(Claims),
    expect: Expectation,
  },
  { additionalProperties: false },
);

const CasesFile = Type.Object({ cases: Type.Array(Case, { minItems: 1 }) }, { additionalProperties: false });

type Case = Static<typeof Case>;
type Expectation = Static<typeof Expectation>;

const checkCases = TypeCompiler.Compile(CasesFile);

function readCases(file: string): Case[] {
  const value = readYaml(file);
  const first = checkCases.Errors(value).First();
  if (first !== undefined) {
    throw new InputError(`${file}: ${pointerToPath(first.path)}: ${first.message}`);
  }
  const { cases } = value as Static<typeof CasesFile>;
  cases.forEach((c, i) => {
    if (c.claims !== undefined && c.token !== undefined) {
      throw new InputError(`${file}: cases[${i}]: set claims or token, not both`);
    }
  });
  return cases;
}

/** How long a `token` case's token is valid when it gives no exp. */
const TOKEN_LIFETIME_SECONDS = 300;

function claimsOf(policy: CompiledPolicy, c: Case, file: string, index: number, nowSeconds: number) {
  if (c.claims !== undefined) return c.claims;
  if (c.token === undefined) return undefined;
  let iss = c.token.iss;
  if (iss === undefined) {
    const issuers = [...policy.issuers.keys()];
    if (issuers.length !== 1) {
      throw new InputError(
        `${file}: cases[${index}].token: the policy has ${issuers.length} issuers; give the token an iss`,
      );
    }
    iss = issuers[0];
  }
  const audience = typeof iss === "string" ? policy.issuers.get(iss)?.audiences[0] : undefined;
  return {
    iss,
    ...(audience === undefined ? {} : { aud: audience }),
    iat: nowSeconds,
    exp: nowSeconds + TOKEN_LIFETIME_SECONDS,
    ...c.token,
  };
}

const sameRoles = (a: readonly string[], b: readonly string[]) =>
  a.length === b.length && [...a].sort().every((role, i) => role === [...b].sort()[i]);

const showRoles = (roles: readonly string[] | undefined) =>
  roles === undefined ? "no token" : `[${roles.join(", ")}]`;

function showDecision(e: Explanation): string {
  return e.status === undefined ? "allow" : `${e.status} ${e.decision}`;
}

function decisionMatches(expected: Expectation["decision"], got: Explanation): boolean {
  if (expected === "allow") return got.decision === "allow";
  if (expected === "deny") return got.decision !== "allow";
  return got.status === Number(expected);
}

/** Lines of "field: expected X, got Y" for each expectation the decision misses. */
function differences(expect: Expectation, got: Explanation): string[] {
  const lines: string[] = [];
  if (!decisionMatches(expect.decision, got)) {
    lines.push(`decision: expected ${expect.decision}, got ${showDecision(got)} (${got.reason})`);
  }
  if (expect.rule !== undefined && expect.rule !== (got.rule ?? null)) {
    lines.push(`rule:     expected ${expect.rule ?? "no rule"}, got ${got.rule ?? "no rule"}`);
  }
  if (expect.roles !== undefined && (got.roles === undefined || !sameRoles(expect.roles, got.roles))) {
    lines.push(`roles:    expected ${showRoles(expect.roles)}, got ${showRoles(got.roles)}`);
  }
  if (expect.reason !== undefined && expect.reason !== got.reason) {
    lines.push(`reason:   expected ${expect.reason}, got ${got.reason}`);
  }
  return lines;
}

export function testCommand(args: readonly string[]): number {
  const [policyFile, casesFile, ...rest] = args;
  if (policyFile === undefined || casesFile === undefined || rest.length > 0)
    throw new InputError(TEST_USAGE);
  const policy = readPolicy(policyFile);
  const cases = readCases(casesFile);
  // Every case is read before any runs: a bad case is an input error, not a half-run table.
  const nowSeconds = Math.floor(Date.now() / 1000);
  const requests = cases.map((c, i) => ({ c, claims: claimsOf(policy, c, casesFile, i, nowSeconds) }));
  let failed = 0;
  for (const { c, claims } of requests) {
    const got = decide(policy, { method: c.method, path: c.path, ...(claims ? { claims } : {}), nowSeconds });
    const diff = differences(c.expect, got);
    if (diff.length === 0) {
      console.log(`PASS  ${c.name}`);
      continue;
    }
    failed++;
    console.log(`FAIL  ${c.name}: ${c.method} ${c.path}`);
    for (const line of diff) console.log(`        ${line}`);
    console.log(`        why:      ${got.why}`);
  }
  const passed = cases.length - failed;
  console.log(
    `${passed} passed, ${failed} failed (${cases.length} case${cases.length === 1 ? "" : "s"}, ${policyFile}${policy.mode === "DryRun" ? ", policy in DryRun: decisions it would make" : ""})`,
  );
  return failed === 0 ? 0 : 1;
}
