// The reconcile core, pure: fixture objects in, apply bodies, status and events out. A small fake of
// server-side apply (test-only) feeds the output back in to check that a second reconcile is silent.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import type {
  V1ConfigMap,
  V1Container,
  V1Deployment,
  V1NetworkPolicy,
  V1PodSpec,
  V1Service,
} from "@kubernetes/client-node";
import { describe, expect, it, vi } from "vitest";
import {
  FINALIZER,
  type OperatorConfig,
  ORIGINAL_TARGET_PORTS_ANNOTATION,
  POLICY_ANNOTATION,
  POLICY_VOLUME,
  PRESTOP_PATH,
  readOperatorConfig,
  SIDECAR_HASH_ANNOTATION,
  SIDECAR_NAME,
} from "../operator/config.ts";
import {
  type DeploymentApply,
  desired,
  policiesForDeployment,
  type ReconcileInput,
  type ReconcileOutput,
  releaseOrphans,
  rolloutProgress,
} from "../operator/desired.ts";
import {
  drainSeconds,
  memoryBytes,
  parseServerVersion,
  resolveUpstreamPort,
  useNativeSidecar,
} from "../operator/sidecar.ts";
import type { AccessPolicy } from "../policy/schema.ts";
import { validatePolicyObject, validatePolicyText } from "../policy/validate.ts";

const NS = "shop";
const NOW = "2025-06-01T10:00:00Z";
const LATER = "2025-06-01T11:00:00Z";
const V1_35 = { major: 1, minor: 35 };
const V1_28 = { major: 1, minor: 28 };

function operatorConfig(argv: string[] = []): OperatorConfig {
  const config = readOperatorConfig(argv, {});
  if ("error" in config || "help" in config) throw new Error("bad test config");
  return config;
}
const CONFIG = operatorConfig(["--identity", "test"]);

// --- fixtures ---------------------------------------------------------------------------------

const SPEC = {
  selector: { matchLabels: { app: "orders-api" } },
  upstream: { port: "http" },
  authentication: { issuers: [{ issuer: "https://idp.example.com", audiences: ["api://orders"] }] },
  authorization: {
    rules: [
      { name: "health", paths: ["/healthz"], methods: ["GET"], public: true },
      { name: "read", paths: ["/orders"], methods: ["GET"], anyRole: ["reader"] },
    ],
  },
  sidecar: { resources: { limits: { memory: "96Mi" } } },
};

function policy(
  name = "orders-api",
  changes: {
    spec?: Record<string, unknown>;
    created?: string;
    generation?: number;
    deleting?: boolean;
    finalizers?: string[];
  } = {},
): AccessPolicy {
  const raw = {
    apiVersion: "portcullis.dev/v1alpha1",
    kind: "AccessPolicy",
    spec: { ...SPEC, ...changes.spec },
  };
  // As the API server serves it: defaulted by the CRD schema.
  const checked = validatePolicyObject(raw, Date.now()).policy;
  const spec = checked?.spec ?? (raw.spec as unknown as AccessPolicy["spec"]);
  return {
    apiVersion: "portcullis.dev/v1alpha1",
    kind: "AccessPolicy",
    metadata: {
      name,
      namespace: NS,
      uid: `uid-${name}`,
      generation: changes.generation ?? 1,
      creationTimestamp: changes.created ?? "2025-01-01T00:00:00Z",
      finalizers: changes.finalizers ?? [FINALIZER],
      ...(changes.deleting ? { deletionTimestamp: "2025-06-01T09:00:00Z" } : {}),
    },
    spec,
  };
}

/** The Deployment controller's status once every pod (2) runs the template of `generation`. */
const ROLLED_OUT = (generation: number) => ({
  observedGeneration: generation,
  replicas: 2,
  updatedReplicas: 2,
  readyReplicas: 2,
  availableReplicas: 2,
});

function deployment(
  name = "orders-api",
  labels: Record<string, string> = { app: "orders-api" },
): V1Deployment {
  return {
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: { name, namespace: NS, uid: `uid-deploy-${name}`, labels: { app: name }, generation: 1 },
    status: ROLLED_OUT(1),
    spec: {
      replicas: 2,
      selector: { matchLabels: labels },
      template: {
        metadata: { labels },
        spec: {
          containers: [
            {
              name: "app",
              image: "ghcr.io/portcullis-dev/orders-api:0.1.0",
              ports: [
                { name: "http", containerPort: 8000, protocol: "TCP" },
                { name: "metrics", containerPort: 9090, protocol: "TCP" },
              ],
            },
          ],
        },
      },
    },
  };
}

function service(
  name = "orders-api",
  ports: { port: number; targetPort?: number | string; name?: string }[] = [
    { name: "http", port: 80, targetPort: "http" },
  ],
  selector: Record<string, string> = { app: "orders-api" },
): V1Service {
  return {
    apiVersion: "v1",
    kind: "Service",
    metadata: { name, namespace: NS, labels: { app: name } },
    spec: { selector, ports: ports.map((p) => ({ protocol: "TCP", ...p })) },
  };
}

function input(changes: Partial<ReconcileInput> = {}): ReconcileInput {
  const p = changes.policy ?? policy();
  return {
    policy: p,
    policiesInNamespace: [p],
    deployments: [deployment()],
    services: [service()],
    serverVersion: V1_35,
    now: NOW,
    ...changes,
  };
}

const sidecarOf = (out: ReconcileOutput, name = "orders-api"): V1Container => {
  const spec = out.deployments.find((d) => d.name === name)?.body.spec?.template.spec;
  const container = [...(spec?.initContainers ?? []), ...(spec?.containers ?? [])][0];
  if (container === undefined) throw new Error(`no sidecar for ${name}`);
  return container;
};

// --- a test-only fake of what the API server does with the output ------------------------------

interface World {
  policy: AccessPolicy;
  deployments: V1Deployment[];
  services: V1Service[];
  configMap?: V1ConfigMap;
  networkPolicies?: V1NetworkPolicy[];
}

function applyOutput(world: World, out: ReconcileOutput): World {
  const next: World = structuredClone(world);
  next.deployments = next.deployments.map((d) => {
    const intent = out.deployments.find((i) => i.name === d.metadata?.name);
    return intent === undefined ? d : applyDeployment(d, intent.body);
  });
  next.services = next.services.map((s) => {
    const intent = out.services.find((i) => i.name === s.metadata?.name);
    if (intent === undefined) return s;
    const copy = structuredClone(s);
    const annotations = { ...copy.metadata?.annotations };
    delete annotations[POLICY_ANNOTATION];
    delete annotations[ORIGINAL_TARGET_PORTS_ANNOTATION];
    copy.metadata = {
      ...copy.metadata,
      annotations: { ...annotations, ...intent.body.metadata.annotations },
    };
    if (Object.keys(copy.metadata.annotations ?? {}).length === 0) delete copy.metadata.annotations;
    for (const p of intent.body.spec.ports) {
      const port = copy.spec?.ports?.find((q) => q.port === p.port && (q.protocol ?? "TCP") === p.protocol);
      if (port) port.targetPort = p.targetPort;
    }
    return copy;
  });
  if (out.configMap) {
    const { metadata, data } = out.configMap.body;
    next.configMap = {
      apiVersion: "v1",
      kind: "ConfigMap",
      metadata: { ...metadata, resourceVersion: "1" },
      data,
    };
  }
  if (out.deleteConfigMap) delete next.configMap;
  if (out.networkPolicies.length > 0 || out.deleteNetworkPolicies.length > 0) {
    const kept = (next.networkPolicies ?? []).filter(
      (n) =>
        !out.deleteNetworkPolicies.includes(n.metadata?.name ?? "") &&
        !out.networkPolicies.some((i) => i.name === n.metadata?.name),
    );
    const applied = out.networkPolicies.map((i) => structuredClone(i.body) as V1NetworkPolicy);
    next.networkPolicies = [...kept, ...applied].sort((a, b) =>
      (a.metadata?.name ?? "") < (b.metadata?.name ?? "") ? -1 : 1,
    );
  }
  const finalizers = new Set(next.policy.metadata.finalizers ?? []);
  if (out.finalizer === "add") finalizers.add(FINALIZER);
  if (out.finalizer === "remove") finalizers.delete(FINALIZER);
  next.policy.metadata.finalizers = [...finalizers];
  next.policy.status = structuredClone(out.status);
  return next;
}

/**
 * Server-side apply of our intent, for our fields only: the previous ones go, the new ones land. A
 * changed pod template is a new generation, rolled out at once (the Deployment controller and the
 * kubelets of this model never keep anyone waiting; rollout tests set the status themselves).
 */
function applyDeployment(d: V1Deployment, body: DeploymentApply): V1Deployment {
  const copy = structuredClone(d);
  const templateBefore = JSON.stringify(d.spec?.template);
  const meta = copy.metadata ?? {};
  const annotations = { ...meta.annotations };
  delete annotations[POLICY_ANNOTATION];
  copy.metadata = { ...meta, annotations: { ...annotations, ...body.metadata.annotations } };
  const template = copy.spec?.template;
  if (!template?.spec) throw new Error("fixture without a pod spec");
  const templateAnnotations = { ...template.metadata?.annotations };
  delete templateAnnotations[SIDECAR_HASH_ANNOTATION];
  template.metadata = {
    ...template.metadata,
    annotations: { ...templateAnnotations, ...body.spec?.template.metadata.annotations },
  };
  const pod = template.spec;
  // Fields we owned and no longer send go, as server-side apply removes them: our preStop hooks.
  pod.containers = pod.containers
    .filter((c) => c.name !== SIDECAR_NAME)
    .map((c) => {
      if (c.lifecycle?.preStop?.httpGet?.path !== PRESTOP_PATH) return c;
      const { lifecycle: _ours, ...rest } = c;
      return rest;
    });
  pod.initContainers = (pod.initContainers ?? []).filter((c) => c.name !== SIDECAR_NAME);
  pod.volumes = (pod.volumes ?? []).filter((v) => v.name !== POLICY_VOLUME);
  const ours = body.spec?.template.spec;
  if (ours) {
    // Containers are a list-map keyed by name: ours merge into the app's entry of the same name.
    for (const container of ours.containers ?? []) {
      const existing = pod.containers.find((c) => c.name === container.name);
      if (existing) Object.assign(existing, { ...container, ...existing, lifecycle: container.lifecycle });
      else pod.containers.push(container);
    }
    pod.initContainers.push(...(ours.initContainers ?? []));
    pod.volumes.push(...ours.volumes);
  }
  if (pod.initContainers.length === 0) delete pod.initContainers;
  if (Object.keys(copy.metadata.annotations ?? {}).length === 0) delete copy.metadata.annotations;
  if (Object.keys(template.metadata.annotations ?? {}).length === 0) delete template.metadata.annotations;
  if (pod.volumes.length === 0) delete pod.volumes;
  if (JSON.stringify(template) !== templateBefore) {
    const generation = (copy.metadata.generation ?? 0) + 1;
    copy.metadata.generation = generation;
    copy.status = ROLLED_OUT(generation);
  }
  return copy;
}

/** A Deployment without what rolling it out changes (generation, status): what its owner wrote. */
function specOf(d: V1Deployment | undefined) {
  if (d === undefined) return undefined;
  const { status: _status, ...rest } = structuredClone(d);
  delete rest.metadata?.generation;
  return rest;
}

/** Reconciles and applies until nothing is left to do (adding the sidecar, then the Services). */
function settle(world: World, changes: Partial<ReconcileInput> = {}): World {
  let current = world;
  for (let pass = 0; pass < 4; pass++) {
    const out = reconcile(current, changes);
    const next = applyOutput(current, out);
    if (JSON.stringify(next) === JSON.stringify(current)) return current;
    current = next;
  }
  throw new Error("the reconcile does not settle");
}

function reconcile(world: World, changes: Partial<ReconcileInput> = {}): ReconcileOutput {
  return desired(
    input({
      policy: world.policy,
      policiesInNamespace: [world.policy],
      deployments: world.deployments,
      services: world.services,
      configMap: world.configMap,
      networkPolicies: world.networkPolicies,
      ...changes,
    }),
    CONFIG,
  );
}

function expectQuiet(out: ReconcileOutput): void {
  expect(out.events).toEqual([]);
  expect(out.statusUpToDate).toBe(true);
  expect(out.finalizer).toBe("none");
  for (const intent of [...out.deployments, ...out.services, ...out.networkPolicies])
    expect(intent.upToDate).toBe(true);
  expect(out.deleteNetworkPolicies).toEqual([]);
  if (out.configMap) expect(out.configMap.upToDate).toBe(true);
}

// --- the sidecar ------------------------------------------------------------------------------

describe("the sidecar on a selected Deployment", () => {
  const out = desired(input(), CONFIG);
  const intent = out.deployments[0];

  it("applies only the operator's fields: annotation, hash, native sidecar, volume", () => {
    expect(out.deployments.map((d) => d.name)).toEqual(["orders-api"]);
    const body = intent?.body;
    expect(Object.keys(body ?? {})).toEqual(["apiVersion", "kind", "metadata", "spec"]);
    expect(body?.metadata).toEqual({
      name: "orders-api",
      namespace: NS,
      annotations: { [POLICY_ANNOTATION]: "orders-api" },
    });
    const template = body?.spec?.template;
    expect(Object.keys(template ?? {})).toEqual(["metadata", "spec"]);
    expect(template?.metadata.annotations[SIDECAR_HASH_ANNOTATION]).toMatch(/^[0-9a-f]{16}$/);
    expect(Object.keys(template?.spec ?? {})).toEqual(["initContainers", "containers", "volumes"]);
    // Of the app container, only the preStop hook that holds its shutdown while clients move away.
    expect(template?.spec.containers).toEqual([
      { name: "app", lifecycle: { preStop: { httpGet: { path: PRESTOP_PATH, port: 9901 } } } },
    ]);
    expect(template?.spec.volumes).toEqual([
      { name: POLICY_VOLUME, configMap: { name: "portcullis-orders-api" } },
    ]);
    expect(intent?.release).toBe(false);
    expect(intent?.upToDate).toBe(false);
  });

  it("runs the proxy against the ConfigMap directory and the resolved upstream port", () => {
    const c = sidecarOf(out);
    expect(c.name).toBe("portcullis");
    expect(c.image).toBe(CONFIG.proxyImage);
    expect(c.restartPolicy).toBe("Always");
    expect(c.command).toEqual(["portcullis-proxy"]);
    expect(c.args).toEqual([
      "--policy",
      "/etc/portcullis/policy.yaml",
      "--upstream",
      "http://127.0.0.1:8000",
      "--listen",
      "0.0.0.0:8080",
      "--admin",
      "0.0.0.0:9901",
    ]);
    expect(c.ports).toEqual([
      { name: "portcullis", containerPort: 8080, protocol: "TCP" },
      { name: "portcullis-adm", containerPort: 9901, protocol: "TCP" },
    ]);
    for (const port of c.ports ?? []) expect(port.name?.length).toBeLessThanOrEqual(15);
    expect(c.volumeMounts).toEqual([{ name: POLICY_VOLUME, mountPath: "/etc/portcullis", readOnly: true }]);
    expect(c.env).toEqual([
      // The policy's memory limit is 96Mi: half of it for the old generation, but never under 48.
      { name: "MALLOC_ARENA_MAX", value: "2" },
      { name: "NODE_OPTIONS", value: "--max-semi-space-size=4 --max-old-space-size=48" },
      { name: "PORTCULLIS_DRAIN_SECONDS", value: "25" },
      { name: "PORTCULLIS_LOG_LEVEL", value: "info" },
    ]);
  });

  it("sizes the proxy's V8 heap to the sidecar's memory limit", () => {
    const withLimit = (memory: string | number | undefined) => {
      const p = policy("orders-api", {
        spec: { sidecar: { resources: memory === undefined ? {} : { limits: { memory } } } },
      });
      const config = operatorConfig(["--identity", "test", "--sidecar-limits", ""]);
      return sidecarOf(desired(input({ policy: p, policiesInNamespace: [p] }), config)).env?.find(
        (e) => e.name === "NODE_OPTIONS",
      )?.value;
    };
    expect(withLimit("512Mi")).toBe("--max-semi-space-size=4 --max-old-space-size=256");
    expect(withLimit("1Gi")).toBe("--max-semi-space-size=4 --max-old-space-size=512");
    expect(withLimit("0.5Gi")).toBe("--max-semi-space-size=4 --max-old-space-size=256");
    expect(withLimit("400M")).toBe("--max-semi-space-size=4 --max-old-space-size=190");
    expect(withLimit(268435456)).toBe("--max-semi-space-size=4 --max-old-space-size=128");
    expect(withLimit("32Mi")).toBe("--max-semi-space-size=4 --max-old-space-size=48");
    // No limit at all: V8 sizes the old generation from the node's memory itself.
    expect(withLimit(undefined)).toBe("--max-semi-space-size=4");
    expect(memoryBytes("128Mi")).toBe(134217728);
    expect(memoryBytes("1e3")).toBe(1000);
    expect(memoryBytes("12Xi")).toBeUndefined();
    expect(memoryBytes("")).toBeUndefined();
  });

  it("probes the admin port: startup and liveness on /healthz (never waiting for the app), readiness on /readyz", () => {
    const c = sidecarOf(out);
    expect(c.startupProbe?.httpGet).toEqual({ path: "/healthz", port: "portcullis-adm", scheme: "HTTP" });
    expect(c.readinessProbe?.httpGet?.path).toBe("/readyz");
    expect(c.readinessProbe?.httpGet?.port).toBe("portcullis-adm");
    expect(c.livenessProbe?.httpGet?.path).toBe("/healthz");
    expect(c.livenessProbe?.httpGet?.port).toBe("portcullis-adm");
  });

  it("has a restrictive security context", () => {
    expect(sidecarOf(out).securityContext).toEqual({
      runAsNonRoot: true,
      runAsUser: 65532,
      runAsGroup: 65532,
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
      capabilities: { drop: ["ALL"] },
      seccompProfile: { type: "RuntimeDefault" },
    });
  });

  it("takes resources from the policy over the operator's defaults, key by key", () => {
    expect(sidecarOf(out).resources).toEqual({
      limits: { memory: "96Mi" },
      requests: { cpu: "50m", memory: "64Mi" },
    });
  });

  it("takes image and log level from the policy when set", () => {
    const p = policy("orders-api", {
      spec: { sidecar: { image: "registry.local/proxy:dev", logLevel: "debug" } },
    });
    const c = sidecarOf(desired(input({ policy: p, policiesInNamespace: [p] }), CONFIG));
    expect(c.image).toBe("registry.local/proxy:dev");
    expect(c.env).toContainEqual({ name: "PORTCULLIS_LOG_LEVEL", value: "debug" });
    expect(c.resources?.limits).toEqual({ memory: "128Mi" });
  });

  it("fits the drain into the pod's termination grace period", () => {
    const d = deployment();
    if (d.spec?.template.spec) d.spec.template.spec.terminationGracePeriodSeconds = 60;
    const c = sidecarOf(desired(input({ deployments: [d] }), CONFIG));
    expect(c.env).toContainEqual({ name: "PORTCULLIS_DRAIN_SECONDS", value: "55" });
    expect(drainSeconds(undefined, 5)).toBe(25);
    expect(drainSeconds(3, 5)).toBe(1);
    expect(drainSeconds(0, 5)).toBe(0);
  });

  it("passes the operator's --sidecar-redis-url to the sidecar as PORTCULLIS_REDIS_URL, only when set", () => {
    const url = "redis://redis.shared.svc:6379/0";
    const withRedis = operatorConfig(["--identity", "test", "--sidecar-redis-url", url]);
    const shared = desired(input(), withRedis);
    const c = sidecarOf(shared);
    expect(c.env).toEqual([
      { name: "MALLOC_ARENA_MAX", value: "2" },
      { name: "NODE_OPTIONS", value: "--max-semi-space-size=4 --max-old-space-size=48" },
      { name: "PORTCULLIS_DRAIN_SECONDS", value: "25" },
      { name: "PORTCULLIS_LOG_LEVEL", value: "info" },
      { name: "PORTCULLIS_REDIS_URL", value: url },
    ]);
    expect(sidecarOf(out).env?.map((e) => e.name)).not.toContain("PORTCULLIS_REDIS_URL");
    // A process setting of the sidecar: a change rolls the pods.
    const hash = (o: ReconcileOutput) =>
      o.deployments[0]?.body.spec?.template.metadata.annotations[SIDECAR_HASH_ANNOTATION];
    expect(hash(shared)).not.toBe(hash(out));
    const fromEnv = readOperatorConfig([], { PORTCULLIS_SIDECAR_REDIS_URL: "rediss://cache:6380" });
    expect(fromEnv).toMatchObject({ sidecarRedisUrl: { url: "rediss://cache:6380" } });
    for (const bad of ["http://redis:6379", "redis://", "redis://:secret@h:1/x", "not a url"]) {
      const refused = readOperatorConfig(["--sidecar-redis-url", bad], {});
      expect(refused).toHaveProperty("error");
      expect(JSON.stringify(refused)).not.toContain("secret");
    }
  });

  it("takes PORTCULLIS_REDIS_URL from a Secret when asked to, optional so a namespace without it still starts", () => {
    const fromSecret = operatorConfig([
      "--identity",
      "test",
      "--sidecar-redis-url-secret",
      "rate-limits/url",
    ]);
    const c = sidecarOf(desired(input(), fromSecret));
    expect(c.env?.find((e) => e.name === "PORTCULLIS_REDIS_URL")).toEqual({
      name: "PORTCULLIS_REDIS_URL",
      valueFrom: { secretKeyRef: { name: "rate-limits", key: "url", optional: true } },
    });
    expect(JSON.stringify(c)).not.toContain("redis://");
    expect(
      readOperatorConfig([], { PORTCULLIS_SIDECAR_REDIS_URL_SECRET: "shared.redis/redis-url" }),
    ).toMatchObject({
      sidecarRedisUrl: { secret: { name: "shared.redis", key: "redis-url" } },
    });
    for (const bad of ["rate-limits", "rate-limits/", "/url", "a/b/c", "Rate_Limits/url"]) {
      expect(readOperatorConfig(["--sidecar-redis-url-secret", bad], {})).toHaveProperty("error");
    }
    const both = readOperatorConfig(
      ["--sidecar-redis-url", "redis://r:6379", "--sidecar-redis-url-secret", "rate-limits/url"],
      {},
    );
    expect(both).toMatchObject({ error: expect.stringContaining("not both") });
  });

  it("never puts an ownerReference on the Deployment", () => {
    expect(JSON.stringify(out.deployments)).not.toContain("ownerReferences");
  });
});

describe("the app container's preStop hook", () => {
  const hooksFor = (pod: (spec: V1PodSpec) => void, serverVersion = V1_35) => {
    const world = input({ serverVersion });
    const spec = world.deployments[0]?.spec?.template?.spec;
    if (!spec) throw new Error("fixture without a pod spec");
    pod(spec);
    return desired(world, CONFIG).deployments[0]?.body.spec?.template.spec.containers;
  };

  it("is added where the app has none, kept when it is ours, and left out where the app has its own", () => {
    const ours = { preStop: { httpGet: { path: PRESTOP_PATH, port: 9901, scheme: "HTTP" } } };
    expect(hooksFor(() => {})?.map((c) => c.name)).toEqual(["app"]);
    expect(
      hooksFor((spec) => Object.assign(spec.containers[0] ?? {}, { lifecycle: ours }))?.map((c) => c.name),
    ).toEqual(["app"]);
    const own = { preStop: { sleep: { seconds: 10 } } };
    expect(hooksFor((spec) => Object.assign(spec.containers[0] ?? {}, { lifecycle: own }))).toBeUndefined();
  });

  it("is not added with a plain sidecar container, which stops together with the app", () => {
    expect(hooksFor(() => {}, V1_28)?.filter((c) => c.name !== SIDECAR_NAME)).toEqual([]);
  });

  it("goes with the sidecar when the Deployment stops matching", () => {
    const appOf = (w: World) =>
      w.deployments[0]?.spec?.template?.spec?.containers.find((c) => c.name === "app");
    const world = settle({ policy: policy(), deployments: [deployment()], services: [service()] });
    expect(appOf(world)?.lifecycle?.preStop?.httpGet?.path).toBe(PRESTOP_PATH);
    const relabeled = world.deployments.map((d) => {
      const copy = structuredClone(d);
      if (copy.spec?.template.metadata) copy.spec.template.metadata.labels = { app: "orders-api-v2" };
      return copy;
    });
    const released = applyOutput(
      { ...world, deployments: relabeled },
      reconcile({ ...world, deployments: relabeled }),
    );
    expect(appOf(released)?.lifecycle).toBeUndefined();
  });
});

describe("native sidecar or plain container", () => {
  const listsFor = (serverVersion: { major: number; minor: number }, config = CONFIG) => {
    const spec = desired(input({ serverVersion }), config).deployments[0]?.body.spec?.template.spec;
    const sidecars = (list: V1Container[] | undefined) =>
      (list ?? []).filter((c) => c.name === SIDECAR_NAME).length;
    return { init: sidecars(spec?.initContainers), plain: sidecars(spec?.containers), spec };
  };

  it("is an init container with restartPolicy Always from 1.29 on, a container before", () => {
    expect(listsFor({ major: 1, minor: 29 })).toMatchObject({ init: 1, plain: 0 });
    expect(listsFor(V1_35)).toMatchObject({ init: 1, plain: 0 });
    expect(listsFor({ major: 2, minor: 0 })).toMatchObject({ init: 1, plain: 0 });
    const old = listsFor(V1_28);
    expect(old).toMatchObject({ init: 0, plain: 1 });
    expect(old.spec?.containers?.[0]?.restartPolicy).toBeUndefined();
  });

  it("follows --sidecar-mode over the server version", () => {
    expect(listsFor(V1_28, operatorConfig(["--sidecar-mode", "native"]))).toMatchObject({
      init: 1,
      plain: 0,
    });
    expect(listsFor(V1_35, operatorConfig(["--sidecar-mode", "container"]))).toMatchObject({
      init: 0,
      plain: 1,
    });
    expect(useNativeSidecar("auto", { major: 1, minor: 28 })).toBe(false);
  });

  it("parses the version the API server reports", () => {
    expect(parseServerVersion({ major: "1", minor: "29+" })).toEqual({ major: 1, minor: 29 });
    expect(parseServerVersion({ major: "", minor: "" })).toBeUndefined();
  });
});

describe("the upstream port", () => {
  it("is resolved by name against the app containers, or taken as a number", () => {
    const pod = deployment().spec?.template.spec;
    expect(resolveUpstreamPort(pod, "http")).toEqual({ ok: true, port: 8000, names: ["http"] });
    expect(resolveUpstreamPort(pod, 8000)).toEqual({ ok: true, port: 8000, names: ["http"] });
    expect(resolveUpstreamPort(pod, 7000)).toEqual({ ok: true, port: 7000, names: [] });
    const p = policy("orders-api", { spec: { upstream: { port: 7000 } } });
    expect(sidecarOf(desired(input({ policy: p, policiesInNamespace: [p] }), CONFIG)).args).toContain(
      "http://127.0.0.1:7000",
    );
  });

  it("puts a Deployment without that named port in Error and applies nothing to it", () => {
    const p = policy("orders-api", { spec: { upstream: { port: "web" } } });
    const out = desired(input({ policy: p, policiesInNamespace: [p] }), CONFIG);
    expect(out.deployments).toEqual([]);
    expect(out.services).toEqual([]);
    expect(out.status.targets).toEqual([
      {
        kind: "Deployment",
        name: "orders-api",
        state: "Error",
        message: expect.stringContaining('upstream port "web" is not a named containerPort'),
      },
    ]);
    expect(out.status.targets?.[0]?.message).toContain("http=8000, metrics=9090");
    expect(out.status.conditions?.find((c) => c.type === "Ready")).toMatchObject({
      status: "False",
      reason: "TargetsNotProtected",
    });
    expect(out.events).toEqual([
      expect.objectContaining({
        type: "Warning",
        reason: "Invalid",
        regarding: expect.objectContaining({ kind: "AccessPolicy" }),
      }),
    ]);
    // The same verdict again, with the status written: no second Warning.
    const again = desired(input({ policy: { ...p, status: out.status }, policiesInNamespace: [p] }), CONFIG);
    expect(again.events).toEqual([]);
    expect(again.statusUpToDate).toBe(true);
  });

  it("refuses a sidecar port an app container already declares", () => {
    const p = policy("orders-api", { spec: { listener: { port: 9090 } } });
    const out = desired(input({ policy: p, policiesInNamespace: [p] }), CONFIG);
    expect(out.deployments).toEqual([]);
    expect(out.status.targets?.[0]).toMatchObject({
      state: "Error",
      message: expect.stringContaining("port 9090"),
    });
  });
});

// --- Services ---------------------------------------------------------------------------------

describe("Services", () => {
  it("point the ports that reach the upstream (by name or number) at the sidecar, recording the original", () => {
    const services = [
      service("by-name"),
      service("by-number", [{ name: "web", port: 8000, targetPort: 8000 }]),
      service("mixed", [
        { name: "metrics", port: 9090, targetPort: "metrics" },
        { name: "http", port: 80, targetPort: "http" },
      ]),
      service("other-app", [{ port: 80, targetPort: "http" }], { app: "billing" }),
      service("no-selector", [{ port: 80, targetPort: "http" }], {}),
    ];
    const world0: World = { policy: policy(), deployments: [deployment()], services };
    // While the sidecar is being added and rolled out, the Services stay as they are: a pod without
    // the sidecar's named port would drop out of them.
    const adding = reconcile(world0);
    expect(adding.deployments[0]?.upToDate).toBe(false);
    expect(adding.services).toEqual([]);
    const out = reconcile(applyOutput(world0, adding));
    expect(out.services.map((s) => s.name)).toEqual(["by-name", "by-number", "mixed"]);
    const [byName, byNumber, mixed] = out.services;
    expect(byName?.body).toEqual({
      apiVersion: "v1",
      kind: "Service",
      metadata: {
        name: "by-name",
        namespace: NS,
        annotations: {
          [ORIGINAL_TARGET_PORTS_ANNOTATION]: '{"80/TCP":"http"}',
          [POLICY_ANNOTATION]: "orders-api",
        },
      },
      spec: { ports: [{ port: 80, protocol: "TCP", targetPort: "portcullis" }] },
    });
    expect(byNumber?.body.metadata.annotations?.[ORIGINAL_TARGET_PORTS_ANNOTATION]).toBe('{"8000/TCP":8000}');
    expect(mixed?.body.spec.ports).toEqual([{ port: 80, protocol: "TCP", targetPort: "portcullis" }]);
  });

  it("wait for the sidecar's rollout before pointing at it; the target is Pending meanwhile", () => {
    const world0: World = { policy: policy(), deployments: [deployment()], services: [service()] };
    const added = applyOutput(world0, reconcile(world0));
    // The Deployment controller has not finished: one pod updated, one old pod still running.
    const rolling = structuredClone(added.deployments);
    const d = rolling[0];
    if (d === undefined) throw new Error("no Deployment");
    d.status = {
      observedGeneration: d.metadata?.generation,
      replicas: 3,
      updatedReplicas: 1,
      availableReplicas: 2,
    };
    const waiting = reconcile({ ...added, deployments: rolling });
    expect(waiting.deployments[0]?.upToDate).toBe(true);
    expect(waiting.services).toEqual([]);
    expect(waiting.status.targets?.[0]).toMatchObject({
      state: "Pending",
      message: expect.stringContaining("1 of 2 pods updated"),
    });
    expect(waiting.status.conditions?.find((c) => c.type === "Ready")?.status).toBe("False");
    // Rolled out: the Service follows, and the policy is Ready.
    const done = reconcile(added);
    expect(done.services.map((s) => s.body.spec.ports)).toEqual([
      [{ port: 80, protocol: "TCP", targetPort: "portcullis" }],
    ]);
    expect(done.status.targets?.[0]?.state).toBe("Protected");
  });

  it("read a rollout's progress from the Deployment controller's status, as kubectl rollout status does", () => {
    const at = (generation: number, status: V1Deployment["status"], replicas = 2) => {
      const d = deployment();
      if (d.metadata && d.spec) {
        d.metadata.generation = generation;
        d.spec.replicas = replicas;
      }
      d.status = status;
      return rolloutProgress(d);
    };
    const full = { replicas: 2, updatedReplicas: 2, availableReplicas: 2 };
    expect(at(3, { ...full, observedGeneration: 3 })).toEqual({ done: true, message: "rolled out" });
    expect(at(3, { ...full, observedGeneration: 2 }).done).toBe(false);
    expect(at(3, { ...full, observedGeneration: 3, updatedReplicas: 1 }).message).toContain(
      "1 of 2 pods updated",
    );
    expect(at(3, { ...full, observedGeneration: 3, replicas: 3 }).message).toContain(
      "1 old pods still running",
    );
    expect(at(3, { ...full, observedGeneration: 3, availableReplicas: 1 }).message).toContain(
      "1 of 2 updated pods available",
    );
    expect(at(3, undefined).done).toBe(false);
    // Scaled to zero: nothing to wait for.
    expect(at(3, { observedGeneration: 3 }, 0).done).toBe(true);
  });

  it("restore the recorded original when the Deployment stops matching", () => {
    const world = settle({ policy: policy(), deployments: [deployment()], services: [service()] });
    expect(world.services[0]?.spec?.ports?.[0]?.targetPort).toBe("portcullis");
    const relabeled = world.deployments.map((d) => {
      const copy = structuredClone(d);
      if (copy.spec?.template.metadata) copy.spec.template.metadata.labels = { app: "orders-api-v2" };
      return copy;
    });
    const out = reconcile({ ...world, deployments: relabeled });
    expect(out.services).toEqual([
      {
        name: "orders-api",
        release: true,
        upToDate: false,
        body: {
          apiVersion: "v1",
          kind: "Service",
          metadata: { name: "orders-api", namespace: NS },
          spec: { ports: [{ port: 80, protocol: "TCP", targetPort: "http" }] },
        },
      },
    ]);
  });

  it("keep a recorded port's original in the intent when it no longer qualifies", () => {
    let world: World = {
      policy: policy(),
      deployments: [deployment()],
      services: [
        service("orders-api", [
          { port: 80, targetPort: "http" },
          { port: 8000, targetPort: 8000 },
        ]),
      ],
    };
    world = settle(world);
    // The upstream moves to another port: the first recorded port goes back, the second follows.
    const p = policy("orders-api", { spec: { upstream: { port: 8000 } }, generation: 2 });
    const out = reconcile({ ...world, policy: { ...p, status: world.policy.status } });
    expect(out.services[0]?.body.spec.ports).toEqual([
      { port: 80, protocol: "TCP", targetPort: "portcullis" },
      { port: 8000, protocol: "TCP", targetPort: "portcullis" },
    ]);
    const moved = policy("orders-api", { spec: { upstream: { port: 7000 } }, generation: 3 });
    const after = reconcile({ ...world, policy: { ...moved, status: world.policy.status } });
    expect(after.services[0]?.release).toBe(true);
    expect(after.services[0]?.body.spec.ports).toEqual([
      { port: 80, protocol: "TCP", targetPort: "http" },
      { port: 8000, protocol: "TCP", targetPort: 8000 },
    ]);
  });
});

// --- idempotence ------------------------------------------------------------------------------

describe("a second reconcile", () => {
  it("writes nothing: every intent up to date, same bodies, same status, no events", () => {
    const first: World = {
      policy: policy("orders-api", { finalizers: [] }),
      deployments: [deployment(), deployment("billing", { app: "billing" })],
      services: [service(), service("billing", [{ port: 80, targetPort: "http" }], { app: "billing" })],
    };
    // First the sidecar (the Services wait for its rollout), then the Services.
    const out1 = reconcile(first);
    expect(out1.finalizer).toBe("add");
    expect(out1.events.map((e) => `${e.reason}:${e.regarding.name}`)).toEqual(["Protected:orders-api"]);
    expect(out1.services).toEqual([]);
    const second = applyOutput(first, out1);
    const out2 = reconcile(second);
    expect(out2.deployments.map((d) => d.upToDate)).toEqual([true]);
    expect(out2.services.map((s) => [s.name, s.upToDate])).toEqual([["orders-api", false]]);
    expect(out2.events).toEqual([]);
    const third = applyOutput(second, out2);
    const out3 = reconcile(third, { now: LATER });
    expectQuiet(out3);
    expect(out3.deployments.map((d) => d.body)).toEqual(out1.deployments.map((d) => d.body));
    expect(out3.services.map((s) => s.body)).toEqual(out2.services.map((s) => s.body));
    expect(out3.configMap?.body).toEqual(out1.configMap?.body);
    expect(out3.status).toEqual(out2.status);
    expect(JSON.stringify(out3)).not.toContain(LATER);
    // And once more from the applied world of the third: a fixed point.
    expect(applyOutput(third, out3)).toEqual(third);
  });

  it("is quiet on an older server with plain containers too", () => {
    const world = settle(
      { policy: policy(), deployments: [deployment()], services: [service()] },
      { serverVersion: V1_28 },
    );
    expectQuiet(reconcile(world, { serverVersion: V1_28, now: LATER }));
    // A cluster upgrade moves the sidecar into initContainers: that is a change.
    const upgraded = reconcile(world, { now: LATER });
    expect(upgraded.deployments[0]?.upToDate).toBe(false);
  });

  it("sees a removed sidecar and puts it back", () => {
    const world0: World = { policy: policy(), deployments: [deployment()], services: [service()] };
    const world = settle(world0);
    const stripped = structuredClone(world.deployments);
    const pod = stripped[0]?.spec?.template.spec;
    if (pod) pod.initContainers = [];
    const out = reconcile({ ...world, deployments: stripped });
    expect(out.deployments[0]?.upToDate).toBe(false);
  });

  it("sees a sidecar edited by hand under an unchanged hash, and writes it back", () => {
    const world0: World = { policy: policy(), deployments: [deployment()], services: [service()] };
    const world = settle(world0);
    const edits: ((c: V1Container) => void)[] = [
      (c) => {
        c.image = "registry.example/not-portcullis:latest";
      },
      (c) => {
        c.args = [...(c.args ?? []), "--log-level", "debug"];
      },
      (c) => {
        c.env = (c.env ?? []).filter((e) => e.name !== "NODE_OPTIONS");
      },
      (c) => {
        c.securityContext = { ...c.securityContext, runAsNonRoot: false };
      },
      (c) => {
        c.command = ["sh", "-c", "sleep infinity"];
      },
    ];
    for (const edit of edits) {
      const edited = structuredClone(world.deployments);
      const sidecar = edited[0]?.spec?.template.spec?.initContainers?.find((c) => c.name === SIDECAR_NAME);
      if (sidecar === undefined) throw new Error("no sidecar in the protected world");
      edit(sidecar);
      const out = reconcile({ ...world, deployments: edited });
      expect(out.deployments[0]?.upToDate).toBe(false);
      // Applied again, the sidecar is the operator's once more.
      const template = (w: World) => w.deployments.map((d) => d.spec?.template);
      expect(template(applyOutput({ ...world, deployments: edited }, out))).toEqual(template(world));
    }
    // What the API server adds to a container (defaults) is not an edit.
    const defaulted = structuredClone(world.deployments);
    const sidecar = defaulted[0]?.spec?.template.spec?.initContainers?.find((c) => c.name === SIDECAR_NAME);
    if (sidecar) {
      sidecar.terminationMessagePath = "/dev/termination-log";
      sidecar.imagePullPolicy = "IfNotPresent";
    }
    expectQuiet(reconcile({ ...world, deployments: defaulted }, { now: LATER }));
  });
});

describe("rule changes and sidecar settings", () => {
  const world0: World = { policy: policy(), deployments: [deployment()], services: [service()] };
  const world = settle(world0);

  it("a rule change updates the ConfigMap and leaves the pod template alone", () => {
    const changed = policy("orders-api", {
      generation: 2,
      spec: {
        authorization: { rules: [{ name: "health", paths: ["/healthz"], methods: ["GET"], public: true }] },
      },
    });
    const out = reconcile({ ...world, policy: { ...changed, status: world.policy.status } });
    expect(out.configMap?.upToDate).toBe(false);
    expect(out.configMap?.body.data["policy.yaml"]).not.toContain("reader");
    expect(out.configMap?.body.data["policy.yaml"]).toContain("generation: 2");
    expect(out.deployments[0]?.upToDate).toBe(true);
    expect(out.deployments[0]?.body).toEqual(reconcile(world).deployments[0]?.body);
    expect(out.events).toEqual([]);
  });

  it("a sidecar setting change gives a new hash, so the pods roll", () => {
    const changed = policy("orders-api", { generation: 2, spec: { sidecar: { logLevel: "warn" } } });
    const out = reconcile({ ...world, policy: { ...changed, status: world.policy.status } });
    const before = world.deployments[0]?.spec?.template.metadata?.annotations?.[SIDECAR_HASH_ANNOTATION];
    const after = out.deployments[0]?.body.spec?.template.metadata.annotations[SIDECAR_HASH_ANNOTATION];
    expect(after).toBeDefined();
    expect(after).not.toBe(before);
    expect(out.deployments[0]?.upToDate).toBe(false);
    expect(out.events).toEqual([
      expect.objectContaining({ reason: "Protected", message: expect.stringContaining("updated") }),
    ]);
  });
});

// --- the ConfigMap ----------------------------------------------------------------------------

describe("the ConfigMap", () => {
  const out = desired(input(), CONFIG);

  it("holds the defaulted document the proxy reads, owned by the policy", () => {
    const body = out.configMap?.body;
    expect(body?.metadata).toEqual({
      name: "portcullis-orders-api",
      namespace: NS,
      labels: { "app.kubernetes.io/managed-by": "portcullis", "portcullis.dev/policy": "orders-api" },
      ownerReferences: [
        {
          apiVersion: "portcullis.dev/v1alpha1",
          kind: "AccessPolicy",
          name: "orders-api",
          uid: "uid-orders-api",
          controller: true,
        },
      ],
    });
    const read = validatePolicyText(body?.data["policy.yaml"] ?? "", Date.now());
    expect(read.problems.filter((p) => p.severity === "error")).toEqual([]);
    expect(read.policy?.metadata).toEqual({ name: "orders-api", namespace: NS, generation: 1 });
    expect(read.policy?.spec).toEqual(policy().spec);
    // Defaults are written out, not left to the reader.
    expect(body?.data["policy.yaml"]).toContain("defaultAction: Deny");
    expect(body?.data["policy.yaml"]).toContain("timeoutSeconds: 30");
  });

  it("does not depend on the key order of the served object", () => {
    const p = policy();
    const reversed = JSON.parse(
      JSON.stringify(p.spec, (_k, v: unknown) =>
        v !== null && typeof v === "object" && !Array.isArray(v)
          ? Object.fromEntries(Object.entries(v).reverse())
          : v,
      ),
    ) as AccessPolicy["spec"];
    const other = desired(input({ policy: { ...p, spec: reversed } }), CONFIG);
    expect(other.configMap?.body.data["policy.yaml"]).toBe(out.configMap?.body.data["policy.yaml"]);
    expect(other.deployments[0]?.body).toEqual(out.deployments[0]?.body);
  });
});

// --- conflicts --------------------------------------------------------------------------------

describe("two policies selecting one Deployment", () => {
  const older = policy("zeta", { created: "2025-01-01T00:00:00Z" });
  const newer = policy("alpha", { created: "2025-02-01T00:00:00Z" });
  const both = [newer, older];

  it("the older by creationTimestamp keeps it; the newer reports Conflict and applies nothing", () => {
    const win = desired(input({ policy: older, policiesInNamespace: both }), CONFIG);
    expect(win.deployments.map((d) => d.name)).toEqual(["orders-api"]);
    // Protected once the sidecar has rolled out; until then Pending, never Conflict.
    expect(win.status.targets?.[0]?.state).toBe("Pending");
    expect(win.status.conditions?.find((c) => c.type === "Conflict")?.status).toBe("False");

    const lose = desired(input({ policy: newer, policiesInNamespace: both }), CONFIG);
    expect(lose.deployments).toEqual([]);
    expect(lose.services).toEqual([]);
    expect(lose.status.targets).toEqual([
      {
        kind: "Deployment",
        name: "orders-api",
        state: "Conflict",
        message: expect.stringContaining('"zeta"'),
      },
    ]);
    expect(lose.status.conditions?.find((c) => c.type === "Conflict")).toMatchObject({
      status: "True",
      reason: "Conflict",
    });
    expect(lose.status.conditions?.find((c) => c.type === "Ready")?.status).toBe("False");
    expect(lose.events).toEqual([
      expect.objectContaining({
        type: "Warning",
        reason: "Conflict",
        regarding: expect.objectContaining({ kind: "AccessPolicy", name: "alpha" }),
      }),
    ]);
    const again = desired(
      input({ policy: { ...newer, status: lose.status }, policiesInNamespace: both, now: LATER }),
      CONFIG,
    );
    expect(again.events).toEqual([]);
    expect(again.statusUpToDate).toBe(true);
  });

  it("breaks a creationTimestamp tie by name", () => {
    const a = policy("a", { created: "2025-03-01T00:00:00Z" });
    const b = policy("b", { created: "2025-03-01T00:00:00Z" });
    expect(desired(input({ policy: a, policiesInNamespace: [b, a] }), CONFIG).deployments).toHaveLength(1);
    expect(
      desired(input({ policy: b, policiesInNamespace: [a, b] }), CONFIG).status.targets?.[0]?.state,
    ).toBe("Conflict");
  });

  it("hands the Deployment over when the older one is being deleted", () => {
    const deletingOlder = policy("zeta", { created: "2025-01-01T00:00:00Z", deleting: true });
    const world = settle(
      { policy: older, deployments: [deployment()], services: [service()] },
      { policiesInNamespace: both },
    );

    const takeover = desired(
      input({ ...world, policy: newer, policiesInNamespace: [newer, deletingOlder] }),
      CONFIG,
    );
    expect(takeover.deployments[0]?.body.metadata.annotations).toEqual({ [POLICY_ANNOTATION]: "alpha" });
    expect(takeover.services[0]?.body.metadata.annotations).toEqual({
      [ORIGINAL_TARGET_PORTS_ANNOTATION]: '{"80/TCP":"http"}',
      [POLICY_ANNOTATION]: "alpha",
    });
    const afterTakeover = applyOutput({ ...world, policy: newer }, takeover);
    // The deleting policy no longer touches what now carries the other's annotation.
    const release = desired(
      input({ ...afterTakeover, policy: deletingOlder, policiesInNamespace: [newer, deletingOlder] }),
      CONFIG,
    );
    expect(release.deployments).toEqual([]);
    expect(release.services).toEqual([]);
    expect(release.finalizer).toBe("remove");
  });

  it("leaves a Service over both policies' pods to the older one", () => {
    const web = deployment("web", { app: "shop", part: "web" });
    const api = deployment("api", { app: "shop", part: "api" });
    const shared = service("shop", [{ port: 80, targetPort: "http" }], { app: "shop" });
    const first = policy("first", {
      created: "2025-01-01T00:00:00Z",
      spec: { selector: { matchLabels: { part: "web" } } },
    });
    const second = policy("second", {
      created: "2025-02-01T00:00:00Z",
      spec: { selector: { matchLabels: { part: "api" } } },
    });
    const policiesInNamespace = [first, second];
    // Both sidecars added and rolled out, the Service not yet pointed anywhere.
    const withSidecars = [first, second].reduce(
      (deployments, p) =>
        applyOutput(
          { policy: p, deployments, services: [shared] },
          desired(input({ policy: p, policiesInNamespace, deployments, services: [shared] }), CONFIG),
        ).deployments,
      [web, api],
    );
    const world = { deployments: withSidecars, services: [shared], policiesInNamespace };
    const a = desired(input({ ...world, policy: first }), CONFIG);
    const b = desired(input({ ...world, policy: second }), CONFIG);
    expect(a.services.map((s) => s.name)).toEqual(["shop"]);
    expect(b.services).toEqual([]);
    // Each still protects its own Deployment.
    expect(a.deployments.map((d) => d.name)).toEqual(["web"]);
    expect(b.deployments.map((d) => d.name)).toEqual(["api"]);
  });

  it("does not need the policy itself among policiesInNamespace", () => {
    const out = desired(input({ policy: newer, policiesInNamespace: [older] }), CONFIG);
    expect(out.status.targets?.[0]?.state).toBe("Conflict");
    const alone = desired(input({ policy: older, policiesInNamespace: [] }), CONFIG);
    expect(alone.status.targets?.[0]?.state).toBe("Pending");
  });

  it("names the policies a Deployment event concerns", () => {
    const d = deployment();
    d.metadata = { ...d.metadata, annotations: { [POLICY_ANNOTATION]: "gone" } };
    const unrelated = policy("unrelated", { spec: { selector: { matchLabels: { app: "billing" } } } });
    expect(policiesForDeployment(d, [older, newer, unrelated])).toEqual(["alpha", "gone", "zeta"]);
  });
});

// --- invalid policies -------------------------------------------------------------------------

describe("an invalid policy", () => {
  const invalid = policy("orders-api", {
    generation: 2,
    spec: {
      authentication: { issuers: [{ issuer: "http://idp.example.com", audiences: ["api://orders"] }] },
      rateLimits: [{ name: "rl", rules: ["missing"], key: "subject", requestsPerSecond: 5 }],
    },
  });

  it("is not Accepted, with every error as path: message, and touches no workload", () => {
    const world0: World = {
      policy: policy(),
      deployments: [deployment()],
      services: [service()],
    };
    const world = settle(world0);
    const out = reconcile({ ...world, policy: { ...invalid, status: world.policy.status } });
    const accepted = out.status.conditions?.find((c) => c.type === "Accepted");
    expect(accepted).toMatchObject({ status: "False", reason: "Invalid", observedGeneration: 2 });
    expect(accepted?.message).toContain(
      "spec.authentication.issuers[0].issuer: must be https (plain http is allowed only for loopback hosts)",
    );
    expect(accepted?.message).toContain('spec.rateLimits[0].rules[0]: no rule named "missing"');
    expect(accepted?.lastTransitionTime).toBe(NOW);
    expect(out.configMap).toBeUndefined();
    expect(out.deleteConfigMap).toBeUndefined();
    expect(out.deployments).toEqual([]);
    expect(out.services).toEqual([]);
    expect(out.finalizer).toBe("none");
    expect(out.status.targets).toEqual([
      {
        kind: "Deployment",
        name: "orders-api",
        state: "Protected",
        message: "keeps the last accepted version of the policy",
      },
    ]);
    expect(out.status.conditions?.find((c) => c.type === "Ready")).toMatchObject({
      status: "False",
      reason: "Invalid",
    });
    expect(out.events).toEqual([
      expect.objectContaining({
        type: "Warning",
        reason: "Invalid",
        regarding: expect.objectContaining({ kind: "AccessPolicy" }),
      }),
    ]);
    const again = reconcile({ ...world, policy: { ...invalid, status: out.status } }, { now: LATER });
    expect(again.events).toEqual([]);
    expect(again.statusUpToDate).toBe(true);
  });

  it("does not release a Deployment that left its selector while invalid", () => {
    const world0: World = { policy: policy(), deployments: [deployment()], services: [service()] };
    const world = settle(world0);
    const left = world.deployments.map((d) => {
      const copy = structuredClone(d);
      if (copy.spec?.template.metadata) copy.spec.template.metadata.labels = { app: "elsewhere" };
      return copy;
    });
    const out = reconcile({ ...world, deployments: left, policy: invalid });
    expect(out.deployments).toEqual([]);
    expect(out.services).toEqual([]);
  });

  it("reports a Deployment it never protected as Pending", () => {
    const out = desired(input({ policy: invalid, policiesInNamespace: [invalid] }), CONFIG);
    expect(out.status.targets).toEqual([
      { kind: "Deployment", name: "orders-api", state: "Pending", message: "the policy is not accepted" },
    ]);
    expect(out.status.protectedTargets).toBe(0);
  });
});

// --- deletion and release ---------------------------------------------------------------------

describe("release", () => {
  const world0: World = {
    policy: policy(),
    deployments: [deployment(), deployment("billing", { app: "billing" })],
    services: [service()],
  };
  const protectedWorld = settle(world0);

  it("on deletion gives back every Deployment and Service carrying the policy's annotation", () => {
    const deleting = {
      ...protectedWorld.policy,
      metadata: { ...protectedWorld.policy.metadata, deletionTimestamp: NOW },
    };
    const other = structuredClone(protectedWorld.deployments);
    const billing = other.find((d) => d.metadata?.name === "billing");
    if (billing?.metadata) billing.metadata.annotations = { [POLICY_ANNOTATION]: "someone-else" };
    const out = reconcile({ ...protectedWorld, deployments: other, policy: deleting });
    expect(out.deployments).toEqual([
      {
        name: "orders-api",
        release: true,
        upToDate: false,
        body: { apiVersion: "apps/v1", kind: "Deployment", metadata: { name: "orders-api", namespace: NS } },
      },
    ]);
    expect(out.services.map((s) => [s.name, s.release, s.body.spec.ports])).toEqual([
      ["orders-api", true, [{ port: 80, protocol: "TCP", targetPort: "http" }]],
    ]);
    expect(out.services[0]?.body.metadata.annotations).toBeUndefined();
    expect(out.deleteConfigMap).toBe("portcullis-orders-api");
    expect(out.configMap).toBeUndefined();
    expect(out.finalizer).toBe("remove");
    expect(out.events).toEqual([
      expect.objectContaining({
        type: "Normal",
        reason: "Removed",
        regarding: expect.objectContaining({ name: "orders-api" }),
      }),
    ]);
    expect(out.status.conditions?.find((c) => c.type === "Ready")).toMatchObject({
      status: "False",
      reason: "Deleting",
    });

    // After the applies the objects are as they were before the policy, and nothing is left to do.
    const restored = applyOutput({ ...protectedWorld, policy: deleting }, out);
    expect(specOf(restored.deployments[0])).toEqual(specOf(world0.deployments[0]));
    expect(restored.services).toEqual(world0.services);
    const done = reconcile({
      ...restored,
      policy: { ...deleting, metadata: { ...deleting.metadata, finalizers: [] } },
    });
    expect(done.deployments).toEqual([]);
    expect(done.services).toEqual([]);
    expect(done.events).toEqual([]);
    expect(done.finalizer).toBe("none");
  });

  it("gives back what a policy that is gone (finalizer removed by hand) left marked, and only that", () => {
    const deployments = structuredClone(protectedWorld.deployments);
    const billing = deployments.find((d) => d.metadata?.name === "billing");
    if (billing?.metadata) billing.metadata.annotations = { [POLICY_ANNOTATION]: "someone-else" };
    const orphans = releaseOrphans(NS, "orders-api", deployments, protectedWorld.services);
    expect(orphans.deployments.map((d) => [d.name, d.release, d.body])).toEqual([
      [
        "orders-api",
        true,
        { apiVersion: "apps/v1", kind: "Deployment", metadata: { name: "orders-api", namespace: NS } },
      ],
    ]);
    expect(orphans.services.map((s) => [s.name, s.release, s.body.spec.ports])).toEqual([
      ["orders-api", true, [{ port: 80, protocol: "TCP", targetPort: "http" }]],
    ]);
    expect(orphans.events.map((e) => [e.reason, e.regarding.name])).toEqual([["Removed", "orders-api"]]);
    // Applied, the user's objects are as before the policy; a second pass finds nothing to do.
    const restored = applyOutput(protectedWorld, { ...reconcile(protectedWorld), ...orphans });
    expect(specOf(restored.deployments[0])).toEqual(specOf(world0.deployments[0]));
    expect(restored.services).toEqual(world0.services);
    const again = releaseOrphans(NS, "orders-api", restored.deployments, restored.services);
    expect([again.deployments, again.services, again.events]).toEqual([[], [], []]);
  });

  it("releases a Deployment relabeled out of the selector, and only that one", () => {
    const relabeled = protectedWorld.deployments.map((d) => structuredClone(d));
    const moved = relabeled.find((d) => d.metadata?.name === "orders-api");
    if (moved?.spec?.template.metadata)
      moved.spec.template.metadata.labels = { app: "orders-api", track: "canary" };
    const narrowed = policy("orders-api", {
      generation: 2,
      spec: {
        selector: {
          matchLabels: { app: "orders-api" },
          matchExpressions: [{ key: "track", operator: "NotIn", values: ["canary"] }],
        },
      },
    });
    const out = reconcile({
      ...protectedWorld,
      deployments: relabeled,
      policy: { ...narrowed, status: protectedWorld.policy.status },
    });
    expect(out.deployments.map((d) => [d.name, d.release])).toEqual([["orders-api", true]]);
    expect(out.events.map((e) => e.reason)).toEqual(["Removed"]);
    expect(out.status.targets).toEqual([]);
    expect(out.status.conditions?.find((c) => c.type === "Ready")?.reason).toBe("NoTargets");
  });
});

// --- status -----------------------------------------------------------------------------------

describe("status", () => {
  it("is Ready with observedGeneration, targets and protectedTargets", () => {
    const p = policy("orders-api", { generation: 4 });
    // The sidecar added, rolled out, the Service pointed at it.
    const out = reconcile(settle({ policy: p, deployments: [deployment()], services: [service()] }));
    expect(out.status.observedGeneration).toBe(4);
    expect(out.status.protectedTargets).toBe(1);
    expect(out.status.targets).toEqual([
      {
        kind: "Deployment",
        name: "orders-api",
        state: "Protected",
        message: expect.stringMatching(/^sidecar [0-9a-f]{16}$/),
      },
    ]);
    expect(
      out.status.conditions?.map((c) => [
        c.type,
        c.status,
        c.reason,
        c.observedGeneration,
        c.lastTransitionTime,
      ]),
    ).toEqual([
      ["Accepted", "True", "Valid", 4, NOW],
      ["Ready", "True", "Protected", 4, NOW],
      ["Conflict", "False", "NoConflict", 4, NOW],
      ["AppPortExposed", "False", "NotExposed", 4, NOW],
    ]);
  });

  it("keeps lastTransitionTime while a condition's status holds, moves it when it changes", () => {
    const first = reconcile(settle({ policy: policy(), deployments: [deployment()], services: [service()] }));
    expect(first.status.conditions?.find((c) => c.type === "Ready")?.status).toBe("True");
    const served = { ...policy(), status: first.status };
    // Ready stays False while the reason changes (apply failure, then a missing port).
    const failing = desired(
      input({ policy: served, now: LATER, failedDeployments: { "orders-api": "conflict" } }),
      CONFIG,
    );
    const ready = failing.status.conditions?.find((c) => c.type === "Ready");
    expect(ready).toMatchObject({
      status: "False",
      reason: "TargetsNotProtected",
      lastTransitionTime: LATER,
    });
    expect(failing.status.targets?.[0]).toMatchObject({ state: "Error", message: "apply failed: conflict" });
    expect(failing.status.conditions?.find((c) => c.type === "Accepted")?.lastTransitionTime).toBe(NOW);
    const noTargets = desired(
      input({
        policy: { ...policy(), status: failing.status },
        deployments: [],
        now: "2025-06-01T12:00:00Z",
      }),
      CONFIG,
    );
    expect(noTargets.status.conditions?.find((c) => c.type === "Ready")).toMatchObject({
      status: "False",
      reason: "NoTargets",
      lastTransitionTime: LATER,
    });
  });

  it("lists warnings in the Accepted message", () => {
    const p = policy("orders-api", { spec: { selector: {} } });
    const out = desired(input({ policy: p, policiesInNamespace: [p] }), CONFIG);
    expect(out.status.conditions?.[0]).toMatchObject({
      status: "True",
      message: expect.stringContaining("empty selector"),
    });
    expect(out.deployments).toEqual([]);
  });

  it("judges a CA's expiry at input.now, not the wall clock: same input, same Accepted message", () => {
    // expired-ca.pem is valid 2020-01-01 .. 2020-01-02.
    const pem = readFileSync(join(import.meta.dirname, "fixtures/expired-ca.pem"), "utf8");
    const issuers = [{ issuer: "https://idp.example.com", audiences: ["api://orders"], caBundle: pem }];
    const p = policy("orders-api", { spec: { authentication: { issuers } } });
    const acceptedAt = (now: string, wallClock: string) => {
      vi.useFakeTimers({ toFake: ["Date"], now: Date.parse(wallClock) });
      try {
        return desired(input({ policy: p, policiesInNamespace: [p], now }), CONFIG).status.conditions?.find(
          (c) => c.type === "Accepted",
        );
      } finally {
        vi.useRealTimers();
      }
    };
    const before = acceptedAt("2019-12-31T00:00:00Z", "2030-01-01T00:00:00Z");
    expect(before).toMatchObject({ status: "True" });
    expect(before?.message).not.toContain("expired");
    expect(acceptedAt("2019-12-31T00:00:00Z", "2019-06-01T00:00:00Z")).toEqual(before);
    const after = acceptedAt(NOW, "2019-06-01T00:00:00Z");
    expect(after?.message).toContain("certificate 1 expired on Jan  2 00:00:00 2020 GMT");
    expect(acceptedAt(NOW, "2030-01-01T00:00:00Z")).toEqual(after);
  });
});

// --- the app's own port -----------------------------------------------------------------------

/** The example Deployment with its app container's command (and more) replaced. */
function appDeployment(app: Partial<V1Container>, name = "orders-api"): V1Deployment {
  const d = deployment(name);
  const container = d.spec?.template.spec?.containers[0];
  if (container === undefined) throw new Error("fixture without an app container");
  Object.assign(container, app);
  return d;
}

const OPEN = appDeployment({ command: ["uvicorn", "app:app", "--host", "0.0.0.0", "--port", "8000"] });
const LOOPBACK = appDeployment({ command: ["uvicorn", "app:app", "--host", "127.0.0.1", "--port", "8000"] });
const exposure = (out: ReconcileOutput) => out.status.conditions?.find((c) => c.type === "AppPortExposed");
const fencing = (spec: Record<string, unknown> = {}) =>
  policy("orders-api", { spec: { networkPolicy: { enabled: true, ...spec } } });

describe("an app port bound beyond loopback", () => {
  it("is reported: AppPortExposed True naming Deployment, container, port and the remedy, and on the target", () => {
    const world = settle({ policy: policy(), deployments: [OPEN], services: [service()] });
    const out = reconcile(world, { now: LATER });
    expect(exposure(out)).toMatchObject({ status: "True", reason: "ListensBeyondLoopback" });
    expect(exposure(out)?.message).toContain(
      'Deployment orders-api, container "app", port 8000: uvicorn --host 0.0.0.0: reachable on the pod IP without passing the sidecar',
    );
    expect(exposure(out)?.message).toContain("spec.networkPolicy.enabled: true");
    expect(out.status.targets?.[0]).toMatchObject({
      state: "Protected",
      exposedPorts: [{ container: "app", port: 8000, evidence: "uvicorn --host 0.0.0.0" }],
    });
    // Reported once, on the Deployment, then quiet.
    expectQuiet(out);
  });

  it("warns once on the Deployment when first seen", () => {
    const out = reconcile({ policy: policy(), deployments: [OPEN], services: [service()] });
    const warning = out.events.find((e) => e.reason === "AppPortExposed");
    expect(warning).toMatchObject({ type: "Warning", regarding: { kind: "Deployment", name: "orders-api" } });
  });

  it("is reported for a kubelet probe on the app port, which needs the pod IP", () => {
    const probed = appDeployment({ readinessProbe: { httpGet: { path: "/healthz", port: "http" } } });
    const out = reconcile(settle({ policy: policy(), deployments: [probed], services: [service()] }));
    expect(exposure(out)?.status).toBe("True");
    expect(out.status.targets?.[0]?.exposedPorts?.[0]).toMatchObject({ container: "app", port: 8000 });
  });

  it("clears when the app is bound to loopback, and the condition's transition time moves", () => {
    const world = settle({ policy: policy(), deployments: [OPEN], services: [service()] });
    const fixed = reconcile({ ...world, deployments: [LOOPBACK] }, { now: LATER });
    expect(exposure(fixed)).toMatchObject({
      status: "False",
      reason: "NotExposed",
      lastTransitionTime: LATER,
    });
    expect(fixed.status.targets?.[0]?.exposedPorts).toBeUndefined();
    expect(fixed.events.filter((e) => e.reason === "AppPortExposed")).toEqual([]);
  });

  it("is left to the older policy on a Conflict target", () => {
    const older = policy("alpha", { created: "2024-01-01T00:00:00Z" });
    const newer = policy("zeta");
    const out = desired(
      input({ policy: newer, policiesInNamespace: [older, newer], deployments: [OPEN] }),
      CONFIG,
    );
    expect(out.status.targets?.[0]).toMatchObject({ state: "Conflict" });
    expect(out.status.targets?.[0]?.exposedPorts).toBeUndefined();
    expect(exposure(out)?.status).toBe("False");
  });
});

describe("spec.networkPolicy", () => {
  it("is off by default: no NetworkPolicy", () => {
    const world = settle({ policy: policy(), deployments: [OPEN], services: [service()] });
    expect(world.networkPolicies).toBeUndefined();
  });

  it("fences a protected Deployment's pods to the sidecar's ports once its rollout is done", () => {
    const first = reconcile({ policy: fencing(), deployments: [OPEN], services: [service()] });
    // The sidecar is only being added: the Service still targets the app port, a fence would cut it.
    expect(first.networkPolicies).toEqual([]);
    const world = settle({ policy: fencing(), deployments: [OPEN], services: [service()] });
    expect(world.networkPolicies).toEqual([
      {
        apiVersion: "networking.k8s.io/v1",
        kind: "NetworkPolicy",
        metadata: {
          name: "portcullis-orders-api",
          namespace: NS,
          labels: { "app.kubernetes.io/managed-by": "portcullis", "portcullis.dev/policy": "orders-api" },
          ownerReferences: [
            {
              apiVersion: "portcullis.dev/v1alpha1",
              kind: "AccessPolicy",
              name: "orders-api",
              uid: "uid-orders-api",
              controller: true,
            },
          ],
        },
        spec: {
          podSelector: { matchLabels: { app: "orders-api" } },
          policyTypes: ["Ingress"],
          ingress: [
            {
              ports: [
                { protocol: "TCP", port: 8080 },
                { protocol: "TCP", port: 9901 },
              ],
            },
          ],
        },
      },
    ]);
    const out = reconcile(world, { now: LATER });
    expectQuiet(out);
    expect(exposure(out)).toMatchObject({ status: "False", reason: "FencedByNetworkPolicy" });
    expect(exposure(out)?.message).toContain("portcullis-orders-api");
    expect(out.status.targets?.[0]?.exposedPorts).toEqual([
      { container: "app", port: 8000, evidence: "uvicorn --host 0.0.0.0", fenced: true },
    ]);
  });

  it("admits only the listener when allowAdminPort is false", () => {
    const world = settle({
      policy: fencing({ allowAdminPort: false }),
      deployments: [LOOPBACK],
      services: [service()],
    });
    expect(world.networkPolicies?.[0]?.spec?.ingress).toEqual([{ ports: [{ protocol: "TCP", port: 8080 }] }]);
  });

  it("follows a listener port change, keeping the old port admitted while the pods roll", () => {
    const world = settle({ policy: fencing(), deployments: [OPEN], services: [service()] });
    const moved = policy("orders-api", {
      generation: 2,
      spec: { networkPolicy: { enabled: true }, listener: { port: 8081 } },
    });
    const rolling = reconcile({ ...world, policy: { ...moved, status: world.policy.status } });
    expect(rolling.networkPolicies[0]?.body.spec.ingress[0]?.ports.map((p) => p.port)).toEqual([
      8080, 8081, 9901,
    ]);
    const done = settle({ ...world, policy: { ...moved, status: world.policy.status } });
    expect(done.networkPolicies?.[0]?.spec?.ingress?.[0]?.ports?.map((p) => p.port)).toEqual([8081, 9901]);
  });

  it("is deleted when turned off, when the Deployment leaves the selector, and on deletion", () => {
    const world = settle({ policy: fencing(), deployments: [OPEN], services: [service()] });
    const off = reconcile({
      ...world,
      policy: { ...policy("orders-api", { generation: 2 }), status: world.policy.status },
    });
    expect(off.deleteNetworkPolicies).toEqual(["portcullis-orders-api"]);
    expect(off.networkPolicies).toEqual([]);
    expect(exposure(off)?.status).toBe("True");

    const elsewhere = fencing();
    elsewhere.spec.selector = { matchLabels: { app: "billing" } };
    const unselected = reconcile({ ...world, policy: { ...elsewhere, status: world.policy.status } });
    expect(unselected.deleteNetworkPolicies).toEqual(["portcullis-orders-api"]);

    const deleting = reconcile({
      ...world,
      policy: policy("orders-api", { deleting: true, spec: { networkPolicy: { enabled: true } } }),
    });
    expect(deleting.deleteNetworkPolicies).toEqual(["portcullis-orders-api"]);
    expect(deleting.networkPolicies).toEqual([]);
  });

  it("never deletes another policy's NetworkPolicy", () => {
    const world = settle({ policy: fencing(), deployments: [OPEN], services: [service()] });
    const theirs = structuredClone(world.networkPolicies?.[0]) as V1NetworkPolicy;
    theirs.metadata = {
      ...theirs.metadata,
      name: "portcullis-billing",
      labels: { "portcullis.dev/policy": "billing" },
    };
    const out = reconcile(
      { ...world, networkPolicies: [...(world.networkPolicies ?? []), theirs] },
      { policy: policy("orders-api", { deleting: true }) },
    );
    expect(out.deleteNetworkPolicies).toEqual(["portcullis-orders-api"]);
  });

  it("stays as it is while the policy is invalid or the Deployment is in Error", () => {
    const world = settle({ policy: fencing(), deployments: [OPEN], services: [service()] });
    const invalid = policy("orders-api", {
      generation: 2,
      spec: {
        networkPolicy: { enabled: true },
        authentication: { issuers: [{ issuer: "http://idp.example.com", audiences: ["api://orders"] }] },
      },
    });
    const out = reconcile({ ...world, policy: { ...invalid, status: world.policy.status } });
    expect([out.networkPolicies, out.deleteNetworkPolicies]).toEqual([[], []]);
    expect(exposure(out)?.reason).toBe("FencedByNetworkPolicy");

    const clash = structuredClone(world.deployments);
    clash[0]?.spec?.template.spec?.containers[0]?.ports?.push({ containerPort: 9901 });
    const error = reconcile({ ...world, deployments: clash });
    expect(error.status.targets?.[0]?.state).toBe("Error");
    expect([error.networkPolicies, error.deleteNetworkPolicies]).toEqual([[], []]);
  });
});
