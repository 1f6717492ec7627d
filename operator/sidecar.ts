// The proxy sidecar the operator adds to a pod template: container, volume, and the hash that marks
// which settings a pod runs with. Pure: same inputs, same objects, same key order.

import { createHash } from "node:crypto";
import type { V1Container, V1EnvVar, V1LifecycleHandler, V1PodSpec, V1Volume } from "@kubernetes/client-node";
import type { AccessPolicySpec } from "../policy/schema.ts";
import {
  ADMIN_PORT_NAME,
  compare,
  LISTENER_PORT_NAME,
  type OperatorConfig,
  POLICY_DIR,
  POLICY_KEY,
  POLICY_VOLUME,
  PRESTOP_PATH,
  SIDECAR_NAME,
} from "./config.ts";

export interface ServerVersion {
  major: number;
  minor: number;
}

/** Native sidecars (restartPolicy Always on an init container) are on by default from 1.29. */
export const NATIVE_SIDECAR_SINCE: ServerVersion = { major: 1, minor: 29 };
/** Kubernetes' default terminationGracePeriodSeconds. */
export const DEFAULT_GRACE_SECONDS = 30;

/** `{ major: "1", minor: "29+" }` (some distributions add a "+") -> `{ major: 1, minor: 29 }`. */
export function parseServerVersion(info: { major: string; minor: string }): ServerVersion | undefined {
  const major = Number.parseInt(info.major.replace(/\D/g, ""), 10);
  const minor = Number.parseInt(info.minor.replace(/\D/g, ""), 10);
  return Number.isFinite(major) && Number.isFinite(minor) ? { major, minor } : undefined;
}

export function useNativeSidecar(mode: OperatorConfig["sidecarMode"], version: ServerVersion): boolean {
  if (mode !== "auto") return mode === "native";
  return (
    version.major > NATIVE_SIDECAR_SINCE.major ||
    (version.major === NATIVE_SIDECAR_SINCE.major && version.minor >= NATIVE_SIDECAR_SINCE.minor)
  );
}

/** The containers of the pod that are not ours. */
export function appContainers(pod: V1PodSpec | undefined): V1Container[] {
  return (pod?.containers ?? []).filter((c) => c.name !== SIDECAR_NAME);
}

export type UpstreamPort = { ok: true; port: number; names: string[] } | { ok: false; message: string };

/**
 * The number the sidecar forwards to: a number as given, a name resolved against the app containers'
 * ports. `names` are the names that port goes by in the pod (a Service may target it by any of them).
 */
export function resolveUpstreamPort(pod: V1PodSpec | undefined, port: number | string): UpstreamPort {
  const declared = appContainers(pod).flatMap((c) => c.ports ?? []);
  if (typeof port === "number") {
    const names = declared.filter((p) => p.containerPort === port && p.name).map((p) => p.name as string);
    return { ok: true, port, names: [...new Set(names)].sort(compare) };
  }
  const match = declared.find((p) => p.name === port);
  if (match === undefined) {
    const known = declared.filter((p) => p.name).map((p) => `${p.name}=${p.containerPort}`);
    return {
      ok: false,
      message: `upstream port ${JSON.stringify(port)} is not a named containerPort of the app containers (${
        known.length > 0 ? `named ports: ${known.join(", ")}` : "they declare no named ports"
      })`,
    };
  }
  return resolveUpstreamPort(pod, match.containerPort);
}

/** Ports the sidecar binds that some app container already declares: the pod could not start. */
export function portClashes(pod: V1PodSpec | undefined, spec: AccessPolicySpec): string[] {
  const ours = new Set([spec.listener.port, spec.sidecar.adminPort]);
  return appContainers(pod)
    .flatMap((c) => (c.ports ?? []).map((p) => ({ container: c.name, port: p.containerPort })))
    .filter((p) => ours.has(p.port))
    .map((p) => `port ${p.port} is already declared by container ${JSON.stringify(p.container)}`);
}

/** PORTCULLIS_REDIS_URL as a value, from a Secret (optional: missing, the sidecar counts locally), or none. */
function redisUrlEnv(config: OperatorConfig): V1EnvVar[] {
  const redis = config.sidecarRedisUrl;
  if (redis === undefined) return [];
  if ("url" in redis) return [{ name: "PORTCULLIS_REDIS_URL", value: redis.url }];
  const { secret } = redis;
  return [
    {
      name: "PORTCULLIS_REDIS_URL",
      valueFrom: { secretKeyRef: { name: secret.name, key: secret.key, optional: true } },
    },
  ];
}

/** Seconds the sidecar drains after SIGTERM: inside the grace period by the margin, never negative. */
export function drainSeconds(graceSeconds: number | undefined, marginSeconds: number): number {
  const grace = graceSeconds ?? DEFAULT_GRACE_SECONDS;
  return grace > marginSeconds ? grace - marginSeconds : Math.floor(grace / 2);
}

/**
 * V8's young generation, per semi-space. Node's default (16 MiB) let the proxy's private memory reach
 * ~85 MiB under load against ~65 MiB at 4 MiB, and was slower too: two compiled sidecars loaded side
 * by side (bench/sidecar-settings.ts) served 0.87-0.95x at 16 MiB and 0.87-0.97x at 8 MiB of what
 * they served at 4 MiB (a young generation that stays in the CPU's caches). 2 MiB measured no better.
 */
export const SIDECAR_SEMI_SPACE_MIB = 4;
/**
 * glibc's malloc arenas: by default up to 8 per core, one per thread that allocates (V8's GC and
 * compiler threads, libuv's pool). Two held the loaded sidecar's private memory ~6 MiB lower at the
 * same throughput (1.00-1.05x side by side).
 */
export const SIDECAR_MALLOC_ARENA_MAX = 2;
/** The old generation gets half the memory limit, never less than this (the proxy's live heap is ~20 MiB). */
export const SIDECAR_MIN_OLD_SPACE_MIB = 48;

const MEMORY_SUFFIXES: Readonly<Record<string, number>> = {
  "": 1,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  P: 1e15,
  E: 1e18,
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
  Pi: 2 ** 50,
  Ei: 2 ** 60,
};

/** A memory quantity (`128Mi`, `0.5Gi`, `1e9`, `134217728`) in bytes; undefined when it is none. */
export function memoryBytes(quantity: string | number): number | undefined {
  if (typeof quantity === "number") return Number.isFinite(quantity) && quantity >= 0 ? quantity : undefined;
  const match = /^\+?((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$/.exec(
    quantity,
  );
  if (match === null) return undefined;
  const bytes = Number(match[1]) * (MEMORY_SUFFIXES[match[2] ?? ""] ?? Number.NaN);
  return Number.isFinite(bytes) ? bytes : undefined;
}

/**
 * NODE_OPTIONS for the sidecar: a small young generation, and an old generation sized to the memory
 * limit (as JVMs size their heap to a container's), so a loaded proxy collects garbage before the
 * kernel kills it. Without a limit, V8 sizes the old generation itself.
 */
export function sidecarNodeOptions(memoryLimit: string | number | undefined): string {
  const flags = [`--max-semi-space-size=${SIDECAR_SEMI_SPACE_MIB}`];
  const bytes = memoryLimit === undefined ? undefined : memoryBytes(memoryLimit);
  if (bytes !== undefined) {
    const oldSpace = Math.max(SIDECAR_MIN_OLD_SPACE_MIB, Math.floor(bytes / 2 ** 20 / 2));
    flags.push(`--max-old-space-size=${oldSpace}`);
  }
  return flags.join(" ");
}

/** The runtime's settings for a sidecar with this memory limit: malloc's arenas, then V8's heap. */
export function sidecarRuntimeEnv(memoryLimit: string | number | undefined): V1EnvVar[] {
  return [
    { name: "MALLOC_ARENA_MAX", value: String(SIDECAR_MALLOC_ARENA_MAX) },
    { name: "NODE_OPTIONS", value: sidecarNodeOptions(memoryLimit) },
  ];
}

/** The proxy's executable in the image (Dockerfile: a link on PATH). */
export const PROXY_COMMAND = "portcullis-proxy";

export interface SidecarSettings {
  upstreamPort: number;
  drainSeconds: number;
  native: boolean;
}

export function sidecarContainer(
  spec: AccessPolicySpec,
  settings: SidecarSettings,
  config: OperatorConfig,
): V1Container {
  const adminProbe = (path: string) => ({ httpGet: { path, port: ADMIN_PORT_NAME, scheme: "HTTP" } });
  const resources = sidecarResources(spec, config);
  const container: V1Container = {
    name: SIDECAR_NAME,
    image: spec.sidecar.image ?? config.proxyImage,
    // Named, not left to the image's entrypoint: the operator then owns the field, and a hand edit
    // that makes the sidecar run something else is written back (server-side apply cannot clear a
    // field it never set).
    command: [PROXY_COMMAND],
    args: [
      "--policy",
      `${POLICY_DIR}/${POLICY_KEY}`,
      "--upstream",
      `http://127.0.0.1:${settings.upstreamPort}`,
      "--listen",
      `0.0.0.0:${spec.listener.port}`,
      "--admin",
      `0.0.0.0:${spec.sidecar.adminPort}`,
    ],
    env: [
      ...sidecarRuntimeEnv(resources.limits?.memory),
      { name: "PORTCULLIS_DRAIN_SECONDS", value: String(settings.drainSeconds) },
      { name: "PORTCULLIS_LOG_LEVEL", value: spec.sidecar.logLevel ?? config.sidecarLogLevel },
      ...redisUrlEnv(config),
    ],
    ports: [
      { name: LISTENER_PORT_NAME, containerPort: spec.listener.port, protocol: "TCP" },
      { name: ADMIN_PORT_NAME, containerPort: spec.sidecar.adminPort, protocol: "TCP" },
    ],
    // A native sidecar's startup probe gates the app containers' start, and /readyz waits for the app:
    // startup may only ask whether the proxy runs. Readiness (keys warm, app listening) gates traffic.
    startupProbe: { ...adminProbe("/healthz"), periodSeconds: 1, timeoutSeconds: 2, failureThreshold: 60 },
    readinessProbe: { ...adminProbe("/readyz"), periodSeconds: 5, timeoutSeconds: 2, failureThreshold: 2 },
    livenessProbe: { ...adminProbe("/healthz"), periodSeconds: 10, timeoutSeconds: 2, failureThreshold: 3 },
    resources,
    securityContext: {
      runAsNonRoot: true,
      runAsUser: config.sidecarUser,
      runAsGroup: config.sidecarUser,
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
      capabilities: { drop: ["ALL"] },
      seccompProfile: { type: "RuntimeDefault" },
    },
    volumeMounts: [{ name: POLICY_VOLUME, mountPath: POLICY_DIR, readOnly: true }],
  };
  if (settings.native) container.restartPolicy = "Always";
  return container;
}

/** Policy quantities over operator defaults, key by key; numbers become strings; keys sorted. */
export function sidecarResources(
  spec: AccessPolicySpec,
  config: OperatorConfig,
): { requests?: Record<string, string>; limits?: Record<string, string> } {
  const merge = (defaults: Record<string, string>, overrides: Record<string, number | string> = {}) => {
    const merged: Record<string, string> = { ...defaults };
    for (const [name, value] of Object.entries(overrides)) merged[name] = String(value);
    return Object.fromEntries(Object.entries(merged).sort(([a], [b]) => compare(a, b)));
  };
  const requests = merge(config.sidecarResources.requests, spec.sidecar.resources?.requests);
  const limits = merge(config.sidecarResources.limits, spec.sidecar.resources?.limits);
  const resources: { requests?: Record<string, string>; limits?: Record<string, string> } = {};
  if (Object.keys(limits).length > 0) resources.limits = limits;
  if (Object.keys(requests).length > 0) resources.requests = requests;
  return resources;
}

/** The whole ConfigMap mounted as a directory (not subPath), so its updates reach the running proxy. */
export function policyVolume(configMapName: string): V1Volume {
  return { name: POLICY_VOLUME, configMap: { name: configMapName } };
}

/** Short, stable digest of what the pod runs; key order does not matter. */
export function sidecarHash(
  container: V1Container,
  volume: V1Volume,
  preStopHooks: readonly string[] = [],
): string {
  const input = preStopHooks.length === 0 ? { container, volume } : { container, volume, preStopHooks };
  return createHash("sha256").update(canonicalJson(input)).digest("hex").slice(0, 16);
}

/** The app container's preStop hook: the sidecar holds it while keep-alive clients move to other pods. */
export function preStopHook(adminPort: number): V1LifecycleHandler {
  return { httpGet: { path: PRESTOP_PATH, port: adminPort } };
}

/**
 * The app containers that get the hook: those serving the upstream port (every app container when none
 * declares it), unless a container has a preStop of its own, which stays as it is. Native sidecars
 * only: a plain sidecar container is stopped at the same time as the app and could not hold for it.
 */
export function preStopHookTargets(
  pod: V1PodSpec | undefined,
  upstreamPort: number,
  adminPort: number,
): string[] {
  const apps = appContainers(pod);
  const serving = apps.filter((c) => (c.ports ?? []).some((p) => p.containerPort === upstreamPort));
  return (serving.length > 0 ? serving : apps)
    .filter((c) => {
      const own = c.lifecycle?.preStop;
      return own === undefined || (own.httpGet?.path === PRESTOP_PATH && own.httpGet.port === adminPort);
    })
    .map((c) => c.name)
    .sort(compare);
}

/** JSON with object keys sorted at every depth: equal values, equal text. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v !== null && typeof v === "object" && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => compare(a, b)))
      : v,
  );
}
