// The example policy (examples/fastapi/policy.yaml) as a plain document to edit: tests add rate limits,
// an identity assertion or rules, then compile it (in-process proxies) or write it out (proxy/main.ts).
import { readFileSync } from "node:fs";
import { parse, stringify } from "yaml";
import { type CompiledPolicy, compilePolicy } from "../../policy/compile.ts";
import { validatePolicyObject } from "../../policy/validate.ts";

const POLICY_FILE = new URL("../../examples/fastapi/policy.yaml", import.meta.url);

export interface ExampleDocument {
  metadata: { name: string };
  spec: {
    authentication: { issuers: Record<string, unknown>[] } & Record<string, unknown>;
    authorization: { rules: Record<string, unknown>[] };
    identityHeaders: Record<string, unknown>;
    rateLimits: Record<string, unknown>[];
  };
}

/** A fresh copy of the example policy, trusting `issuer`. */
export function exampleDocument(issuer: string): ExampleDocument {
  const document = parse(readFileSync(POLICY_FILE, "utf8")) as ExampleDocument;
  const [first] = document.spec.authentication.issuers;
  if (first === undefined) throw new Error("example policy has no issuer");
  first.issuer = issuer;
  return document;
}

/** Validates and compiles any policy document (the example, edited, or one built in a test). */
export function compileDocument(document: unknown): CompiledPolicy {
  const { policy, problems } = validatePolicyObject(document, Date.now());
  if (!policy) throw new Error(`policy invalid: ${JSON.stringify(problems)}`);
  return compilePolicy(policy);
}

export function documentText(document: ExampleDocument): string {
  return stringify(document);
}
