// The one validation entry point shared by the proxy, the operator and the CLI.

import { checkSchema, parseYaml } from "./document.ts";
import { hasErrors, type Problem } from "./problems.ts";
import type { AccessPolicyDocument } from "./schema.ts";
import { checkSemantics } from "./semantics.ts";

export interface Validation {
  /** Present when there is no error (warnings allowed): defaulted and safe to compile. */
  policy?: AccessPolicyDocument;
  problems: Problem[];
}

// `nowMs` (epoch ms) is the moment CA certificates' expiry is judged at: passed in, never read here,
// so the operator's desired() stays a function of its input.
export function validatePolicyText(text: string, nowMs: number): Validation {
  const parsed = parseYaml(text);
  if (!parsed.ok) return { problems: parsed.problems };
  return validatePolicyObject(parsed.value, nowMs);
}

export function validatePolicyObject(value: unknown, nowMs: number): Validation {
  const checked = checkSchema(value);
  if (!checked.ok) return { problems: checked.problems };
  const problems = checkSemantics(checked.value.spec, nowMs);
  return hasErrors(problems) ? { problems } : { policy: checked.value, problems };
}
