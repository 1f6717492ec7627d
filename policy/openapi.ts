// An OpenAPI document (FastAPI serves one at /openapi.json) read as routes: path templates in the
// policy's syntax, with each path parameter's converter taken from its schema (integer -> int,
// number -> float, uuid -> uuid, else str), and the methods each path serves. FastAPI writes
// `{rest:path}` as `{rest}`, so a path parameter reads as str: one segment.

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value);

export interface OpenApiRoute {
  /** As the document writes it: `/orders/{order_id}`. */
  path: string;
  /** With converters: `/orders/{order_id:int}`. */
  template: string;
  /** Upper case, in the document's order. */
  methods: string[];
}

const OPERATIONS = ["get", "put", "post", "delete", "options", "head", "patch", "trace"] as const;

export type OpenApiRead = { ok: true; routes: OpenApiRoute[] } | { ok: false; message: string };

/** Reads the `paths` of an OpenAPI 3 document; never throws. */
export function readOpenApi(document: unknown): OpenApiRead {
  if (!isRecord(document) || !isRecord(document.paths)) {
    return { ok: false, message: "not an OpenAPI document (no paths object)" };
  }
  const components =
    isRecord(document.components) && isRecord(document.components.schemas) ? document.components.schemas : {};
  const routes: OpenApiRoute[] = [];
  for (const [path, item] of Object.entries(document.paths)) {
    if (!isRecord(item)) continue;
    if (!path.startsWith("/"))
      return { ok: false, message: `path ${JSON.stringify(path)} does not start with "/"` };
    const methods = OPERATIONS.filter((op) => isRecord(item[op]));
    const converters = new Map<string, string>();
    const parameterLists = [
      item.parameters,
      ...methods.map((op) => (item[op] as Record<string, unknown>).parameters),
    ];
    for (const list of parameterLists) {
      if (!Array.isArray(list)) continue;
      for (const parameter of list) {
        if (!isRecord(parameter) || parameter.in !== "path" || typeof parameter.name !== "string") continue;
        converters.set(parameter.name, converterOf(resolve(parameter.schema, components)));
      }
    }
    const template = path.replace(/\{([^}:]+)\}/g, (_, name: string) => {
      const converter = converters.get(name) ?? "str";
      return converter === "str" ? `{${name}}` : `{${name}:${converter}}`;
    });
    routes.push({ path, template, methods: methods.map((m) => m.toUpperCase()) });
  }
  return { ok: true, routes };
}

function resolve(schema: unknown, components: Record<string, unknown>): unknown {
  if (isRecord(schema) && typeof schema.$ref === "string") {
    const name = schema.$ref.replace(/^#\/components\/schemas\//, "");
    return components[name];
  }
  return schema;
}

function converterOf(schema: unknown): string {
  if (!isRecord(schema)) return "str";
  if (schema.type === "integer") return "int";
  if (schema.type === "number") return "float";
  if (schema.type === "string" && schema.format === "uuid") return "uuid";
  return "str";
}

const SAMPLES: Readonly<Record<string, string>> = {
  int: "1",
  float: "1.5",
  uuid: "00000000-0000-4000-8000-000000000000",
  path: "x",
  str: "x",
};

/** A concrete path the template matches: each parameter replaced by a value its converter accepts. */
export function samplePath(template: string): string {
  return template.replace(/\{[A-Za-z_][A-Za-z0-9_]*(?::([a-z]+))?\}/g, (_, converter: string | undefined) => {
    return SAMPLES[converter ?? "str"] ?? "x";
  });
}
