// The pure parts of the write edge: what counts as an empty (releasing) intent, whether the field
// manager owns anything on an object, object paths, canonical comparison, and the Lease's MicroTime.
import { describe, expect, it } from "vitest";
import { canonicalJson, deepEqual, isEmptyIntent, managedBy, objectPath } from "../operator/apply.ts";
import { microTime } from "../operator/leader.ts";

describe("isEmptyIntent", () => {
  it("is true for identity only, false as soon as any field is sent", () => {
    const identity = {
      apiVersion: "apps/v1",
      kind: "Deployment",
      metadata: { name: "web", namespace: "shop" },
    };
    expect(isEmptyIntent(identity)).toBe(true);
    expect(isEmptyIntent({ ...identity, spec: { ports: [] } })).toBe(false);
    expect(isEmptyIntent({ ...identity, metadata: { ...identity.metadata, annotations: {} } })).toBe(false);
  });
});

describe("managedBy", () => {
  const object = (entries: { manager: string; subresource?: string }[]) => ({
    metadata: { name: "web", managedFields: entries.map((e) => ({ ...e, operation: "Apply" })) },
  });

  it("counts the manager's entries on the object itself, not on its status", () => {
    expect(managedBy(object([{ manager: "portcullis" }]), "portcullis")).toBe(true);
    expect(managedBy(object([{ manager: "portcullis", subresource: "status" }]), "portcullis")).toBe(false);
    expect(managedBy(object([{ manager: "kubectl-client-side-apply" }]), "portcullis")).toBe(false);
    expect(managedBy({ metadata: { name: "web" } }, "portcullis")).toBe(false);
  });
});

describe("objectPath", () => {
  it("addresses core, grouped and custom resources, and subresources", () => {
    expect(
      objectPath({ apiVersion: "v1", kind: "Service", metadata: { name: "web", namespace: "shop" } }),
    ).toBe("/api/v1/namespaces/shop/services/web");
    expect(
      objectPath({ apiVersion: "apps/v1", kind: "Deployment", metadata: { name: "web", namespace: "shop" } }),
    ).toBe("/apis/apps/v1/namespaces/shop/deployments/web");
    expect(
      objectPath(
        {
          apiVersion: "portcullis.dev/v1alpha1",
          kind: "AccessPolicy",
          metadata: { name: "p", namespace: "shop" },
        },
        "status",
      ),
    ).toBe("/apis/portcullis.dev/v1alpha1/namespaces/shop/accesspolicies/p/status");
  });

  it("refuses an object it cannot address", () => {
    expect(() => objectPath({ apiVersion: "v1", kind: "Pod", metadata: { name: "x" } })).toThrow(
      /cannot address/,
    );
    expect(() => objectPath({ apiVersion: "v1", kind: "Service", metadata: {} })).toThrow(/cannot address/);
  });
});

describe("canonicalJson and deepEqual", () => {
  it("ignore key order and undefined fields, not array order", () => {
    expect(canonicalJson({ b: 1, a: { d: [2, 1], c: undefined } })).toBe('{"a":{"d":[2,1]},"b":1}');
    expect(deepEqual({ a: 1, b: 2 }, { b: 2, a: 1 })).toBe(true);
    expect(deepEqual([1, 2], [2, 1])).toBe(false);
    expect(deepEqual({ a: undefined }, {})).toBe(true);
  });
});

describe("microTime", () => {
  it("writes six fractional digits, as the API server's MicroTime", () => {
    expect(microTime(Date.UTC(2025, 0, 2, 3, 4, 5, 678))).toBe("2025-01-02T03:04:05.678000Z");
  });
});
