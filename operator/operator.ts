// The running operator: informers warm on every replica, leader election, and a work queue that only
// the leader runs (a fresh one per leadership term). main.ts wires it to flags and signals; tests
// start it in-process, several at once against one cluster.
import type { KubeConfig, V1Deployment } from "@kubernetes/client-node";
import { API_VERSION, KIND, PLURAL } from "../policy/schema.ts";
import { type AdminServer, startAdminServer } from "./admin.ts";
import { Applier } from "./apply.ts";
import { FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL, type OperatorConfig, POLICY_LABEL } from "./config.ts";
import { carriedPolicy } from "./desired.ts";
import { type ApiCall, KubeClient, type KubeObject } from "./kube-client.ts";
import { LeaderElector } from "./leader.ts";
import { createOperatorMetrics, type OperatorMetrics } from "./metrics.ts";
import { WorkQueue } from "./queue.ts";
import { type Caches, errorMessage, policyKey, type ReconcileLog, Reconciler } from "./reconciler.ts";
import { parseServerVersion, type ServerVersion } from "./sidecar.ts";
import { Informer, type InformerOptions } from "./watch.ts";

export interface OperatorLog extends ReconcileLog {
  error(fields: Record<string, unknown>, message: string): void;
  debug(fields: Record<string, unknown>, message: string): void;
}

export interface StartOperatorOptions {
  kubeConfig: KubeConfig;
  config: OperatorConfig;
  log?: OperatorLog;
  /** Serve /healthz, /readyz, /metrics on config.admin (main does; tests may read `metrics` directly). */
  serveAdmin?: boolean;
  /** Leader election timings in ms; derived from config.leaderElection.leaseDurationSeconds otherwise. */
  leaderElection?: { leaseDurationMs: number; renewDeadlineMs: number; retryPeriodMs: number };
  /** Watch tuning (tests shorten the server-side timeout to exercise reconnects). */
  watch?: Pick<InformerOptions, "watchTimeoutSeconds" | "initialBackoffMs" | "maxBackoffMs">;
  /** Work queue tuning. */
  queue?: { baseDelayMs?: number; maxDelayMs?: number };
  /** Every API request, after its response (tests count writes and forbidden answers). */
  onApiCall?: (call: ApiCall) => void;
}

export interface RunningOperator {
  readonly metrics: OperatorMetrics;
  readonly admin: AdminServer | undefined;
  readonly serverVersion: ServerVersion;
  readonly identity: string;
  isLeader(): boolean;
  hasSynced(): boolean;
  /** Keys waiting in the current term's queue (0 when not leading). */
  queueDepth(): number;
  /** The object as this replica's cache holds it (tests wait for the cache to catch up). */
  cached(kind: keyof Caches, namespace: string, name: string): KubeObject | undefined;
  /** Enqueues every cached policy (a manual resync). */
  resync(): void;
  /** Resolves when the leader's queue has nothing ready or running. */
  idle(): Promise<void>;
  /** Stops leading (finishing running reconciles first), releases the lease, stops watching. */
  stop(): Promise<void>;
}

const silentLog: OperatorLog = { info() {}, warn() {}, error() {}, debug() {} };

export async function startOperator(options: StartOperatorOptions): Promise<RunningOperator> {
  const { config } = options;
  const log = options.log ?? silentLog;
  let queue: WorkQueue | undefined;
  const metrics = createOperatorMetrics(() => queue?.depth() ?? 0);
  const client = new KubeClient(options.kubeConfig, {
    onResponse: (call) => {
      metrics.apiRequests.inc({ verb: call.method, code: String(call.status) });
      options.onApiCall?.(call);
    },
  });

  const version = await client.get<{ major: string; minor: string; gitVersion?: string }>("/version");
  const serverVersion = parseServerVersion(version);
  if (!serverVersion) {
    await client.close();
    throw new Error(`cannot read the server version from ${JSON.stringify(version)}`);
  }

  const watchOptions: InformerOptions = {
    ...options.watch,
    namespaces: config.namespaces.length > 0 ? config.namespaces : undefined,
    onRestart: (resource, reason, error) => {
      metrics.watchRestarts.inc({ reason });
      if (reason !== "closed") log.warn({ resource, reason, error: errorMessage(error) }, "watch restarted");
    },
  };
  const caches: Caches = {
    policies: new Informer(client, { apiVersion: API_VERSION, kind: KIND, plural: PLURAL }, watchOptions),
    deployments: new Informer(
      client,
      { apiVersion: "apps/v1", kind: "Deployment", plural: "deployments" },
      watchOptions,
    ),
    services: new Informer(client, { apiVersion: "v1", kind: "Service", plural: "services" }, watchOptions),
    configMaps: new Informer(
      client,
      { apiVersion: "v1", kind: "ConfigMap", plural: "configmaps" },
      { ...watchOptions, labelSelector: `${MANAGED_BY_LABEL}=${MANAGED_BY}` },
    ),
    networkPolicies: new Informer(
      client,
      { apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", plural: "networkpolicies" },
      { ...watchOptions, labelSelector: `${MANAGED_BY_LABEL}=${MANAGED_BY}` },
    ),
  };
  const informers = Object.values(caches) as Informer<KubeObject>[];
  const synced = () => informers.every((informer) => informer.hasSynced());

  const identity = config.leaderElection.identity;
  const applier = new Applier(client, { fieldManager: FIELD_MANAGER, instance: identity });
  const reconciler = new Reconciler({ client, caches, applier, config, serverVersion, log });

  // --- one queue per leadership term --------------------------------------------------------------
  let term = 0;
  const enqueueAll = () => {
    const keys = new Set<string>();
    for (const policy of caches.policies.list()) {
      keys.add(policyKey(policy.metadata?.namespace ?? "", policy.metadata?.name ?? ""));
    }
    // And policies that are gone but still mark objects (deleted, finalizer stripped, while no
    // operator ran): their reconcile gives those objects back.
    for (const object of [...caches.deployments.list(), ...caches.services.list()]) {
      const marked = carriedPolicy(object as V1Deployment);
      if (marked !== undefined) keys.add(policyKey(object.metadata?.namespace ?? "", marked));
    }
    for (const object of caches.networkPolicies.list()) {
      const owner = object.metadata?.labels?.[POLICY_LABEL];
      if (owner !== undefined) keys.add(policyKey(object.metadata?.namespace ?? "", owner));
    }
    for (const key of keys) queue?.add(key);
  };
  const startLeading = () => {
    term += 1;
    const thisTerm = term;
    metrics.leader.set(1);
    log.info({ identity }, "started leading");
    const termQueue = new WorkQueue(
      async (key) => {
        const end = metrics.reconcileDuration.startTimer();
        try {
          await reconciler.reconcile(key);
        } finally {
          end();
        }
      },
      {
        concurrency: config.workers,
        ...options.queue,
        onProcessed: (key, outcome) => {
          metrics.reconciles.inc({ result: outcome });
          if (outcome === "success") log.debug({ policy: key }, "reconciled");
        },
        onRetry: (key, error, delayMs) => {
          metrics.retries.inc();
          log.warn({ policy: key, error: errorMessage(error), retryInMs: delayMs }, "reconcile failed");
        },
      },
    );
    queue = termQueue;
    // Reconciles start only once every cache has listed: a half-filled cache looks like deletions.
    void Promise.all(informers.map((informer) => informer.waitForSync())).then(() => {
      if (term !== thisTerm || queue !== termQueue) return;
      enqueueAll();
      termQueue.start();
    });
  };
  const stopLeading = async () => {
    term += 1;
    const ending = queue;
    queue = undefined;
    metrics.leader.set(0);
    if (ending) {
      log.info({ identity }, "stopped leading");
      await ending.shutdown();
    }
  };

  for (const [kind, informer] of Object.entries(caches) as [keyof Caches, Informer<KubeObject>][]) {
    informer.on((event, object, old) => {
      // The applier remembers what it applied per object; a deleted object's memory goes with it.
      if (event === "delete" && kind !== "policies") applier.forget(object);
      if (!queue) return;
      for (const key of reconciler.keysFor(kind, event, object, old)) queue.add(key);
    });
  }

  for (const informer of informers) informer.start();

  const election = config.leaderElection;
  const timings = options.leaderElection ?? {
    leaseDurationMs: election.leaseDurationSeconds * 1000,
    renewDeadlineMs: Math.round((election.leaseDurationSeconds * 1000 * 2) / 3),
    retryPeriodMs: Math.max(500, Math.round((election.leaseDurationSeconds * 1000 * 2) / 15)),
  };
  const elector = election.enabled
    ? new LeaderElector(client, {
        namespace: election.leaseNamespace,
        name: election.leaseName,
        identity,
        ...timings,
        onStartedLeading: startLeading,
        onStoppedLeading: stopLeading,
        onError: (error) => log.warn({ error: errorMessage(error) }, "leader election"),
      })
    : undefined;
  if (elector) elector.start();
  else startLeading();

  let admin: AdminServer | undefined;
  if (options.serveAdmin) {
    admin = await startAdminServer(config.admin.host, config.admin.port, metrics.registry, {
      synced,
      electing: () => elector === undefined || elector.isRunning(),
    });
  }

  let stopped: Promise<void> | undefined;
  return {
    metrics,
    admin,
    serverVersion,
    identity,
    isLeader: () => queue !== undefined,
    hasSynced: synced,
    queueDepth: () => queue?.depth() ?? 0,
    cached: (kind, namespace, name) => caches[kind].get(namespace, name),
    resync: enqueueAll,
    idle: async () => {
      await queue?.idle();
    },
    stop() {
      stopped ??= (async () => {
        if (elector) await elector.stop();
        else await stopLeading();
        await Promise.all(informers.map((informer) => informer.stop()));
        await admin?.close();
        await client.close();
      })();
      return stopped;
    },
  };
}
