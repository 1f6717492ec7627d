// Reading the CLI's inputs (policies, case tables, claims, OpenAPI documents). Whatever is wrong with
// an input becomes an InputError: one line naming the file, and exit status 2, never a stack trace.

import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { parseDocument } from "yaml";
import { type CompiledPolicy, compilePolicy } from "../compile.ts";
import { MAX_POLICY_BYTES } from "../document.ts";
import { type OpenApiRoute, readOpenApi } from "../openapi.ts";
import { formatProblem } from "../problems.ts";
import { validatePolicyText } from "../validate.ts";

/** Exit status of a usage or input error; 1 means the check ran and failed. */
export const INPUT_ERROR = 2;

export class InputError extends Error {
  /** Further lines (e.g. every problem of an invalid policy), printed after the message. */
  readonly details: readonly string[];
  constructor(message: string, details: readonly string[] = []) {
    super(message);
    this.name = "InputError";
    this.details = details;
  }
}

export function readText(file: string): string {
  try {
    const text = readFileSync(file, "utf8");
    if (text.length > 16 * MAX_POLICY_BYTES) throw new InputError(`${file}: larger than 16 MiB`);
    return text;
  } catch (e) {
    if (e instanceof InputError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    const what =
      code === "ENOENT" ? "no such file" : code === "EISDIR" ? "is a directory" : (code ?? String(e));
    throw new InputError(`${file}: cannot read: ${what}`);
  }
}

export function readJson(file: string): unknown {
  const text = readText(file);
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw new InputError(`${file}: not valid JSON: ${(e as Error).message}`);
  }
}

export function readYaml(file: string): unknown {
  const doc = parseDocument(readText(file), { uniqueKeys: true });
  const first = doc.errors[0];
  if (first !== undefined) {
    throw new InputError(`${file}: not valid YAML: ${first.message.split("\n")[0] ?? ""}`);
  }
  return doc.toJS({ maxAliasCount: 50 }) as unknown;
}

/** The routes of an OpenAPI document (`coverage` and `init`). */
export function readRoutes(file: string): OpenApiRoute[] {
  const read = readOpenApi(readJson(file));
  if (!read.ok) throw new InputError(`${file}: ${read.message}`);
  return read.routes;
}

/** A policy that passes `portcullis validate`, compiled as the proxy compiles it. */
export function readPolicy(file: string): CompiledPolicy {
  const { policy, problems } = validatePolicyText(readText(file), Date.now());
  if (policy === undefined) {
    const errors = problems.filter((p) => p.severity === "error");
    throw new InputError(
      `${file}: not a valid policy (${errors.length} error${errors.length === 1 ? "" : "s"}; see portcullis validate)`,
      errors.map((p) => `${file}: ${formatProblem(p)}`),
    );
  }
  return compilePolicy(policy);
}

type Options = NonNullable<Parameters<typeof parseArgs>[0]>["options"];

/** node:util parseArgs, strict, with its errors turned into one-line usage errors. */
export function parseCommandLine<O extends Options>(args: readonly string[], options: O, usage: string) {
  try {
    return parseArgs({ args: [...args], options, allowPositionals: true, strict: true });
  } catch (e) {
    throw new InputError(`${(e as Error).message}\n${usage}`);
  }
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
