// `portcullis validate <file>...`: exit 0 when every file is valid (warnings printed), 1 when any has
// an error (all of them listed).

import { formatProblem, hasErrors } from "../problems.ts";
import { validatePolicyText } from "../validate.ts";
import { InputError, readText } from "./input.ts";

export const VALIDATE_USAGE = "usage: portcullis validate <policy.yaml>...";

function validateFile(file: string): boolean {
  let text: string;
  try {
    text = readText(file);
  } catch (e) {
    // One unreadable file is a failure of that file; the others are still validated.
    if (!(e instanceof InputError)) throw e;
    console.error(e.message);
    return false;
  }
  const { problems } = validatePolicyText(text, Date.now());
  for (const problem of problems) console.log(`${file}: ${formatProblem(problem)}`);
  const ok = !hasErrors(problems);
  const errors = problems.filter((p) => p.severity === "error").length;
  console.log(ok ? `${file}: OK` : `${file}: ${errors} error${errors === 1 ? "" : "s"}`);
  return ok;
}

export function validateCommand(files: readonly string[]): number {
  if (files.length === 0) throw new InputError(VALIDATE_USAGE);
  let ok = true;
  for (const file of files) ok = validateFile(file) && ok;
  return ok ? 0 : 1;
}
