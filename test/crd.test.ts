// The generated CRD against a real kube-apiserver: it installs (structural, CEL within the cost
// budget), the server defaults a policy exactly as policy/validate.ts does, and every object the CEL
// rules and schema reject is rejected by validatePolicyObject too (the standalone proxy's verdict).

import { readFileSync } from "node:fs";
import { join } from "node:path";
import {
  ApiException,
  ApiextensionsV1Api,
  CoreV1Api,
  CustomObjectsApi,
  loadYaml,
  type V1CustomResourceDefinition,
} from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import type { AccessPolicySpec } from "../policy/schema.ts";
import { validatePolicyObject } from "../policy/validate.ts";
import { type ControlPlane, startControlPlane } from "./support/controlplane.ts";

const root = join(import.meta.dirname, "..");
// loadYaml deserializes into client-node's models; a plain parse would lose every x-kubernetes-* key
// when the typed client serializes it (it reads xKubernetesValidations, not x-kubernetes-validations).
const crd = loadYaml<V1CustomResourceDefinition>(
  readFileSync(join(root, "crds/portcullis.dev_accesspolicies.yaml"), "utf8"),
);
const example = parse(readFileSync(join(root, "examples/fastapi/policy.yaml"), "utf8")) as {
  spec: AccessPolicySpec;
};
type Served = { spec?: unknown };
const namespace = "crd-test";
const target = { group: "portcullis.dev", version: "v1alpha1", namespace, plural: "accesspolicies" };

let cp: ControlPlane;
let objects: CustomObjectsApi;

function policy(name: string, mutate: (spec: AccessPolicySpec) => void = () => {}): Record<string, unknown> {
  const spec = structuredClone(example.spec);
  mutate(spec);
  return { apiVersion: "portcullis.dev/v1alpha1", kind: "AccessPolicy", metadata: { name, namespace }, spec };
}

async function create(
  body: Record<string, unknown>,
): Promise<{ ok: true; object: Served } | { ok: false; message: string }> {
  try {
    const object = (await objects.createNamespacedCustomObject({
      ...target,
      body,
      fieldValidation: "Strict",
    })) as Served;
    return { ok: true, object };
  } catch (e) {
    if (e instanceof ApiException && (e.code === 422 || e.code === 400))
      return { ok: false, message: String(e.body) };
    throw e;
  }
}

beforeAll(async () => {
  cp = await startControlPlane();
  const ext = cp.kubeConfig.makeApiClient(ApiextensionsV1Api);
  await ext.createCustomResourceDefinition({ body: crd });
  for (let i = 0; ; i++) {
    const current = await ext.readCustomResourceDefinition({ name: "accesspolicies.portcullis.dev" });
    const established = current.status?.conditions?.find((c) => c.type === "Established")?.status === "True";
    if (established) break;
    if (i > 300) throw new Error(`CRD not established: ${JSON.stringify(current.status?.conditions)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  await cp.kubeConfig.makeApiClient(CoreV1Api).createNamespace({ body: { metadata: { name: namespace } } });
  objects = cp.kubeConfig.makeApiClient(CustomObjectsApi);
  // Discovery of a new CRD takes a moment to reach the handler chain.
  for (let i = 0; ; i++) {
    try {
      await objects.listNamespacedCustomObject(target);
      break;
    } catch (e) {
      if (i > 100) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
});

afterAll(async () => {
  await cp?.stop();
});

describe("the generated CRD on a real kube-apiserver", () => {
  it("accepts the example policy and defaults it exactly as policy/validate.ts does", async () => {
    const created = await create(policy("orders-api"));
    expect(created.ok, created.ok ? "" : created.message).toBe(true);
    if (!created.ok) return;
    const local = validatePolicyObject(policy("orders-api"), Date.now());
    expect(local.policy).toBeDefined();
    expect(created.object.spec).toEqual(local.policy?.spec);
  });

  it("defaults a minimal policy exactly as policy/validate.ts does", async () => {
    const minimal = {
      apiVersion: "portcullis.dev/v1alpha1",
      kind: "AccessPolicy",
      metadata: { name: "minimal", namespace },
      spec: {
        selector: { matchLabels: { app: "x" } },
        upstream: { port: 8000 },
        authentication: { issuers: [{ issuer: "https://idp.example", audiences: ["api"] }] },
        authorization: { rules: [{ name: "all", paths: ["/{rest:path}"], anyRole: ["user"] }] },
      },
    };
    const created = await create(minimal);
    expect(created.ok, created.ok ? "" : created.message).toBe(true);
    if (!created.ok) return;
    expect(created.object.spec).toEqual(validatePolicyObject(minimal, Date.now()).policy?.spec);
  });

  const invalid: [string, (spec: AccessPolicySpec) => void, RegExp][] = [
    [
      "a rule both public and deny",
      (s) => Object.assign(s.authorization.rules[0]!, { deny: true }),
      /exactly one of/,
    ],
    ["a rule with no action", (s) => delete s.authorization.rules[0]!.public, /exactly one of/],
    [
      "listener port equal to upstream port",
      (s) => {
        s.upstream.port = 8080;
      },
      /listener.port must differ from upstream.port/,
    ],
    [
      "admin port equal to listener port",
      (s) => Object.assign(s.sidecar, { adminPort: 8080 }),
      /adminPort must differ from listener.port/,
    ],
    ["no issuer", (s) => Object.assign(s.authentication, { issuers: [] }), /issuers/],
    [
      "duplicate rule names",
      (s) => Object.assign(s.authorization.rules[1]!, { name: "health" }),
      /rule names must be unique|duplicate rule name/,
    ],
    [
      "duplicate issuers",
      (s) => s.authentication.issuers.push(structuredClone(s.authentication.issuers[0]!)),
      /issuer values must be unique/,
    ],
    ["an unknown method", (s) => Object.assign(s.authorization.rules[0]!, { methods: ["GOT"] }), /GOT/],
    ["an unknown field", (s) => Object.assign(s.upstream, { timeoutSecond: 3 }), /timeoutSecond/],
    [
      "an unknown defaultAction",
      (s) => Object.assign(s.authorization, { defaultAction: "Allow" }),
      /defaultAction/,
    ],
    ["a bad rate-limit key", (s) => Object.assign(s.rateLimits[0]!, { key: "cookie" }), /key/],
    [
      "too many rules",
      (s) => {
        s.authorization.rules = Array.from({ length: 257 }, (_, i) => ({
          name: `r${i}`,
          paths: [`/p${i}`],
          public: true,
        }));
      },
      /rules/,
    ],
  ];

  // fieldValidation=Strict turns an unknown field into a 400; schema and CEL failures are 422.
  it.each(invalid)("rejects %s, and so does validatePolicyObject", async (name, mutate, message) => {
    const body = policy(`bad-${name.replaceAll(/[^a-z]+/g, "-").replace(/-$/, "")}`, mutate);
    const created = await create(body);
    expect(created.ok).toBe(false);
    if (!created.ok) expect(created.message).toMatch(message);
    const local = validatePolicyObject(body, Date.now());
    expect(local.policy).toBeUndefined();
    expect(local.problems.filter((p) => p.severity === "error").length).toBeGreaterThan(0);
  });
});
