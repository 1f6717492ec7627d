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

export function validatePolicyText(text: string): Validation {
  const parsed = parseYaml(text);
  if (!parsed.ok) return { problems: parsed.problems };
  return validatePolicyObject(parsed.value);
}

export function validatePolicyObject(value: unknown): Validation {
  const checked = checkSchema(value);
  if (!checked.ok) return { problems: checked.problems };
  const problems = checkSemantics(checked.value.spec);
  return hasErrors(problems) ? { problems } : { policy: checked.value, problems };
}
