// Shared pieces of the operator's integration tests: the CRD installed on a real control plane, the
// example app's manifests in a namespace, an in-process operator with test timings, and polling.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { KubeConfig } from "@kubernetes/client-node";
import { parse, parseAllDocuments } from "yaml";
import { type OperatorConfig, readOperatorConfig } from "../../operator/config.ts";
import {
  type ApiCall,
  isApiError,
  KubeClient,
  type KubeObject,
  resourcePath,
  WRITE_METHODS,
} from "../../operator/kube-client.ts";
import {
  type OperatorLog,
  type RunningOperator,
  type StartOperatorOptions,
  startOperator,
} from "../../operator/operator.ts";
import { API_VERSION, PLURAL } from "../../policy/schema.ts";
import { type ControlPlane, startControlPlane } from "./controlplane.ts";
import { type RolloutStandIn, startRolloutStandIn } from "./rollouts.ts";

const root = join(import.meta.dirname, "..", "..");
const readYaml = (path: string): unknown => parse(readFileSync(join(root, path), "utf8"));

export const POLICY_API = API_VERSION;

/** A fresh copy of examples/fastapi/policy.yaml in `namespace` under `name`. */
export function examplePolicy(namespace: string, name = "orders-api"): KubeObject & { spec: PolicySpec } {
  const policy = readYaml("examples/fastapi/policy.yaml") as KubeObject & { spec: PolicySpec };
  policy.metadata = { name, namespace };
  return policy;
}

/** The loosely typed spec the tests edit (the schema's type is too strict for deliberate mistakes). */
export type PolicySpec = Record<string, unknown> & {
  selector: { matchLabels: Record<string, string> };
  sidecar: Record<string, unknown>;
  authorization: { rules: Record<string, unknown>[] };
  authentication: { issuers: Record<string, unknown>[] };
  upstream: Record<string, unknown>;
  listener: Record<string, unknown>;
};

/** The Deployment and Service of examples/fastapi/deployment.yaml, placed in `namespace`. */
export function exampleWorkload(
  namespace: string,
  name = "orders-api",
): { deployment: KubeObject; service: KubeObject } {
  const docs = parseAllDocuments(readFileSync(join(root, "examples/fastapi/deployment.yaml"), "utf8")).map(
    (doc) => doc.toJS() as KubeObject,
  );
  const deployment = docs.find((d) => d.kind === "Deployment");
  const service = docs.find((d) => d.kind === "Service");
  if (!deployment || !service)
    throw new Error("examples/fastapi/deployment.yaml lacks a Deployment or Service");
  const rename = (object: KubeObject) => {
    const text = JSON.stringify(object).replaceAll('"orders-api"', JSON.stringify(name));
    const renamed = JSON.parse(text) as KubeObject;
    renamed.metadata = { ...renamed.metadata, namespace };
    return renamed;
  };
  return { deployment: rename(deployment), service: rename(service) };
}

export const PATHS = {
  policy: (ns: string, name?: string) => resourcePath(API_VERSION, PLURAL, ns, name),
  deployment: (ns: string, name?: string) => resourcePath("apps/v1", "deployments", ns, name),
  service: (ns: string, name?: string) => resourcePath("v1", "services", ns, name),
  configMap: (ns: string, name?: string) => resourcePath("v1", "configmaps", ns, name),
  secret: (ns: string, name?: string) => resourcePath("v1", "secrets", ns, name),
  networkPolicy: (ns: string, name?: string) =>
    resourcePath("networking.k8s.io/v1", "networkpolicies", ns, name),
  events: (ns: string) => resourcePath("v1", "events", ns),
};

/** Installs crds/portcullis.dev_accesspolicies.yaml and waits until AccessPolicies are served. */
export async function installCrd(client: KubeClient): Promise<void> {
  const crd = readYaml("crds/portcullis.dev_accesspolicies.yaml") as KubeObject;
  const path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
  try {
    await client.request("POST", path, { body: crd });
  } catch (error) {
    if (!isApiError(error, 409)) throw error;
  }
  await eventually("the CRD is established", async () => {
    const current = await client.get<{ status?: { conditions?: { type: string; status: string }[] } }>(
      `${path}/${crd.metadata?.name}`,
    );
    return current.status?.conditions?.some((c) => c.type === "Established" && c.status === "True");
  });
  // Discovery reaches the handler chain a moment after Established.
  await eventually("AccessPolicies are served", async () => {
    try {
      await client.get(resourcePath(API_VERSION, PLURAL, "default"));
      return true;
    } catch {
      return false;
    }
  });
}

export async function createNamespace(client: KubeClient, name: string): Promise<void> {
  await client.request("POST", "/api/v1/namespaces", {
    body: { apiVersion: "v1", kind: "Namespace", metadata: { name } },
  });
}

export async function create<T extends KubeObject>(client: KubeClient, object: KubeObject): Promise<T> {
  const { apiVersion, kind, metadata } = object;
  const plural = {
    Deployment: "deployments",
    Service: "services",
    Secret: "secrets",
    Pod: "pods",
    AccessPolicy: PLURAL,
  }[kind ?? ""];
  if (!apiVersion || !plural) throw new Error(`create(): unsupported ${kind}`);
  return client.request<T>("POST", resourcePath(apiVersion, plural, metadata?.namespace), { body: object });
}

/** A JSON merge patch, as a user's `kubectl patch --type merge` would send it. */
export function mergePatch<T = KubeObject>(client: KubeClient, path: string, patch: unknown): Promise<T> {
  return client.request<T>("PATCH", path, { body: patch, contentType: "application/merge-patch+json" });
}

export async function getOrUndefined<T = KubeObject>(
  client: KubeClient,
  path: string,
): Promise<T | undefined> {
  try {
    return await client.get<T>(path);
  } catch (error) {
    if (isApiError(error, 404)) return undefined;
    throw error;
  }
}

/**
 * Polls `check` until it returns a value other than undefined/false/null, or throws with `what` after
 * the deadline (generous: the machine is shared; speed is measured in bench/, not here).
 */
export async function eventually<T>(
  what: string,
  check: () => Promise<T | undefined | false | null> | T | undefined | false | null,
  timeoutMs = 30_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined && value !== false && value !== null) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting until ${what}${last instanceof Error ? `: ${last.message}` : ""}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

export interface Condition {
  type: string;
  status: string;
  reason: string;
  message: string;
  observedGeneration?: number;
  lastTransitionTime: string;
}

export interface PolicyStatus {
  observedGeneration?: number;
  conditions?: Condition[];
  targets?: {
    kind: string;
    name: string;
    state: string;
    message?: string;
    exposedPorts?: { container: string; port?: number; evidence: string; fenced?: boolean }[];
  }[];
  protectedTargets?: number;
}

export type ServedPolicy = KubeObject & { spec: PolicySpec; status?: PolicyStatus };

export const condition = (policy: ServedPolicy | undefined, type: string): Condition | undefined =>
  policy?.status?.conditions?.find((c) => c.type === type);

/** The served policy once its status describes its current generation and `accept` holds. */
export function policyWhen(
  client: KubeClient,
  namespace: string,
  name: string,
  what: string,
  accept: (policy: ServedPolicy) => boolean,
  timeoutMs?: number,
): Promise<ServedPolicy> {
  return eventually(
    `AccessPolicy ${namespace}/${name}: ${what}`,
    async () => {
      const policy = await client.get<ServedPolicy>(PATHS.policy(namespace, name));
      const current = policy.status?.observedGeneration === policy.metadata?.generation;
      return current && accept(policy) ? policy : undefined;
    },
    timeoutMs,
  );
}

export const isReady = (policy: ServedPolicy) => condition(policy, "Ready")?.status === "True";

export function operatorConfig(overrides: (config: OperatorConfig) => void = () => {}): OperatorConfig {
  const parsed = readOperatorConfig(["--admin", "127.0.0.1:0", "--log-level", "silent"], {});
  if ("error" in parsed || "help" in parsed) throw new Error("the test operator config does not parse");
  overrides(parsed);
  return parsed;
}

/** Records every API call an operator makes. */
export class CallLog {
  readonly calls: ApiCall[] = [];
  readonly record = (call: ApiCall): void => {
    this.calls.push(call);
  };
  /**
   * Writes other than leader election's (a leader renews every retry period, and both replicas may
   * race to create the Lease at start: the loser's POST gets 409).
   */
  writes(since = 0): ApiCall[] {
    return this.calls
      .slice(since)
      .filter((c) => WRITE_METHODS.has(c.method) && !c.path.startsWith("/apis/coordination.k8s.io/"));
  }
  forbidden(): ApiCall[] {
    return this.calls.filter((c) => c.status === 403);
  }
}

export interface TestOperator {
  operator: RunningOperator;
  calls: CallLog;
}

/** PORTCULLIS_TEST_OPERATOR_LOG=1 prints the operators' log lines to stderr (debugging a test). */
function testLog(identity: string): OperatorLog | undefined {
  if (process.env.PORTCULLIS_TEST_OPERATOR_LOG !== "1") return undefined;
  const line = (level: string) => (fields: Record<string, unknown>, message: string) =>
    process.stderr.write(
      `${new Date().toISOString()} ${identity} ${level} ${message} ${JSON.stringify(fields)}\n`,
    );
  return { debug: line("debug"), info: line("info"), warn: line("warn"), error: line("error") };
}

/** An operator in this process with test timings (lease 3 s / renew 2 s / retry 0.5 s). */
export async function startTestOperator(
  kubeConfig: KubeConfig,
  config: OperatorConfig,
  options: Partial<StartOperatorOptions> = {},
): Promise<TestOperator> {
  const calls = new CallLog();
  const operator = await startOperator({
    kubeConfig,
    config,
    leaderElection: { leaseDurationMs: 3_000, renewDeadlineMs: 2_000, retryPeriodMs: 500 },
    queue: { baseDelayMs: 20, maxDelayMs: 2_000 },
    onApiCall: calls.record,
    log: testLog(config.leaderElection.identity),
    ...options,
  });
  return { operator, calls };
}

/** A client for the test's own requests (admin credentials). */
export const adminClient = (kubeConfig: KubeConfig): KubeClient => new KubeClient(kubeConfig);

/** A Deployment/Service as restore compares it: spec, labels, annotations (not status or bookkeeping). */
export function userVisible(object: KubeObject | undefined): unknown {
  return {
    labels: object?.metadata?.labels,
    annotations: object?.metadata?.annotations,
    spec: object?.spec,
  };
}

/** What the operator's tests stand on: a control plane, an admin client, the CRD, finished rollouts. */
export interface TestCluster {
  cp: ControlPlane;
  client: KubeClient;
  rollouts: RolloutStandIn;
  stop(): Promise<void>;
}

/**
 * Starts a control plane with the CRD installed. envtest has no kube-controller-manager: rollouts are
 * finished by a stand-in (support/rollouts.ts), except in the `holdRollouts` namespaces.
 */
export async function startTestCluster(
  options: { holdRollouts?: readonly string[] } = {},
): Promise<TestCluster> {
  const cp = await startControlPlane();
  const client = adminClient(cp.kubeConfig);
  const rollouts = startRolloutStandIn(client, options.holdRollouts);
  const stop = async () => {
    await rollouts.stop();
    await client.close();
    await cp.stop();
  };
  try {
    await installCrd(client);
  } catch (error) {
    await stop();
    throw error;
  }
  return { cp, client, rollouts, stop };
}
