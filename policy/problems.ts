// Findings about a policy, as data: the CLI prints them, the proxy logs them, the operator writes them
// into status conditions. A path names the field (`spec.authorization.rules[2].paths[0]`).

export interface Problem {
  severity: "error" | "warning";
  path: string;
  message: string;
}

export const error = (path: string, message: string): Problem => ({ severity: "error", path, message });
export const warning = (path: string, message: string): Problem => ({ severity: "warning", path, message });

export const hasErrors = (problems: readonly Problem[]): boolean =>
  problems.some((p) => p.severity === "error");

/** `/spec/rules/2/paths/0` (JSON Pointer) -> `spec.rules[2].paths[0]`. */
export function pointerToPath(pointer: string): string {
  let out = "";
  for (const raw of pointer.split("/").slice(1)) {
    const token = raw.replaceAll("~1", "/").replaceAll("~0", "~");
    if (/^\d+$/.test(token)) out += `[${token}]`;
    else if (/^[A-Za-z_$][\w$-]*$/.test(token)) out += out === "" ? token : `.${token}`;
    else out += `[${JSON.stringify(token)}]`;
  }
  return out === "" ? "(document)" : out;
}

export const formatProblem = (p: Problem): string => `${p.severity}: ${p.path}: ${p.message}`;

/** Raised where a caller needs a valid policy and gets an invalid one; carries every problem. */
export class PolicyError extends Error {
  readonly problems: readonly Problem[];
  constructor(message: string, problems: readonly Problem[]) {
    super(message);
    this.name = "PolicyError";
    this.problems = problems;
  }
}
