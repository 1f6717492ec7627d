// Two operator replicas against a real kube-apiserver + etcd: only the Lease holder writes, the
// standby takes over when the leader stops, and the survivor converges on its own after
// kube-apiserver restarts under it (its watches come back with 410 Gone and it relists). Last, the
// portcullis-operator binary itself: takes the lease, reconciles, and on SIGTERM hands it back; killed
// without handing it back, a successor takes over once the lease has expired.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { KubeClient, KubeObject } from "../operator/kube-client.ts";
import { resourcePath } from "../operator/kube-client.ts";
import type { ControlPlane } from "./support/controlplane.ts";
import {
  create,
  createNamespace,
  eventually,
  examplePolicy,
  exampleWorkload,
  isReady,
  mergePatch,
  operatorConfig,
  PATHS,
  policyWhen,
  type ServedPolicy,
  startTestCluster,
  startTestOperator,
  type TestCluster,
  type TestOperator,
} from "./support/operator.ts";

const LEASE_NAMESPACE = "portcullis-system";

let cp: ControlPlane;
let client: KubeClient;
let cluster: TestCluster;
const replicas: TestOperator[] = [];

beforeAll(async () => {
  cluster = await startTestCluster();
  ({ cp, client } = cluster);
  await createNamespace(client, LEASE_NAMESPACE);
  for (const identity of ["replica-a", "replica-b"]) {
    const config = operatorConfig((c) => {
      c.leaderElection.leaseNamespace = LEASE_NAMESPACE;
      c.leaderElection.identity = identity;
    });
    // Short server-side watch timeouts: the streams also reconnect on their own during the test.
    replicas.push(await startTestOperator(cp.kubeConfig, config, { watch: { watchTimeoutSeconds: [3, 6] } }));
  }
});

afterAll(async () => {
  await Promise.all(replicas.map((r) => r.operator.stop()));
  await cluster?.stop();
});

async function protectExampleApp(namespace: string): Promise<void> {
  await createNamespace(client, namespace);
  const { deployment, service } = exampleWorkload(namespace);
  await create(client, deployment);
  await create(client, service);
  await create(client, examplePolicy(namespace));
}

const leaseHolder = async () =>
  (
    await client.get<KubeObject & { spec: { holderIdentity?: string } }>(
      resourcePath("coordination.k8s.io/v1", "leases", LEASE_NAMESPACE, "portcullis-operator"),
    )
  ).spec.holderIdentity;

describe("two replicas", () => {
  let survivor: TestOperator;

  it("only the leader writes; the standby takes over when the leader stops", async () => {
    const leader = await eventually("one replica leads", () => replicas.find((r) => r.operator.isLeader()));
    const standby = replicas.find((r) => r !== leader) as TestOperator;
    expect(standby.operator.isLeader()).toBe(false);
    expect(await leaseHolder()).toBe(leader.operator.identity);

    await protectExampleApp("one");
    await policyWhen(client, "one", "orders-api", "Ready", isReady);
    expect(leader.calls.writes().length).toBeGreaterThan(0);
    expect(standby.calls.writes()).toEqual([]);

    await leader.operator.stop();
    await eventually("the standby leads", () => standby.operator.isLeader());
    expect(await leaseHolder()).toBe(standby.operator.identity);
    await protectExampleApp("two");
    await policyWhen(client, "two", "orders-api", "Ready", isReady);
    survivor = standby;
  });

  it("converges without a restart of its own after kube-apiserver restarts and its watches expire", async () => {
    const expiredBefore = (await survivor.operator.metrics.watchRestarts.get()).values
      .filter((v) => v.labels.reason === "expired")
      .reduce((sum, v) => sum + v.value, 0);
    await cp.restartApiServer();

    // A change to an existing policy and a new one, both made after the restart.
    const policy = await client.get<ServedPolicy>(PATHS.policy("two", "orders-api"));
    const rules = [...policy.spec.authorization.rules, { name: "metrics", paths: ["/metrics"], deny: true }];
    await mergePatch(client, PATHS.policy("two", "orders-api"), { spec: { authorization: { rules } } });
    await protectExampleApp("three");

    await policyWhen(client, "three", "orders-api", "Ready", isReady, 60_000);
    await eventually(
      "the ConfigMap of the changed policy is updated",
      async () => {
        const cm = await client.get<{ data: Record<string, string> }>(
          PATHS.configMap("two", "portcullis-orders-api"),
        );
        return cm.data["policy.yaml"]?.includes("name: metrics");
      },
      60_000,
    );
    await policyWhen(client, "two", "orders-api", "Ready at the new generation", isReady, 60_000);

    // The resourceVersions the watches held were older than the restarted server's watch cache.
    const expiredAfter = (await survivor.operator.metrics.watchRestarts.get()).values
      .filter((v) => v.labels.reason === "expired")
      .reduce((sum, v) => sum + v.value, 0);
    expect(expiredAfter).toBeGreaterThan(expiredBefore);
    expect(survivor.operator.isLeader()).toBe(true);
  });
});

const SETPRIV = "/usr/bin/setpriv";

interface OperatorBinary {
  child: ChildProcess;
  exited: Promise<number | null>;
  lines: { msg?: string; admin?: string }[];
  stderr(): string;
}

/** `operator/main.ts` as a child process with the admin kubeconfig and a 3 s lease. */
function spawnBinary(identity: string): OperatorBinary {
  const argv = [
    join(import.meta.dirname, "..", "operator", "main.ts"),
    "--admin=127.0.0.1:0",
    `--lease-namespace=${LEASE_NAMESPACE}`,
    "--lease-duration-seconds=3",
    `--identity=${identity}`,
  ];
  // setpriv's parent-death signal: a killed test run leaves no operator behind.
  const [file, args] = existsSync(SETPRIV)
    ? [SETPRIV, ["--pdeathsig", "KILL", "--", process.execPath, ...argv]]
    : [process.execPath, argv];
  const child = spawn(file, args, {
    env: { ...process.env, KUBECONFIG: cp.kubeconfigPath, KUBERNETES_SERVICE_HOST: "" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const lines: OperatorBinary["lines"] = [];
  let stderr = "";
  createInterface({ input: child.stdout as NodeJS.ReadableStream }).on("line", (text) => {
    try {
      lines.push(JSON.parse(text) as { msg?: string });
    } catch {
      lines.push({ msg: text });
    }
  });
  child.stderr?.on("data", (chunk: Buffer) => {
    stderr += chunk.toString("utf8");
  });
  return { child, exited, lines, stderr: () => stderr };
}

describe("the portcullis-operator binary", () => {
  it("leads, reconciles, serves /readyz, and on SIGTERM hands the lease back and exits 0", async () => {
    await Promise.all(replicas.map((r) => r.operator.stop()));
    const binary = spawnBinary("binary");
    try {
      const started = await eventually("the binary logs that it started", () =>
        binary.lines.find((line) => line.msg === "started"),
      );
      const admin = `http://${started.admin}`;
      await eventually("/readyz answers 200", async () => (await fetch(`${admin}/readyz`)).status === 200);
      await eventually("the binary holds the lease", async () => (await leaseHolder()) === "binary");
      await protectExampleApp("four");
      await policyWhen(client, "four", "orders-api", "Ready", isReady);
      expect(await (await fetch(`${admin}/metrics`)).text()).toMatch(/portcullis_operator_leader 1/);
    } finally {
      binary.child.kill("SIGTERM");
    }
    expect(await binary.exited, binary.stderr()).toBe(0);
    expect(binary.lines.some((line) => line.msg === "stopped")).toBe(true);
    expect(await leaseHolder()).toBe("");
  });

  it("is replaced once its lease expires when it dies without handing it back", async () => {
    const binary = spawnBinary("doomed");
    try {
      await eventually("the binary holds the lease", async () => (await leaseHolder()) === "doomed");
    } finally {
      binary.child.kill("SIGKILL");
    }
    await binary.exited;
    const config = operatorConfig((c) => {
      c.leaderElection.leaseNamespace = LEASE_NAMESPACE;
      c.leaderElection.identity = "replica-c";
    });
    const successor = await startTestOperator(cp.kubeConfig, config);
    replicas.push(successor);
    expect(successor.operator.isLeader()).toBe(false);
    await eventually("the successor leads once the lease expired", () => successor.operator.isLeader());
    expect(await leaseHolder()).toBe("replica-c");
    await protectExampleApp("five");
    await policyWhen(client, "five", "orders-api", "Ready", isReady);
  });
});
