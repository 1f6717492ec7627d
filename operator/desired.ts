// The reconcile core: one AccessPolicy and what the cache holds for its namespace in, the objects to
// apply (server-side apply, field manager FIELD_MANAGER), the status and the events out. No I/O, no
// clock: the edge passes `now`, used only for a condition whose status changes. Same input, same
// output, byte for byte; an input that already reflects the output gives `upToDate` everywhere and
// no events, so a second reconcile writes nothing.

import type {
  V1ConfigMap,
  V1Container,
  V1Deployment,
  V1LabelSelector,
  V1NetworkPolicy,
  V1ObjectMeta,
  V1Service,
  V1Volume,
} from "@kubernetes/client-node";
import { stringify } from "yaml";
import { formatProblem, type Problem } from "../policy/problems.ts";
import {
  type AccessPolicy,
  type AccessPolicyDocument,
  type AccessPolicyStatus,
  API_VERSION,
  type Condition,
  type ExposedPort,
  KIND,
  type Target,
} from "../policy/schema.ts";
import { validatePolicyObject } from "../policy/validate.ts";
import { type ConditionVerdict, findCondition, nextConditions } from "./conditions.ts";
import {
  compare,
  configMapName,
  FINALIZER,
  LISTENER_PORT_NAME,
  MANAGED_BY,
  MANAGED_BY_LABEL,
  networkPolicyName,
  type OperatorConfig,
  ORIGINAL_TARGET_PORTS_ANNOTATION,
  POLICY_ANNOTATION,
  POLICY_KEY,
  POLICY_LABEL,
  POLICY_VOLUME,
  SIDECAR_HASH_ANNOTATION,
  SIDECAR_NAME,
} from "./config.ts";
import { exposedAppPorts } from "./exposure.ts";
import { matchesSelector, matchesServiceSelector } from "./selector.ts";
import {
  canonicalJson,
  drainSeconds,
  policyVolume,
  portClashes,
  preStopHook,
  preStopHookTargets,
  resolveUpstreamPort,
  type ServerVersion,
  sidecarContainer,
  sidecarHash,
  useNativeSidecar,
} from "./sidecar.ts";

// --- the contract with the edge ---------------------------------------------------------------

export interface ReconcileInput {
  /** The AccessPolicy as served: metadata (uid, generation, creationTimestamp, deletionTimestamp, finalizers) and status. */
  policy: AccessPolicy;
  /** Every AccessPolicy in the namespace (the policy itself may or may not be among them). */
  policiesInNamespace: readonly AccessPolicy[];
  /** Every Deployment in the namespace, as served (annotations, pod template). */
  deployments: readonly V1Deployment[];
  /** Every Service in the namespace, as served. */
  services: readonly V1Service[];
  /** The policy's own ConfigMap (`configMapName(policy)`) as served, when it exists. */
  configMap?: V1ConfigMap | undefined;
  serverVersion: ServerVersion;
  /** RFC 3339, e.g. `kubeTime(new Date())`; written only where a condition's status changes. */
  now: string;
  /** Deployment name -> why applying its intent failed this round: target state Error, Ready False. */
  failedDeployments?: Readonly<Record<string, string>>;
  /** The NetworkPolicies labelled as this policy's (`portcullis.dev/policy`), as served. */
  networkPolicies?: readonly V1NetworkPolicy[];
}

/** Server-side apply bodies: ONLY the fields the operator owns. Type aliases (not interfaces) so they
 * fit index-signature object types such as kube-client's KubeObject. */
export type DeploymentApply = {
  apiVersion: "apps/v1";
  kind: "Deployment";
  metadata: { name: string; namespace: string; annotations?: Record<string, string> };
  spec?: {
    template: {
      metadata: { annotations: Record<string, string> };
      spec: { initContainers?: V1Container[]; containers?: V1Container[]; volumes: V1Volume[] };
    };
  };
};

export type ServicePortApply = {
  port: number;
  protocol: string;
  targetPort: number | string;
};

export type ServiceApply = {
  apiVersion: "v1";
  kind: "Service";
  metadata: { name: string; namespace: string; annotations?: Record<string, string> };
  spec: { ports: ServicePortApply[] };
};

export type ConfigMapApply = {
  apiVersion: "v1";
  kind: "ConfigMap";
  metadata: {
    name: string;
    namespace: string;
    labels: Record<string, string>;
    ownerReferences?: { apiVersion: string; kind: string; name: string; uid: string; controller: true }[];
  };
  data: Record<string, string>;
};

export type NetworkPolicyApply = {
  apiVersion: "networking.k8s.io/v1";
  kind: "NetworkPolicy";
  metadata: ConfigMapApply["metadata"];
  spec: {
    podSelector: V1LabelSelector;
    policyTypes: ["Ingress"];
    ingress: { ports: { protocol: "TCP"; port: number }[] }[];
  };
};

export interface Intent<Body> {
  name: string;
  body: Body;
  /** The body gives back what the operator added (an empty intent for a Deployment, original targetPorts for a Service). */
  release: boolean;
  /** The observed object already carries this body's marks: applying it would change nothing. */
  upToDate: boolean;
}

export interface PolicyEvent {
  type: "Normal" | "Warning";
  reason: "Protected" | "Removed" | "Invalid" | "Conflict" | "AppPortExposed";
  message: string;
  regarding: { apiVersion: string; kind: string; name: string; namespace: string; uid?: string };
}

export interface ReconcileOutput {
  /** The validated, defaulted policy document for the sidecars. Absent while the policy is invalid or deleted. */
  configMap?: Intent<ConfigMapApply>;
  /** The ConfigMap to delete (the policy is being deleted and it still exists). */
  deleteConfigMap?: string;
  /** Sorted by name. Apply after the ConfigMap, before the Services. */
  deployments: Intent<DeploymentApply>[];
  /** Sorted by name. Apply after the Deployments; on release, before them. */
  services: Intent<ServiceApply>[];
  /** Sorted by name. Apply last: a fence goes up once its Deployment's pods all run the sidecar. */
  networkPolicies: Intent<NetworkPolicyApply>[];
  /** Sorted. Delete first (a fence coming down never cuts traffic): released, unselected, or disabled. */
  deleteNetworkPolicies: string[];
  status: AccessPolicyStatus;
  /** status equals the served status: nothing to write. */
  statusUpToDate: boolean;
  /** Only for changes: a reconcile that changes nothing emits none. */
  events: PolicyEvent[];
  /** "add": before applying anything. "remove": last, once every apply/delete above succeeded. */
  finalizer: "add" | "remove" | "none";
}

// --- desired ----------------------------------------------------------------------------------

export function desired(input: ReconcileInput, config: OperatorConfig): ReconcileOutput {
  const { policy } = input;
  const name = policy.metadata.name ?? "";
  const namespace = policy.metadata.namespace ?? "";
  const deleting = Boolean(policy.metadata.deletionTimestamp);
  const validation = validatePolicyObject(
    {
      apiVersion: policy.apiVersion,
      kind: policy.kind,
      metadata: { name, namespace, generation: policy.metadata.generation },
      spec: policy.spec,
    },
    // CA expiry judged at the input's moment, not the wall clock's.
    Date.parse(input.now),
  );
  const accepted = acceptedVerdict(validation.problems, validation.policy !== undefined);
  const ctx: Context = {
    input,
    config,
    name,
    namespace,
    cmName: configMapName(name),
    native: useNativeSidecar(config.sidecarMode, input.serverVersion),
    events: [],
    ownFences: fencesLabelledAs(name, input.networkPolicies ?? []),
    fences: new Map(),
    keptFences: new Set(),
  };

  const out: ReconcileOutput = {
    deployments: [],
    services: [],
    networkPolicies: [],
    deleteNetworkPolicies: [],
    status: {},
    statusUpToDate: false,
    events: ctx.events,
    finalizer: finalizerAction(policy, deleting),
  };

  let targets: Target[] = [];
  let ready: ConditionVerdict;
  if (deleting) {
    // Give back everything marked as ours, whatever the selector says now.
    const released = releaseMarked(ctx, input.deployments, input.services);
    out.services = released.services;
    out.deployments = released.deployments;
    out.deleteNetworkPolicies = [...ctx.ownFences.keys()];
    if (input.configMap !== undefined) out.deleteConfigMap = ctx.cmName;
    ready = {
      type: "Ready",
      status: "False",
      reason: "Deleting",
      message: "the policy is being deleted: its Deployments and Services are being restored",
    };
  } else {
    // Only Deployments this policy selects or has marked matter; sorting just those keeps it cheap.
    const selector = policy.spec?.selector;
    const deployments = byName(
      input.deployments.filter((d) => carriedPolicy(d) === name || matchesSelector(selector, podLabels(d))),
    );
    // While invalid every fence stays as it is, like the sidecars and the ConfigMap.
    if (validation.policy === undefined) for (const n of ctx.ownFences.keys()) ctx.keptFences.add(n);
    const claims = claimLookup(input);
    const held: Held[] = [];
    for (const d of deployments) {
      const target = reconcileDeployment(ctx, d, claims, validation.policy, held, out.deployments);
      if (target !== undefined) targets.push(withExposure(ctx, d, target));
    }
    out.networkPolicies = [...ctx.fences.values()].sort((a, b) => compare(a.name, b.name));
    out.deleteNetworkPolicies = [...ctx.ownFences.keys()].filter(
      (n) => !ctx.fences.has(n) && !ctx.keptFences.has(n),
    );
    if (validation.policy !== undefined) {
      out.configMap = configMapIntent(ctx, validation.policy);
      const services = byName(
        input.services.filter(
          (s) =>
            carriedPolicy(s) === name || held.some((h) => matchesServiceSelector(s.spec?.selector, h.labels)),
        ),
      );
      out.services = services.flatMap((s) => {
        const intent = reconcileService(ctx, s, held, claims, input.deployments);
        return intent === undefined ? [] : [intent];
      });
    } else {
      warnOnce(ctx, policy.status, accepted);
    }
    ready = readyVerdict(validation.policy !== undefined, targets, namespace);
  }
  if (deleting) targets = [];

  const conflicts = targets.filter((t) => t.state === "Conflict");
  const conditions = nextConditions(
    policy.status?.conditions,
    [
      accepted,
      ready,
      conflicts.length > 0
        ? {
            type: "Conflict",
            status: "True",
            reason: "Conflict",
            message: conflicts.map((t) => `${t.name}: ${t.message}`).join("; "),
          }
        : {
            type: "Conflict",
            status: "False",
            reason: "NoConflict",
            message: "no older AccessPolicy selects these Deployments",
          },
      exposureVerdict(targets),
    ],
    policy.metadata.generation,
    input.now,
  );
  const status: AccessPolicyStatus = {};
  if (policy.metadata.generation !== undefined) status.observedGeneration = policy.metadata.generation;
  status.conditions = conditions;
  status.targets = targets;
  status.protectedTargets = targets.filter((t) => t.state === "Protected").length;
  out.status = status;
  out.statusUpToDate = canonicalJson(status) === canonicalJson(policy.status ?? {});
  return out;
}

// --- per Deployment ---------------------------------------------------------------------------

/** What releasing needs: whose marks to give back, and where events go. */
interface ReleaseContext {
  name: string;
  namespace: string;
  events: PolicyEvent[];
}

interface Context extends ReleaseContext {
  input: ReconcileInput;
  config: OperatorConfig;
  cmName: string;
  native: boolean;
  /** NetworkPolicy name -> the served NetworkPolicy labelled as this policy's, in name order. */
  ownFences: ReadonlyMap<string, V1NetworkPolicy>;
  /** NetworkPolicy name -> its intent, for the Deployments fenced this round. */
  fences: Map<string, Intent<NetworkPolicyApply>>;
  /** NetworkPolicies left as they are (an Error target, an invalid policy): neither applied nor deleted. */
  keptFences: Set<string>;
}

/** A Deployment this policy holds and applies its sidecar to: what its Services may be pointed at. */
interface Held {
  labels: Record<string, string>;
  port: number;
  portNames: string[];
  /** Every pod runs the template with the sidecar: a Service may be pointed at it. */
  rolledOut: boolean;
}

/**
 * What a policy that is gone left behind when its finalizer never ran (removed by hand, or the policy
 * force-deleted): every Service and Deployment still marked as its own is given back, as a deletion
 * would. Without this its sidecars would keep mounting a ConfigMap that garbage collection removed, and
 * new pods could not start.
 */
export function releaseOrphans(
  namespace: string,
  name: string,
  deployments: readonly V1Deployment[],
  services: readonly V1Service[],
  networkPolicies: readonly V1NetworkPolicy[] = [],
): Pick<ReconcileOutput, "deployments" | "services" | "events" | "deleteNetworkPolicies"> {
  const ctx: ReleaseContext = { name, namespace, events: [] };
  // Their ownerReference lets garbage collection remove them too; deleting them first frees the app
  // port as soon as the Services go back to it.
  const deleteNetworkPolicies = [...fencesLabelledAs(name, networkPolicies).keys()];
  return { ...releaseMarked(ctx, deployments, services), events: ctx.events, deleteNetworkPolicies };
}

/** Every Service and Deployment marked as this policy's, given back (a deletion, or orphans). */
function releaseMarked(
  ctx: ReleaseContext,
  deployments: readonly V1Deployment[],
  services: readonly V1Service[],
): Pick<ReconcileOutput, "deployments" | "services"> {
  return {
    services: byName(services.filter((s) => carriedPolicy(s) === ctx.name)).map((s) =>
      restoreService(ctx, s),
    ),
    deployments: byName(deployments.filter((d) => carriedPolicy(d) === ctx.name)).map((d) =>
      releaseDeployment(ctx, d),
    ),
  };
}

function reconcileDeployment(
  ctx: Context,
  d: V1Deployment,
  claims: ClaimLookup,
  valid: AccessPolicyDocument | undefined,
  held: Held[],
  intents: Intent<DeploymentApply>[],
): Target | undefined {
  const dName = d.metadata?.name ?? "";
  const ours = carriedPolicy(d) === ctx.name;
  const selected = matchesSelector(ctx.input.policy.spec?.selector, podLabels(d));
  if (!selected) {
    // An invalid policy leaves workloads alone: the sidecars keep serving its last good version.
    if (ours && valid !== undefined) intents.push(releaseDeployment(ctx, d));
    return undefined;
  }
  const claimant = claims(d);
  if (claimant !== undefined && claimant.metadata.name !== ctx.name) {
    const message = `selected by the older AccessPolicy ${JSON.stringify(claimant.metadata.name)}, which keeps it`;
    return noteTarget(ctx, d, { kind: "Deployment", name: dName, state: "Conflict", message }, "Conflict");
  }
  if (valid === undefined) {
    return ours
      ? {
          kind: "Deployment",
          name: dName,
          state: "Protected",
          message: "keeps the last accepted version of the policy",
        }
      : { kind: "Deployment", name: dName, state: "Pending", message: "the policy is not accepted" };
  }

  const pod = d.spec?.template?.spec;
  const upstream = resolveUpstreamPort(pod, valid.spec.upstream.port);
  const problems = upstream.ok ? portClashes(pod, valid.spec) : [upstream.message];
  if (!upstream.ok || problems.length > 0) {
    // A Deployment that keeps its sidecar keeps its fence too.
    if (ours) ctx.keptFences.add(networkPolicyName(dName));
    const message = `nothing applied: ${problems.join("; ")}`;
    return noteTarget(ctx, d, { kind: "Deployment", name: dName, state: "Error", message }, "Invalid");
  }

  const container = sidecarContainer(
    valid.spec,
    {
      upstreamPort: upstream.port,
      drainSeconds: drainSeconds(pod?.terminationGracePeriodSeconds, ctx.config.drainMarginSeconds),
      native: ctx.native,
    },
    ctx.config,
  );
  const volume = policyVolume(ctx.cmName);
  const adminPort = valid.spec.sidecar.adminPort;
  const hooked = ctx.native ? preStopHookTargets(pod, upstream.port, adminPort) : [];
  const hash = sidecarHash(container, volume, hooked);
  const body: DeploymentApply = {
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: { name: dName, namespace: ctx.namespace, annotations: { [POLICY_ANNOTATION]: ctx.name } },
    spec: {
      template: {
        metadata: { annotations: { [SIDECAR_HASH_ANNOTATION]: hash } },
        spec: {
          ...(ctx.native
            ? {
                initContainers: [container],
                ...(hooked.length > 0
                  ? {
                      containers: hooked.map((name) => ({
                        name,
                        lifecycle: { preStop: preStopHook(adminPort) },
                      })),
                    }
                  : {}),
              }
            : { containers: [container] }),
          volumes: [volume],
        },
      },
    },
  };
  const upToDate = carriesSidecar(ctx, d, hash, container);
  intents.push({ name: dName, body, release: false, upToDate });
  const rollout = upToDate ? rolloutProgress(d) : { done: false, message: "the sidecar is being added" };
  held.push({
    labels: podLabels(d) ?? {},
    port: upstream.port,
    portNames: upstream.names,
    rolledOut: rollout.done,
  });
  const fence = fenceIntent(ctx, d, valid.spec, rollout.done);
  if (fence !== undefined) ctx.fences.set(fence.name, fence);
  if (!upToDate) {
    ctx.events.push(
      event(
        ctx,
        d,
        "Normal",
        "Protected",
        `${ours ? "sidecar updated" : "sidecar added"} by AccessPolicy ${ctx.name}`,
      ),
    );
  }
  const failure = ctx.input.failedDeployments?.[dName];
  if (failure !== undefined)
    return { kind: "Deployment", name: dName, state: "Error", message: `apply failed: ${failure}` };
  if (!rollout.done) {
    return {
      kind: "Deployment",
      name: dName,
      state: "Pending",
      message: `sidecar ${hash}: ${rollout.message}`,
    };
  }
  return { kind: "Deployment", name: dName, state: "Protected", message: `sidecar ${hash}` };
}

/**
 * Whether every pod of the Deployment runs its current template, as `kubectl rollout status` decides
 * it from the Deployment controller's status (no pods are read).
 */
export function rolloutProgress(d: V1Deployment): { done: boolean; message: string } {
  const wanted = d.spec?.replicas ?? 1;
  const status = d.status ?? {};
  if ((status.observedGeneration ?? 0) < (d.metadata?.generation ?? 0)) {
    return { done: false, message: "rolling out: the Deployment controller has not seen the change yet" };
  }
  const updated = status.updatedReplicas ?? 0;
  if (updated < wanted) return { done: false, message: `rolling out: ${updated} of ${wanted} pods updated` };
  const old = (status.replicas ?? 0) - updated;
  if (old > 0) return { done: false, message: `rolling out: ${old} old pods still running` };
  const available = status.availableReplicas ?? 0;
  if (available < updated) {
    return { done: false, message: `rolling out: ${available} of ${updated} updated pods available` };
  }
  return { done: true, message: "rolled out" };
}

function releaseDeployment(ctx: ReleaseContext, d: V1Deployment): Intent<DeploymentApply> {
  const dName = d.metadata?.name ?? "";
  ctx.events.push(
    event(ctx, d, "Normal", "Removed", `sidecar removed: AccessPolicy ${ctx.name} no longer applies`),
  );
  return {
    name: dName,
    // Applying nothing under our field manager removes every field only we own.
    body: { apiVersion: "apps/v1", kind: "Deployment", metadata: { name: dName, namespace: ctx.namespace } },
    release: true,
    upToDate: false,
  };
}

/**
 * Our marks on the observed Deployment: annotation, hash, the sidecar in the right list and as we
 * wrote it, the volume. The hash alone would miss a hand edit of the sidecar (another image, other
 * args): for a security component that is drift to undo, not to keep.
 */
function carriesSidecar(ctx: Context, d: V1Deployment, hash: string, container: V1Container): boolean {
  const pod = d.spec?.template?.spec;
  const find = (list: readonly V1Container[] | undefined) =>
    (list ?? []).find((c) => c.name === SIDECAR_NAME);
  const live = find(ctx.native ? pod?.initContainers : pod?.containers);
  return (
    carriedPolicy(d) === ctx.name &&
    d.spec?.template?.metadata?.annotations?.[SIDECAR_HASH_ANNOTATION] === hash &&
    live !== undefined &&
    sidecarUnchanged(container, live) &&
    find(ctx.native ? pod?.containers : pod?.initContainers) === undefined &&
    (pod?.volumes ?? []).some((v) => v.name === POLICY_VOLUME && v.configMap?.name === ctx.cmName)
  );
}

/**
 * The fields of the sidecar that decide what it runs and what it may do, as the API server serves
 * them: compared as written (the server adds defaults elsewhere, e.g. probe thresholds, and may
 * rewrite resource quantities, so those are left to the hash).
 */
const COMPARED_SIDECAR_FIELDS = [
  "image",
  "command",
  "args",
  "env",
  "ports",
  "volumeMounts",
  "securityContext",
  "restartPolicy",
] as const;

function sidecarUnchanged(written: V1Container, live: V1Container): boolean {
  return COMPARED_SIDECAR_FIELDS.every(
    (field) => canonicalJson(written[field]) === canonicalJson(live[field]),
  );
}

/** A target whose state deserves a Warning, emitted only when it differs from the served status. */
function noteTarget(ctx: Context, d: V1Deployment, target: Target, reason: "Conflict" | "Invalid"): Target {
  const before = ctx.input.policy.status?.targets?.find(
    (t) => t.kind === target.kind && t.name === target.name,
  );
  if (before?.state !== target.state || before.message !== target.message) {
    ctx.events.push({
      ...event(ctx, d, "Warning", reason, `Deployment ${target.name}: ${target.message}`),
      regarding: policyReference(ctx),
    });
  }
  return target;
}

// --- the app's own port -----------------------------------------------------------------------

/**
 * The NetworkPolicies labelled as policy `name`'s, by name, in name order. The reconciler hands over
 * only those already; checked again here, once per reconcile, because what is listed gets deleted and
 * another policy's fence must never be (a test holds desired() to that).
 */
function fencesLabelledAs(
  name: string,
  networkPolicies: readonly V1NetworkPolicy[],
): Map<string, V1NetworkPolicy> {
  const labelled = networkPolicies.filter((n) => n.metadata?.labels?.[POLICY_LABEL] === name);
  return new Map(byName(labelled).map((n) => [n.metadata?.name ?? "", n]));
}

/**
 * The NetworkPolicy that admits ingress to a held Deployment's pods only on the sidecar's ports
 * (spec.networkPolicy.enabled). It goes up once every pod runs the sidecar (before, the Service still
 * sends traffic to the app's port); while a later rollout runs, the ports it admits now stay admitted
 * too, so pods still on the old template keep their traffic.
 */
function fenceIntent(
  ctx: Context,
  d: V1Deployment,
  spec: AccessPolicyDocument["spec"],
  rolledOut: boolean,
): Intent<NetworkPolicyApply> | undefined {
  const settings = spec.networkPolicy;
  const selector = d.spec?.selector;
  if (settings?.enabled !== true || selector === undefined) return undefined;
  const name = networkPolicyName(d.metadata?.name ?? "");
  const seen = ctx.ownFences.get(name);
  if (seen === undefined && !rolledOut) return undefined;
  const ports = new Set([spec.listener.port, ...(settings.allowAdminPort ? [spec.sidecar.adminPort] : [])]);
  if (!rolledOut) {
    for (const rule of seen?.spec?.ingress ?? [])
      for (const p of rule.ports ?? []) if (typeof p.port === "number") ports.add(p.port);
  }
  const podSelector: V1LabelSelector = {};
  if (selector.matchLabels !== undefined) podSelector.matchLabels = selector.matchLabels;
  if (selector.matchExpressions !== undefined) podSelector.matchExpressions = selector.matchExpressions;
  const body: NetworkPolicyApply = {
    apiVersion: "networking.k8s.io/v1",
    kind: "NetworkPolicy",
    metadata: ownedMetadata(ctx, name),
    spec: {
      podSelector,
      policyTypes: ["Ingress"],
      ingress: [
        { ports: [...ports].sort((a, b) => a - b).map((port) => ({ protocol: "TCP" as const, port })) },
      ],
    },
  };
  const upToDate =
    seen !== undefined && canonicalJson(seen.spec) === canonicalJson(body.spec) && ownedUpToDate(seen, body);
  return { name, body, release: false, upToDate };
}

/**
 * The target with the app ports its pod template shows bound beyond loopback, each marked `fenced`
 * when this policy's NetworkPolicy covers the pods. Conflict targets are the older policy's to report.
 * A Warning on the Deployment when that finding changes and some port is open.
 */
function withExposure(ctx: Context, d: V1Deployment, target: Target): Target {
  if (target.state === "Conflict") return target;
  const spec = ctx.input.policy.spec;
  const sidecarPorts = [spec?.listener?.port, spec?.sidecar?.adminPort].filter(
    (p): p is number => typeof p === "number",
  );
  const found = exposedAppPorts(d.spec?.template?.spec, sidecarPorts);
  if (found.length === 0) return target;
  const name = networkPolicyName(target.name);
  const fenced = ctx.fences.has(name) || (ctx.keptFences.has(name) && ctx.ownFences.has(name));
  const exposedPorts: ExposedPort[] = found.map((f) => (fenced ? { ...f, fenced: true } : f));
  const before = ctx.input.policy.status?.targets?.find(
    (t) => t.kind === target.kind && t.name === target.name,
  );
  if (!fenced && canonicalJson(before?.exposedPorts) !== canonicalJson(exposedPorts)) {
    ctx.events.push(
      event(
        ctx,
        d,
        "Warning",
        "AppPortExposed",
        clip(`${exposureList([{ ...target, exposedPorts }])}: ${REMEDY}`),
      ),
    );
  }
  return { ...target, exposedPorts };
}

const REMEDY =
  "reachable on the pod IP without passing the sidecar. Bind the app to 127.0.0.1 (uvicorn --host 127.0.0.1, gunicorn -b 127.0.0.1:8000, fastapi run --host 127.0.0.1) and leave its probes to the sidecar's admin port (/readyz checks the app), or set spec.networkPolicy.enabled: true";

function exposureList(targets: readonly Target[]): string {
  return targets
    .flatMap((t) =>
      (t.exposedPorts ?? []).map(
        (p) =>
          `Deployment ${t.name}, container ${JSON.stringify(p.container)}${p.port === undefined ? "" : `, port ${p.port}`}: ${p.evidence}`,
      ),
    )
    .join("; ");
}

/** AppPortExposed: True while some app port is bound beyond loopback and not fenced. */
function exposureVerdict(targets: readonly Target[]): ConditionVerdict {
  const open = targets
    .map((t) => ({ ...t, exposedPorts: (t.exposedPorts ?? []).filter((p) => !p.fenced) }))
    .filter((t) => t.exposedPorts.length > 0);
  if (open.length > 0) {
    return {
      type: "AppPortExposed",
      status: "True",
      reason: "ListensBeyondLoopback",
      message: clip(`${exposureList(open)}: ${REMEDY}`),
    };
  }
  const fenced = targets.filter((t) => (t.exposedPorts ?? []).length > 0);
  if (fenced.length > 0) {
    return {
      type: "AppPortExposed",
      status: "False",
      reason: "FencedByNetworkPolicy",
      message: clip(
        `${exposureList(fenced)}: fenced by the NetworkPolicies ${fenced.map((t) => networkPolicyName(t.name)).join(", ")}, which admit ingress to these pods only on the sidecar's ports (where the cluster's network plugin enforces NetworkPolicy)`,
      ),
    };
  }
  return {
    type: "AppPortExposed",
    status: "False",
    reason: "NotExposed",
    message:
      "no target's command, args, env or kubelet probes show an app port bound beyond loopback (a bind set in a config file or in code is not seen)",
  };
}

// --- conflicts --------------------------------------------------------------------------------

/** The policy that keeps a Deployment, if any. */
type ClaimLookup = (d: V1Deployment) => AccessPolicy | undefined;

/**
 * Of the policies not being deleted whose selector matches a Deployment's pod template, the oldest
 * (creationTimestamp, then name) keeps it. Valid or not: an invalid older policy still holds its
 * Deployments, with its last good sidecar. Computed on demand: with hundreds of policies and
 * thousands of Deployments in a namespace, only the few this policy looks at are worth the scan.
 */
function claimLookup(input: ReconcileInput): ClaimLookup {
  const self = input.policy;
  const others = input.policiesInNamespace.filter(
    (p) => p.metadata.name !== self.metadata.name && !p.metadata.deletionTimestamp,
  );
  const candidates = oldestFirst([self, ...others]);
  const known = new Map<V1Deployment, AccessPolicy | undefined>();
  return (d) => {
    if (!known.has(d)) {
      const labels = podLabels(d);
      known.set(
        d,
        candidates.find((p) => matchesSelector(p.spec?.selector, labels)),
      );
    }
    return known.get(d);
  };
}

/** Older first: creationTimestamp (missing or unreadable counts as newest), then name. */
export function olderFirst(a: AccessPolicy, b: AccessPolicy): number {
  return compareAge(age(a), age(b));
}

/** The same order, each timestamp parsed once. */
export function oldestFirst(policies: readonly AccessPolicy[]): AccessPolicy[] {
  return policies
    .map((policy) => ({ policy, age: age(policy) }))
    .sort((a, b) => compareAge(a.age, b.age))
    .map((entry) => entry.policy);
}

type Age = { time: number; name: string };

/** Keyed by the served object: parsed once per version of a policy, not once per reconcile. */
const ages = new WeakMap<AccessPolicy, Age>();

function age(p: AccessPolicy): Age {
  let known = ages.get(p);
  if (known === undefined || known.name !== (p.metadata.name ?? "")) {
    const time = Date.parse(String(p.metadata.creationTimestamp ?? ""));
    known = { time: Number.isNaN(time) ? Number.POSITIVE_INFINITY : time, name: p.metadata.name ?? "" };
    ages.set(p, known);
  }
  return known;
}

function compareAge(a: Age, b: Age): number {
  if (a.time !== b.time) return a.time < b.time ? -1 : 1;
  return compare(a.name, b.name);
}

/**
 * The policies a Deployment event concerns: those whose selector matches its pod template and the one
 * its annotation names. The edge enqueues these (and, when a policy changes, its namespace's others).
 */
export function policiesForDeployment(deployment: V1Deployment, policies: readonly AccessPolicy[]): string[] {
  const names = new Set<string>();
  const carried = carriedPolicy(deployment);
  if (carried !== undefined) names.add(carried);
  for (const p of policies) {
    if (p.metadata.name && matchesSelector(p.spec?.selector, podLabels(deployment)))
      names.add(p.metadata.name);
  }
  return [...names].sort(compare);
}

// --- Services ---------------------------------------------------------------------------------

/**
 * Retargets the ports of a Service that send traffic to the upstream port of pods this policy holds.
 * Once a port is recorded in the annotation the policy keeps its targetPort in every intent (the
 * listener, or the original when the port no longer qualifies), because dropping a field we own
 * would let the API server default it to `port`.
 */
function reconcileService(
  ctx: Context,
  s: V1Service,
  held: readonly Held[],
  claims: ClaimLookup,
  deployments: readonly V1Deployment[],
): Intent<ServiceApply> | undefined {
  const carried = carriedPolicy(s);
  const ours = carried === ctx.name;
  const selector = s.spec?.selector;
  const mine = held.filter((h) => matchesServiceSelector(selector, h.labels));
  if (mine.length === 0) return ours ? restoreService(ctx, s) : undefined;
  // A Service over several policies' pods is handled by the oldest of them, so two never take turns.
  const keepers = deployments
    .filter((d) => matchesServiceSelector(selector, podLabels(d)))
    .flatMap((d) => {
      const claimant = claims(d);
      return claimant === undefined ? [] : [claimant];
    })
    .sort(olderFirst);
  const keeper = keepers[0];
  if (keeper !== undefined && keeper.metadata.name !== ctx.name) return undefined;
  // Pointed at the sidecar only once every pod behind it has one: a named targetPort that a pod does
  // not declare takes that pod out of the Service, and during the rollout that would be most of them.
  // A Service another policy pointed there already stays (its pods declare the port either way).
  if (carried === undefined && mine.some((h) => !h.rolledOut)) return undefined;
  const numbers = new Set(mine.map((h) => h.port));
  const names = new Set(mine.flatMap((h) => h.portNames));
  const qualifies = (target: number | string) =>
    typeof target === "number" ? numbers.has(target) : names.has(target);

  // Another policy's record is taken over as is: it handed these pods to us.
  const recorded = carried !== undefined ? readRecord(s) : {};
  const record: Record<string, number | string> = {};
  const ports: ServicePortApply[] = [];
  let upToDate = ours;
  for (const p of servicePorts(s)) {
    const key = portKey(p);
    const current = p.targetPort ?? p.port;
    const original =
      current === LISTENER_PORT_NAME && key in recorded ? (recorded[key] as number | string) : current;
    const known = key in recorded;
    if (qualifies(original)) {
      record[key] = original;
      ports.push({ port: p.port, protocol: p.protocol ?? "TCP", targetPort: LISTENER_PORT_NAME });
      if (current !== LISTENER_PORT_NAME) upToDate = false;
    } else if (known) {
      record[key] = original;
      ports.push({ port: p.port, protocol: p.protocol ?? "TCP", targetPort: original });
      if (current !== original) upToDate = false;
    }
  }
  if (!ports.some((p) => p.targetPort === LISTENER_PORT_NAME))
    return ours ? restoreService(ctx, s) : undefined;
  const recordText = canonicalJson(record);
  if (s.metadata?.annotations?.[ORIGINAL_TARGET_PORTS_ANNOTATION] !== recordText) upToDate = false;
  return {
    name: s.metadata?.name ?? "",
    body: {
      apiVersion: "v1",
      kind: "Service",
      metadata: {
        name: s.metadata?.name ?? "",
        namespace: ctx.namespace,
        annotations: { [ORIGINAL_TARGET_PORTS_ANNOTATION]: recordText, [POLICY_ANNOTATION]: ctx.name },
      },
      spec: { ports },
    },
    release: false,
    upToDate,
  };
}

/** Every recorded port back to its original targetPort; our annotations go (not sent). */
function restoreService(ctx: ReleaseContext, s: V1Service): Intent<ServiceApply> {
  const recorded = readRecord(s);
  const ports = servicePorts(s)
    .filter((p) => portKey(p) in recorded)
    .map((p) => ({
      port: p.port,
      protocol: p.protocol ?? "TCP",
      targetPort: recorded[portKey(p)] as number | string,
    }));
  const sName = s.metadata?.name ?? "";
  return {
    name: sName,
    body: {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: sName, namespace: ctx.namespace },
      spec: { ports },
    },
    release: true,
    upToDate: false,
  };
}

function servicePorts(s: V1Service) {
  return [...(s.spec?.ports ?? [])].sort(
    (a, b) => a.port - b.port || compare(a.protocol ?? "TCP", b.protocol ?? "TCP"),
  );
}

const portKey = (p: { port: number; protocol?: string }) => `${p.port}/${p.protocol ?? "TCP"}`;

/** The recorded originals; anything unreadable counts as nothing recorded. */
function readRecord(s: V1Service): Record<string, number | string> {
  const text = s.metadata?.annotations?.[ORIGINAL_TARGET_PORTS_ANNOTATION];
  if (text === undefined) return {};
  try {
    const parsed: unknown = JSON.parse(text);
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return {};
    return Object.fromEntries(
      Object.entries(parsed).filter(
        (e): e is [string, number | string] =>
          /^\d+\/[A-Z]+$/.test(e[0]) && (typeof e[1] === "string" || Number.isInteger(e[1])),
      ),
    );
  } catch {
    return {};
  }
}

// --- ConfigMap --------------------------------------------------------------------------------

function configMapIntent(ctx: Context, valid: AccessPolicyDocument): Intent<ConfigMapApply> {
  const { policy } = ctx.input;
  const document = {
    apiVersion: API_VERSION,
    kind: KIND,
    metadata: { name: ctx.name, namespace: ctx.namespace, generation: policy.metadata.generation },
    spec: sortKeys(valid.spec),
  };
  if (document.metadata.generation === undefined) delete document.metadata.generation;
  const text = stringify(document, { lineWidth: 0 });
  const body: ConfigMapApply = {
    apiVersion: "v1",
    kind: "ConfigMap",
    metadata: ownedMetadata(ctx, ctx.cmName),
    data: { [POLICY_KEY]: text },
  };
  const seen = ctx.input.configMap;
  const upToDate = seen !== undefined && seen.data?.[POLICY_KEY] === text && ownedUpToDate(seen, body);
  return { name: ctx.cmName, body, release: false, upToDate };
}

// --- objects the policy owns (its ConfigMap, its NetworkPolicies) ------------------------------

type OwnedMetadata = ConfigMapApply["metadata"];

/** Name, namespace, this policy's labels and, once it has a uid, the policy as controller owner (GC). */
function ownedMetadata(ctx: Context, name: string): OwnedMetadata {
  const metadata: OwnedMetadata = {
    name,
    namespace: ctx.namespace,
    labels: { [MANAGED_BY_LABEL]: MANAGED_BY, [POLICY_LABEL]: ctx.name },
  };
  const uid = ctx.input.policy.metadata.uid;
  if (uid)
    metadata.ownerReferences = [
      { apiVersion: API_VERSION, kind: KIND, name: ctx.name, uid, controller: true },
    ];
  return metadata;
}

/** The served object already carries the body's labels and its controller owner reference. */
function ownedUpToDate(seen: { metadata?: V1ObjectMeta }, body: { metadata: OwnedMetadata }): boolean {
  const { labels, ownerReferences = [] } = body.metadata;
  return (
    Object.entries(labels).every(([k, v]) => seen.metadata?.labels?.[k] === v) &&
    ownerReferences.every((owner) =>
      (seen.metadata?.ownerReferences ?? []).some((r) => r.uid === owner.uid && r.controller),
    )
  );
}

function sortKeys<T>(value: T): T {
  return JSON.parse(canonicalJson(value)) as T;
}

// --- conditions -------------------------------------------------------------------------------

const MAX_MESSAGE = 32_000;

function acceptedVerdict(problems: readonly Problem[], valid: boolean): ConditionVerdict {
  const errors = problems.filter((p) => p.severity === "error").map((p) => `${p.path}: ${p.message}`);
  const warnings = problems.filter((p) => p.severity === "warning").map(formatProblem);
  if (!valid) {
    return { type: "Accepted", status: "False", reason: "Invalid", message: clip(errors.join("; ")) };
  }
  const message = warnings.length > 0 ? `the policy is valid; ${warnings.join("; ")}` : "the policy is valid";
  return { type: "Accepted", status: "True", reason: "Valid", message: clip(message) };
}

function readyVerdict(valid: boolean, targets: readonly Target[], namespace: string): ConditionVerdict {
  if (!valid) {
    return {
      type: "Ready",
      status: "False",
      reason: "Invalid",
      message: "the policy is not accepted; protected Deployments keep its last accepted version",
    };
  }
  if (targets.length === 0) {
    return {
      type: "Ready",
      status: "False",
      reason: "NoTargets",
      message: `the selector matches no Deployment in namespace ${namespace}`,
    };
  }
  const notProtected = targets.filter((t) => t.state !== "Protected");
  const counted = `${targets.length - notProtected.length} of ${targets.length} Deployments protected`;
  if (notProtected.length === 0)
    return { type: "Ready", status: "True", reason: "Protected", message: counted };
  return {
    type: "Ready",
    status: "False",
    reason: "TargetsNotProtected",
    message: clip(
      `${counted}; ${notProtected.map((t) => `${t.name}: ${t.state}: ${t.message ?? ""}`).join("; ")}`,
    ),
  };
}

/** One Warning per new verdict of an invalid policy, not one per reconcile. */
function warnOnce(ctx: Context, served: AccessPolicyStatus | undefined, accepted: ConditionVerdict): void {
  const before: Condition | undefined = findCondition(served?.conditions, "Accepted");
  if (before?.status === accepted.status && before.message === accepted.message) return;
  ctx.events.push({
    type: "Warning",
    reason: "Invalid",
    message: clip(`AccessPolicy ${ctx.name} is not accepted: ${accepted.message}`),
    regarding: policyReference(ctx),
  });
}

const clip = (s: string) => (s.length > MAX_MESSAGE ? `${s.slice(0, MAX_MESSAGE - 3)}...` : s);

// --- small pieces -----------------------------------------------------------------------------

function finalizerAction(policy: AccessPolicy, deleting: boolean): ReconcileOutput["finalizer"] {
  const has = (policy.metadata.finalizers ?? []).includes(FINALIZER);
  if (deleting) return has ? "remove" : "none";
  return has ? "none" : "add";
}

/** The AccessPolicy a Deployment or Service is marked as protected by, if any. */
export function carriedPolicy(o: V1Deployment | V1Service): string | undefined {
  return o.metadata?.annotations?.[POLICY_ANNOTATION];
}

function podLabels(d: V1Deployment): Record<string, string> | undefined {
  return d.spec?.template?.metadata?.labels;
}

function byName<T extends { metadata?: { name?: string } }>(objects: readonly T[]): T[] {
  return objects
    .filter((o) => o.metadata?.name)
    .sort((a, b) => compare(a.metadata?.name ?? "", b.metadata?.name ?? ""));
}

function event(
  ctx: ReleaseContext,
  d: V1Deployment,
  type: PolicyEvent["type"],
  reason: PolicyEvent["reason"],
  message: string,
): PolicyEvent {
  const regarding: PolicyEvent["regarding"] = {
    apiVersion: "apps/v1",
    kind: "Deployment",
    name: d.metadata?.name ?? "",
    namespace: ctx.namespace,
  };
  if (d.metadata?.uid) regarding.uid = d.metadata.uid;
  return { type, reason, message, regarding };
}

function policyReference(ctx: Context): PolicyEvent["regarding"] {
  const regarding: PolicyEvent["regarding"] = {
    apiVersion: API_VERSION,
    kind: KIND,
    name: ctx.name,
    namespace: ctx.namespace,
  };
  if (ctx.input.policy.metadata.uid) regarding.uid = ctx.input.policy.metadata.uid;
  return regarding;
}
