// One reconcile of one AccessPolicy: read the namespace from the informer caches, ask the pure core
// what it should look like, and write the difference in the order the core's contract gives
// (operator/README.md). Also maps watch events to the keys of the policies they concern.
import type { V1ConfigMap, V1Deployment, V1NetworkPolicy, V1Service } from "@kubernetes/client-node";
import type { AccessPolicy } from "../policy/schema.ts";
import type { Applier } from "./apply.ts";
import { deepEqual } from "./apply.ts";
import { kubeTime } from "./conditions.ts";
import { configMapName, FINALIZER, type OperatorConfig, POLICY_LABEL } from "./config.ts";
import {
  carriedPolicy,
  desired,
  policiesForDeployment,
  type ReconcileInput,
  type ReconcileOutput,
  releaseOrphans,
} from "./desired.ts";
import { isApiError, type KubeClient, type KubeObject, resourcePath } from "./kube-client.ts";
import type { ServerVersion } from "./sidecar.ts";
import type { Informer, InformerEvent } from "./watch.ts";

export interface Caches {
  policies: Informer<KubeObject>;
  deployments: Informer<KubeObject>;
  services: Informer<KubeObject>;
  configMaps: Informer<KubeObject>;
  /** The operator's own (label app.kubernetes.io/managed-by=portcullis), like configMaps. */
  networkPolicies: Informer<KubeObject>;
}

export interface ReconcileLog {
  info(fields: Record<string, unknown>, message: string): void;
  warn(fields: Record<string, unknown>, message: string): void;
}

export interface ReconcilerOptions {
  client: KubeClient;
  caches: Caches;
  applier: Applier;
  config: OperatorConfig;
  serverVersion: ServerVersion;
  log?: ReconcileLog;
  now?: () => Date;
}

/** `namespace/name`, the work queue's key for a policy. */
export const policyKey = (namespace: string, name: string): string => `${namespace}/${name}`;

export function splitKey(key: string): { namespace: string; name: string } {
  const slash = key.indexOf("/");
  return { namespace: key.slice(0, slash), name: key.slice(slash + 1) };
}

/** A failed write to one object: the reconcile goes on with the others, then fails for a retry. */
class PartialFailure extends Error {
  constructor(failures: readonly string[]) {
    super(failures.join("; "));
    this.name = "PartialFailure";
  }
}

export class Reconciler {
  readonly #client: KubeClient;
  readonly #caches: Caches;
  readonly #applier: Applier;
  readonly #config: OperatorConfig;
  readonly #serverVersion: ServerVersion;
  readonly #log: ReconcileLog | undefined;
  readonly #now: () => Date;
  /** Policies whose release this replica completed: their deletion needs no orphan pass. */
  readonly #releasedByFinalizer = new Set<string>();

  constructor(options: ReconcilerOptions) {
    this.#client = options.client;
    this.#caches = options.caches;
    this.#applier = options.applier;
    this.#config = options.config;
    this.#serverVersion = options.serverVersion;
    this.#log = options.log;
    this.#now = options.now ?? (() => new Date());
  }

  async reconcile(key: string): Promise<void> {
    const { namespace, name } = splitKey(key);
    const policy = this.#caches.policies.get(namespace, name) as AccessPolicy | undefined;
    if (policy === undefined) {
      // Gone. After its finalizer ran nothing is marked as its own (the cache may not show that yet:
      // releasing again would only repeat the Removed events); if the finalizer was removed by hand,
      // what is still marked is given back now.
      if (this.#releasedByFinalizer.delete(key)) return;
      const orphans = releaseOrphans(
        namespace,
        name,
        this.#caches.deployments.list(namespace) as V1Deployment[],
        this.#caches.services.list(namespace) as V1Service[],
        this.#ownNetworkPolicies(namespace, name),
      );
      await this.#release({ ...orphans, finalizer: "none" }, namespace);
      return;
    }

    const input: ReconcileInput = {
      policy,
      policiesInNamespace: this.#caches.policies.list(namespace) as unknown as AccessPolicy[],
      deployments: this.#caches.deployments.list(namespace) as V1Deployment[],
      services: this.#caches.services.list(namespace) as V1Service[],
      configMap: this.#caches.configMaps.get(namespace, configMapName(name)) as V1ConfigMap | undefined,
      serverVersion: this.#serverVersion,
      now: kubeTime(this.#now()),
      networkPolicies: this.#ownNetworkPolicies(namespace, name),
    };
    const out = desired(input, this.#config);
    const policyObject = policy as unknown as KubeObject;

    // Before anything changes: the way back must exist before the way there.
    if (out.finalizer === "add") await this.#applier.setFinalizer(policyObject, FINALIZER, true);

    if (policy.metadata.deletionTimestamp) {
      await this.#release(out, namespace, policyObject);
      return;
    }

    const failures: string[] = [];
    // Fences come down first: loosening never cuts traffic, and a restored Service may need the app port.
    await this.#deleteNetworkPolicies(namespace, out.deleteNetworkPolicies);
    if (out.configMap && !out.configMap.upToDate) {
      const current = this.#caches.configMaps.get(namespace, out.configMap.name);
      await this.#applier.apply(out.configMap.body, current, true);
    }

    const failedDeployments: Record<string, string> = {};
    for (const intent of out.deployments) {
      const current = this.#caches.deployments.get(namespace, intent.name);
      if (intent.upToDate || current === undefined) continue;
      try {
        await this.#applier.apply(intent.body, current, true);
      } catch (error) {
        const message = errorMessage(error);
        failedDeployments[intent.name] = message;
        failures.push(`Deployment ${intent.name}: ${message}`);
      }
    }
    const deploymentsFailed = Object.keys(failedDeployments).length > 0;

    for (const intent of out.services) {
      const current = this.#caches.services.get(namespace, intent.name);
      if (intent.upToDate || current === undefined) continue;
      // A Service points at the sidecar only once every Deployment has it; restores are always safe.
      if (deploymentsFailed && !intent.release) continue;
      try {
        await this.#applier.apply(intent.body, current, true);
      } catch (error) {
        failures.push(`Service ${intent.name}: ${errorMessage(error)}`);
      }
    }

    // Fences last: each goes up only once the Services point at the sidecar of every pod it covers.
    for (const intent of out.networkPolicies) {
      if (intent.upToDate || deploymentsFailed) continue;
      try {
        await this.#applier.apply(
          intent.body,
          this.#caches.networkPolicies.get(namespace, intent.name),
          true,
        );
      } catch (error) {
        failures.push(`NetworkPolicy ${intent.name}: ${errorMessage(error)}`);
      }
    }

    const final = deploymentsFailed ? desired({ ...input, failedDeployments }, this.#config) : out;
    await this.#recordEvents(out);
    if (!final.statusUpToDate && !deepEqual(policy.status ?? {}, final.status)) {
      try {
        await this.#applier.applyStatus(policyObject, final.status);
      } catch (error) {
        // Deleted meanwhile: its deletion event brings the next reconcile.
        if (!isApiError(error, 404)) throw error;
      }
    }
    if (failures.length > 0) throw new PartialFailure(failures);
  }

  /**
   * Deleting (or the policy gone): Services back first (traffic never meets a missing sidecar), then
   * Deployments, then the ConfigMap and the policy's finalizer.
   */
  async #release(
    out: Pick<
      ReconcileOutput,
      "deployments" | "services" | "events" | "finalizer" | "deleteConfigMap" | "deleteNetworkPolicies"
    >,
    namespace: string,
    policy?: KubeObject,
  ): Promise<void> {
    await this.#deleteNetworkPolicies(namespace, out.deleteNetworkPolicies);
    for (const intent of out.services) {
      if (intent.upToDate) continue;
      await this.#applier.apply(intent.body, this.#caches.services.get(namespace, intent.name), true);
    }
    for (const intent of out.deployments) {
      if (intent.upToDate) continue;
      await this.#applier.apply(intent.body, this.#caches.deployments.get(namespace, intent.name), true);
    }
    if (out.deleteConfigMap !== undefined) {
      try {
        await this.#client.request(
          "DELETE",
          resourcePath("v1", "configmaps", namespace, out.deleteConfigMap),
        );
      } catch (error) {
        if (!isApiError(error, 404)) throw error;
      }
    }
    await this.#recordEvents(out);
    if (out.finalizer === "remove" && policy !== undefined) {
      try {
        await this.#applier.setFinalizer(policy, FINALIZER, false);
        // The queue runs one reconcile per key at a time: the deletion's comes after this one.
        this.#releasedByFinalizer.add(policyKey(namespace, policy.metadata?.name ?? ""));
      } catch (error) {
        if (!isApiError(error, 404)) throw error;
      }
    }
  }

  /** The NetworkPolicies in the cache labelled as this policy's. */
  #ownNetworkPolicies(namespace: string, name: string): V1NetworkPolicy[] {
    return (this.#caches.networkPolicies.list(namespace) as V1NetworkPolicy[]).filter(
      (n) => n.metadata?.labels?.[POLICY_LABEL] === name,
    );
  }

  async #deleteNetworkPolicies(namespace: string, names: readonly string[]): Promise<void> {
    for (const name of names) {
      try {
        await this.#client.request(
          "DELETE",
          resourcePath("networking.k8s.io/v1", "networkpolicies", namespace, name),
        );
      } catch (error) {
        if (!isApiError(error, 404)) throw error;
      }
    }
  }

  async #recordEvents(out: Pick<ReconcileOutput, "events">): Promise<void> {
    for (const event of out.events) {
      try {
        await this.#applier.recordEvent(event);
      } catch (error) {
        // Events are best effort: a lost one must not hold the reconcile back.
        this.#log?.warn({ reason: event.reason, error: errorMessage(error) }, "event not recorded");
      }
    }
  }

  // --- which policies an event concerns ---------------------------------------------------------

  /** Keys of the policies a watch event concerns. */
  keysFor(
    kind: keyof Caches,
    event: InformerEvent,
    object: KubeObject,
    old: KubeObject | undefined,
  ): string[] {
    const namespace = object.metadata?.namespace ?? "";
    switch (kind) {
      case "policies": {
        const own = policyKey(namespace, object.metadata?.name ?? "");
        // Status writes (ours) do not change who wins a conflict: the others need no second look.
        if (event === "update" && old !== undefined && !competitionChanged(old, object)) return [own];
        return [own, ...this.#policiesIn(namespace).map((p) => policyKey(namespace, p.metadata?.name ?? ""))];
      }
      case "deployments": {
        if (event === "update" && old !== undefined && !workloadChanged(old, object)) return [];
        const policies = this.#policiesIn(namespace) as unknown as AccessPolicy[];
        const names = new Set(policiesForDeployment(object as V1Deployment, policies));
        // policiesForDeployment includes the policy it is marked by, even one that no longer exists.
        if (old) for (const n of policiesForDeployment(old as V1Deployment, policies)) names.add(n);
        return [...names].map((n) => policyKey(namespace, n));
      }
      case "services": {
        if (event === "update" && old !== undefined && !workloadChanged(old, object)) return [];
        const names = new Set(this.#policiesIn(namespace).map((p) => p.metadata?.name ?? ""));
        const marked = carriedPolicy(object as V1Service);
        if (marked !== undefined) names.add(marked);
        return [...names].map((n) => policyKey(namespace, n));
      }
      case "configMaps":
      case "networkPolicies": {
        const owner = object.metadata?.labels?.[POLICY_LABEL] ?? old?.metadata?.labels?.[POLICY_LABEL];
        return owner === undefined ? [] : [policyKey(namespace, owner)];
      }
    }
  }

  #policiesIn(namespace: string): KubeObject[] {
    return this.#caches.policies.list(namespace);
  }
}

/**
 * Changes that can move a Deployment's or Service's fate: spec, labels, annotations, and a rollout's
 * progress. Not the rest of the status.
 */
function workloadChanged(old: KubeObject, now: KubeObject): boolean {
  return (
    old.metadata?.generation !== now.metadata?.generation ||
    // A rollout's progress: a Service waits for it (rolloutProgress).
    !deepEqual(rolloutStatus(old), rolloutStatus(now)) ||
    !deepEqual(old.metadata?.labels, now.metadata?.labels) ||
    !deepEqual(old.metadata?.annotations, now.metadata?.annotations) ||
    old.metadata?.deletionTimestamp !== now.metadata?.deletionTimestamp ||
    // Services have no generation.
    !deepEqual(old.spec, now.spec)
  );
}

/** Changes to a policy that matter to the other policies of its namespace. */
function competitionChanged(old: KubeObject, now: KubeObject): boolean {
  return (
    old.metadata?.generation !== now.metadata?.generation ||
    old.metadata?.deletionTimestamp !== now.metadata?.deletionTimestamp
  );
}

export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function rolloutStatus(o: KubeObject): unknown[] {
  const status = (o as V1Deployment).status;
  return [status?.observedGeneration, status?.replicas, status?.updatedReplicas, status?.availableReplicas];
}
