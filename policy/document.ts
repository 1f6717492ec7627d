// From text to a typed, defaulted AccessPolicy document, or to every problem found on the way.
// Input is the YAML `kubectl get -o yaml` prints (metadata and status carried, not validated), or
// the normalised form the operator writes into its ConfigMap, which is the same shape.

import type { TSchema } from "@sinclair/typebox";
import { TypeCompiler } from "@sinclair/typebox/compiler";
import { type ValueError, ValueErrorType } from "@sinclair/typebox/errors";
import { Value } from "@sinclair/typebox/value";
import { parseDocument } from "yaml";
import { error, type Problem, pointerToPath } from "./problems.ts";
import { AccessPolicyDocument } from "./schema.ts";

const checkDocument = TypeCompiler.Compile(AccessPolicyDocument);

/** Policies are small; a cap keeps a hostile or mistaken file from costing memory and time. */
export const MAX_POLICY_BYTES = 1024 * 1024;

export type ParseResult<T> = { ok: true; value: T } | { ok: false; problems: Problem[] };

/** Parses one YAML (or JSON) document. Never throws on bad input. */
export function parseYaml(text: string): ParseResult<unknown> {
  if (text.length > MAX_POLICY_BYTES) {
    return { ok: false, problems: [error("(document)", `larger than ${MAX_POLICY_BYTES} bytes`)] };
  }
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    return {
      ok: false,
      problems: doc.errors.map((e) => error("(document)", `not valid YAML: ${firstLine(e.message)}`)),
    };
  }
  return { ok: true, value: doc.toJS({ maxAliasCount: 50 }) as unknown };
}

/** Applies schema defaults (as the API server does) and checks the result against the schema. */
export function checkSchema(value: unknown): ParseResult<AccessPolicyDocument> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return {
      ok: false,
      problems: [error("(document)", `expected an AccessPolicy (a YAML mapping), got ${describe(value)}`)],
    };
  }
  const defaulted = Value.Default(AccessPolicyDocument, structuredClone(value)) as unknown;
  if (checkDocument.Check(defaulted)) return { ok: true, value: defaulted };
  return { ok: false, problems: schemaProblems(checkDocument.Errors(defaulted)) };
}

function schemaProblems(errors: Iterable<ValueError>): Problem[] {
  const seen = new Set<string>();
  const problems: Problem[] = [];
  for (const e of errors) {
    const path = pointerToPath(e.path);
    // TypeBox reports a missing property and then its type mismatch; the first says it best.
    if (seen.has(path)) continue;
    seen.add(path);
    problems.push(error(path, messageFor(e)));
  }
  return problems;
}

function messageFor(e: ValueError): string {
  const schema: TSchema = e.schema;
  switch (e.type) {
    case ValueErrorType.ObjectRequiredProperty:
      return "required";
    case ValueErrorType.ObjectAdditionalProperties:
      return "unknown field";
    case ValueErrorType.Union: {
      const options = literalOptions(schema);
      if (options) return `must be one of ${options.join(", ")} (got ${describe(e.value)})`;
      if (schema["x-kubernetes-int-or-string"])
        return `must be an integer or a string (got ${describe(e.value)})`;
      return `invalid value ${describe(e.value)}`;
    }
    case ValueErrorType.ArrayMinItems:
      return `must have at least ${schema.minItems} item${schema.minItems === 1 ? "" : "s"}`;
    case ValueErrorType.ArrayMaxItems:
      return `must have at most ${schema.maxItems} items (got ${(e.value as unknown[]).length})`;
    case ValueErrorType.Literal:
      return `must be ${JSON.stringify(schema.const)} (got ${describe(e.value)})`;
    case ValueErrorType.StringPattern:
      return `${describe(e.value)} does not match ${schema.pattern}`;
    default:
      return `${lowerFirst(e.message)} (got ${describe(e.value)})`;
  }
}

function literalOptions(schema: TSchema): string[] | undefined {
  const anyOf: unknown = schema.anyOf;
  if (!Array.isArray(anyOf)) return undefined;
  const values = anyOf.map((s: unknown) =>
    typeof s === "object" && s !== null && "const" in s ? s.const : undefined,
  );
  return values.every((v) => typeof v === "string") ? (values as string[]) : undefined;
}

export function describe(value: unknown): string {
  if (value === undefined) return "nothing";
  if (value === null) return "null";
  if (Array.isArray(value)) return "a list";
  if (typeof value === "object") return "a mapping";
  const text = JSON.stringify(value);
  return text.length > 60 ? `${text.slice(0, 57)}..."` : text;
}

const firstLine = (s: string) => s.split("\n", 1)[0] ?? s;
const lowerFirst = (s: string) => s.charAt(0).toLowerCase() + s.slice(1);
