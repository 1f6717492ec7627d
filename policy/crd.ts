// Derives the CustomResourceDefinition from policy/schema.ts. The TypeBox schema is JSON Schema with a
// few constructs a structural (apiextensions.k8s.io/v1) schema forbids; each is rewritten here:
//   - anyOf of string literals       -> type: string + enum
//   - patternProperties (Type.Record) -> additionalProperties
//   - additionalProperties: false     -> dropped (the API server prunes unknown fields)
//   - fields with a default           -> not required (the API server defaults before it validates)

import { AccessPolicySpec, AccessPolicyStatus, API_VERSION, GROUP, KIND, PLURAL, VERSION } from "./schema.ts";

type JsonObject = { [key: string]: unknown };

const isObject = (v: unknown): v is JsonObject => typeof v === "object" && v !== null && !Array.isArray(v);

/** Structural OpenAPI v3 schema of a TypeBox schema. */
export function toStructural(schema: unknown): JsonObject {
  if (!isObject(schema)) throw new Error("schema must be an object");
  const out: JsonObject = {};
  const anyOf = schema.anyOf;
  if (Array.isArray(anyOf)) {
    if (schema["x-kubernetes-int-or-string"] === true) {
      out.anyOf = [{ type: "integer" }, { type: "string" }];
      out["x-kubernetes-int-or-string"] = true;
    } else if (anyOf.every((s) => isObject(s) && typeof s.const === "string")) {
      out.type = "string";
      out.enum = anyOf.map((s) => (s as JsonObject).const);
    } else {
      throw new Error(`no structural form for anyOf: ${JSON.stringify(anyOf)}`);
    }
  }
  for (const [key, value] of Object.entries(schema)) {
    switch (key) {
      case "anyOf":
      case "x-kubernetes-int-or-string":
      case "$id":
      case "const":
        break;
      case "additionalProperties":
        if (value !== false && value !== true) out.additionalProperties = toStructural(value);
        break;
      case "patternProperties": {
        const [valueSchema] = Object.values(value as JsonObject);
        out.additionalProperties = toStructural(valueSchema);
        break;
      }
      case "properties":
        out.properties = Object.fromEntries(
          Object.entries(value as JsonObject).map(([name, s]) => [name, toStructural(s)]),
        );
        break;
      case "items":
        out.items = toStructural(value);
        break;
      case "required": {
        const properties = schema.properties as JsonObject;
        const required = (value as string[]).filter((name) => {
          const property = properties[name];
          return !(isObject(property) && "default" in property);
        });
        if (required.length > 0) out.required = required;
        break;
      }
      default:
        out[key] = value;
    }
  }
  if (schema.type === "object" && out.properties === undefined && out.additionalProperties === undefined) {
    out["x-kubernetes-preserve-unknown-fields"] = true;
  }
  return sortKeys(out);
}

/** Stable key order, so the generated file only changes when the schema does. */
function sortKeys(schema: JsonObject): JsonObject {
  const order = ["description", "type", "format", "enum", "default"];
  const rank = (k: string) => {
    const i = order.indexOf(k);
    return i === -1 ? order.length : i;
  };
  return Object.fromEntries(
    Object.entries(schema).sort(([a], [b]) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0)),
  );
}

export function accessPolicyCrd(): JsonObject {
  return {
    apiVersion: "apiextensions.k8s.io/v1",
    kind: "CustomResourceDefinition",
    metadata: {
      name: `${PLURAL}.${GROUP}`,
      labels: { "app.kubernetes.io/part-of": "portcullis" },
    },
    spec: {
      group: GROUP,
      scope: "Namespaced",
      names: {
        kind: KIND,
        listKind: `${KIND}List`,
        plural: PLURAL,
        singular: "accesspolicy",
        shortNames: ["apol"],
        categories: ["portcullis"],
      },
      versions: [
        {
          name: VERSION,
          served: true,
          storage: true,
          subresources: { status: {} },
          additionalPrinterColumns: [
            { name: "Ready", type: "string", jsonPath: '.status.conditions[?(@.type=="Ready")].status' },
            {
              name: "Reason",
              type: "string",
              jsonPath: '.status.conditions[?(@.type=="Ready")].reason',
              priority: 1,
            },
            { name: "Targets", type: "integer", jsonPath: ".status.protectedTargets" },
            { name: "Age", type: "date", jsonPath: ".metadata.creationTimestamp" },
          ],
          schema: {
            openAPIV3Schema: {
              description: `AccessPolicy (${API_VERSION}) protects the Deployments it selects with the Portcullis sidecar: bearer-token validation, role mapping, route rules, identity headers and rate limits.`,
              type: "object",
              required: ["spec"],
              properties: {
                apiVersion: {
                  description: "APIVersion defines the versioned schema of this representation of an object.",
                  type: "string",
                },
                kind: {
                  description:
                    "Kind is a string value representing the REST resource this object represents.",
                  type: "string",
                },
                metadata: { type: "object" },
                spec: toStructural(AccessPolicySpec),
                status: toStructural(AccessPolicyStatus),
              },
            },
          },
        },
      ],
    },
  };
}
