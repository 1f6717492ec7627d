// The operator's configuration (flags over PORTCULLIS_* env), its condition bookkeeping, and its
// RBAC rules as data.

import { describe, expect, it } from "vitest";
import { nextConditions } from "../operator/conditions.ts";
import {
  configMapName,
  DEFAULT_PROXY_IMAGE,
  FIELD_MANAGER,
  FINALIZER,
  parseQuantities,
  readOperatorConfig,
} from "../operator/config.ts";
import { CLUSTER_ROLE_RULES, clusterRole } from "../operator/rbac.ts";

describe("readOperatorConfig", () => {
  it("has defaults that need no flag", () => {
    const config = readOperatorConfig([], {});
    expect(config).toMatchObject({
      proxyImage: DEFAULT_PROXY_IMAGE,
      sidecarMode: "auto",
      sidecarResources: { requests: { cpu: "50m", memory: "64Mi" }, limits: { memory: "128Mi" } },
      sidecarUser: 65532,
      sidecarLogLevel: "info",
      drainMarginSeconds: 5,
      namespaces: [],
      admin: { host: "0.0.0.0", port: 8081 },
      leaderElection: {
        enabled: true,
        leaseName: "portcullis-operator",
        leaseNamespace: "portcullis-system",
      },
      workers: 4,
      logLevel: "info",
      logFormat: "json",
    });
  });

  it("gives each replica its own lease identity by default", () => {
    const a = readOperatorConfig([], {});
    const b = readOperatorConfig([], {});
    if (!("leaderElection" in a) || !("leaderElection" in b)) throw new Error("expected configs");
    expect(a.leaderElection.identity).not.toBe(b.leaderElection.identity);
  });

  it("reads PORTCULLIS_* variables, and flags win over them", () => {
    const env = {
      PORTCULLIS_PROXY_IMAGE: "registry.local/proxy:env",
      PORTCULLIS_SIDECAR_MODE: "container",
      PORTCULLIS_NAMESPACES: "shop, billing,shop",
      PORTCULLIS_SIDECAR_LIMITS: "memory=256Mi,cpu=1",
      PORTCULLIS_LEADER_ELECT: "false",
      PORTCULLIS_WORKERS: "8",
      POD_NAMESPACE: "ops",
    };
    const fromEnv = readOperatorConfig([], env);
    expect(fromEnv).toMatchObject({
      proxyImage: "registry.local/proxy:env",
      sidecarMode: "container",
      namespaces: ["billing", "shop"],
      sidecarResources: { limits: { cpu: "1", memory: "256Mi" } },
      leaderElection: { enabled: false, leaseNamespace: "ops" },
      workers: 8,
    });
    const flags = readOperatorConfig(
      [
        "--proxy-image",
        "registry.local/proxy:flag",
        "--sidecar-mode=native",
        "--workers",
        "2",
        "--identity",
        "pod-a",
      ],
      env,
    );
    expect(flags).toMatchObject({
      proxyImage: "registry.local/proxy:flag",
      sidecarMode: "native",
      workers: 2,
      leaderElection: { identity: "pod-a" },
    });
  });

  it("answers bad input with an error naming where it came from", () => {
    expect(readOperatorConfig(["--sidecar-mode", "sometimes"], {})).toEqual({
      error: '--sidecar-mode: expected one of auto, native, container, got "sometimes"',
    });
    expect(readOperatorConfig([], { PORTCULLIS_SIDECAR_USER: "0" })).toEqual({
      error: 'PORTCULLIS_SIDECAR_USER: expected a non-root uid (1-2147483647), got "0"',
    });
    expect(readOperatorConfig(["--namespaces", "Shop"], {})).toMatchObject({
      error: expect.stringContaining("Shop"),
    });
    expect(readOperatorConfig(["--sidecar-requests", "cpu=lots"], {})).toMatchObject({
      error: expect.stringContaining("--sidecar-requests"),
    });
    expect(readOperatorConfig(["--admin", "0.0.0.0:99999"], {})).toMatchObject({
      error: expect.stringContaining("range"),
    });
    expect(readOperatorConfig(["--no-such-flag"], {})).toMatchObject({
      error: expect.stringContaining("no-such-flag"),
    });
    expect(readOperatorConfig(["positional"], {})).toHaveProperty("error");
  });

  it("answers --help with the usage", () => {
    expect(readOperatorConfig(["--help"], {})).toEqual({ help: expect.stringContaining("--sidecar-mode") });
  });

  it("parses resource lists; an empty one clears the defaults", () => {
    expect(parseQuantities("memory=64Mi, cpu=0.5")).toEqual({ quantities: { cpu: "0.5", memory: "64Mi" } });
    expect(parseQuantities("")).toEqual({ quantities: {} });
    expect(parseQuantities("memory")).toHaveProperty("error");
  });
});

describe("fixed names", () => {
  it("use a field manager Flux leaves alone and the documented finalizer", () => {
    expect(FIELD_MANAGER).toBe("portcullis");
    expect(FIELD_MANAGER.startsWith("kubectl")).toBe(false);
    expect(FINALIZER).toBe("portcullis.dev/cleanup");
  });

  it("name the ConfigMap after the policy, within 253 characters", () => {
    expect(configMapName("orders-api")).toBe("portcullis-orders-api");
    const long = "a".repeat(253);
    const name = configMapName(long);
    expect(name.length).toBeLessThanOrEqual(253);
    expect(name).toMatch(/^portcullis-a+-[0-9a-f]{10}$/);
    expect(configMapName(`${"a".repeat(252)}b`)).not.toBe(name);
  });
});

describe("nextConditions", () => {
  const previous = [
    {
      type: "Ready",
      status: "True" as const,
      reason: "Protected",
      message: "1 of 1",
      observedGeneration: 1,
      lastTransitionTime: "2025-01-01T00:00:00Z",
    },
  ];

  it("keeps lastTransitionTime when the status holds, even as reason and message change", () => {
    const [ready] = nextConditions(
      previous,
      [{ type: "Ready", status: "True", reason: "Protected", message: "2 of 2" }],
      2,
      "2025-06-01T00:00:00Z",
    );
    expect(ready).toEqual({
      type: "Ready",
      status: "True",
      reason: "Protected",
      message: "2 of 2",
      observedGeneration: 2,
      lastTransitionTime: "2025-01-01T00:00:00Z",
    });
  });

  it("moves it when the status changes or the condition is new", () => {
    const conditions = nextConditions(
      previous,
      [
        { type: "Accepted", status: "True", reason: "Valid", message: "" },
        { type: "Ready", status: "False", reason: "TargetsNotProtected", message: "0 of 1" },
      ],
      2,
      "2025-06-01T00:00:00Z",
    );
    expect(conditions.map((c) => [c.type, c.lastTransitionTime])).toEqual([
      ["Accepted", "2025-06-01T00:00:00Z"],
      ["Ready", "2025-06-01T00:00:00Z"],
    ]);
  });
});

describe("RBAC rules", () => {
  const allows = (group: string, resource: string, verb: string) =>
    CLUSTER_ROLE_RULES.some(
      (r) =>
        (r.apiGroups ?? []).includes(group) &&
        (r.resources ?? []).includes(resource) &&
        r.verbs.includes(verb),
    );

  it("grant what the operator does", () => {
    const needed: [string, string, string[]][] = [
      ["portcullis.dev", "accesspolicies", ["get", "list", "watch", "patch", "update"]],
      ["portcullis.dev", "accesspolicies/status", ["get", "patch", "update"]],
      ["portcullis.dev", "accesspolicies/finalizers", ["update"]],
      ["apps", "deployments", ["get", "list", "watch", "patch"]],
      ["", "services", ["get", "list", "watch", "patch"]],
      ["", "configmaps", ["get", "list", "watch", "create", "patch", "delete"]],
      ["", "events", ["create", "patch"]],
      ["events.k8s.io", "events", ["create", "patch"]],
      ["coordination.k8s.io", "leases", ["get", "create", "update"]],
    ];
    for (const [group, resource, verbs] of needed) {
      for (const verb of verbs)
        expect(allows(group, resource, verb), `${verb} ${group}/${resource}`).toBe(true);
    }
  });

  it("grant nothing more: no wildcard, no create or delete of workloads, no secrets", () => {
    const text = JSON.stringify(CLUSTER_ROLE_RULES);
    expect(text).not.toContain("*");
    expect(text).not.toContain("secrets");
    expect(allows("apps", "deployments", "create")).toBe(false);
    expect(allows("apps", "deployments", "delete")).toBe(false);
    expect(allows("", "services", "delete")).toBe(false);
    expect(allows("portcullis.dev", "accesspolicies", "delete")).toBe(false);
  });

  it("come as a ClusterRole object", () => {
    expect(clusterRole()).toMatchObject({
      apiVersion: "rbac.authorization.k8s.io/v1",
      kind: "ClusterRole",
      metadata: { name: "portcullis-operator" },
      rules: CLUSTER_ROLE_RULES,
    });
  });
});
