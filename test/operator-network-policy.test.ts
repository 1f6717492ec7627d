// The app's own port against a real kube-apiserver + etcd: the AppPortExposed condition appears for an
// app bound to 0.0.0.0 and clears when it is bound to loopback; spec.networkPolicy makes the operator
// own a NetworkPolicy per protected Deployment, created, updated (listener port, admin port) and
// removed (turned off, the Deployment unselected, the policy deleted), with the user's objects
// restored exactly. Whether a network plugin enforces it is the real-node suite's question.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { KubeClient, KubeObject } from "../operator/kube-client.ts";
import {
  condition,
  create,
  createNamespace,
  eventually,
  examplePolicy,
  exampleWorkload,
  getOrUndefined,
  mergePatch,
  operatorConfig,
  PATHS,
  policyWhen,
  startTestCluster,
  startTestOperator,
  type TestCluster,
  type TestOperator,
  userVisible,
} from "./support/operator.ts";

interface NetworkPolicy extends KubeObject {
  spec: {
    podSelector: { matchLabels?: Record<string, string> };
    policyTypes: string[];
    ingress: { ports: { protocol: string; port: number }[]; from?: unknown[] }[];
  };
}

let client: KubeClient;
let cluster: TestCluster;
let running: TestOperator;

beforeAll(async () => {
  cluster = await startTestCluster();
  client = cluster.client;
  await createNamespace(client, "portcullis-system");
  running = await startTestOperator(
    cluster.cp.kubeConfig,
    operatorConfig((c) => {
      c.leaderElection.leaseNamespace = "portcullis-system";
      c.leaderElection.identity = "network-policy-operator";
    }),
  );
});

afterAll(async () => {
  await running?.operator.stop();
  await cluster?.stop();
});

const getNetworkPolicy = (ns: string) =>
  getOrUndefined<NetworkPolicy>(client, PATHS.networkPolicy(ns, "portcullis-orders-api"));
const admittedPorts = (np: NetworkPolicy | undefined) =>
  np?.spec.ingress.flatMap((r) => r.ports.map((p) => p.port));

/** The app container's command, changed the way `kubectl patch` (strategic merge) would: by container name. */
function setAppCommand(ns: string, host: string) {
  return client.request("PATCH", PATHS.deployment(ns, "orders-api"), {
    body: {
      spec: {
        template: {
          spec: {
            containers: [
              {
                name: "app",
                command: ["python", "-m", "uvicorn", "app:app", "--host", host, "--port", "8000"],
              },
            ],
          },
        },
      },
    },
    contentType: "application/strategic-merge-patch+json",
  });
}

const exposure = (ns: string, reason: string) =>
  policyWhen(
    client,
    ns,
    "orders-api",
    `AppPortExposed ${reason}`,
    (p) => condition(p, "AppPortExposed")?.reason === reason,
  );

describe("an app bound beyond loopback", () => {
  const ns = "exposed";

  it("is reported in the AppPortExposed condition, on the target and in a Warning", async () => {
    await createNamespace(client, ns);
    const { deployment, service } = exampleWorkload(ns);
    await create(client, deployment);
    await create(client, service);
    await setAppCommand(ns, "0.0.0.0");
    await create(client, examplePolicy(ns));
    const policy = await exposure(ns, "ListensBeyondLoopback");
    const reported = condition(policy, "AppPortExposed");
    expect(reported?.status).toBe("True");
    expect(reported?.message).toContain(
      'Deployment orders-api, container "app", port 8000: uvicorn --host 0.0.0.0: reachable on the pod IP without passing the sidecar',
    );
    expect(reported?.message).toContain("spec.networkPolicy.enabled: true");
    expect(policy.status?.targets?.[0]).toMatchObject({
      name: "orders-api",
      exposedPorts: [{ container: "app", port: 8000, evidence: "uvicorn --host 0.0.0.0" }],
    });
    await eventually("an AppPortExposed Warning on the Deployment", async () => {
      const events = await client.get<{
        items: { reason: string; type: string; involvedObject: { kind: string } }[];
      }>(PATHS.events(ns));
      return events.items.some(
        (e) =>
          e.reason === "AppPortExposed" && e.type === "Warning" && e.involvedObject.kind === "Deployment",
      );
    });
    // Off by default: no NetworkPolicy.
    await running.operator.idle();
    expect(await getNetworkPolicy(ns)).toBeUndefined();
  });

  it("clears when the app is bound to 127.0.0.1", async () => {
    await setAppCommand(ns, "127.0.0.1");
    const policy = await exposure(ns, "NotExposed");
    expect(condition(policy, "AppPortExposed")?.status).toBe("False");
    expect(policy.status?.targets?.[0]?.exposedPorts).toBeUndefined();
  });
});

describe("spec.networkPolicy", () => {
  const ns = "fenced";
  let originals: { deployment: KubeObject; service: KubeObject };

  it("creates a NetworkPolicy admitting only the sidecar's ports to the Deployment's pods", async () => {
    await createNamespace(client, ns);
    const { deployment, service } = exampleWorkload(ns);
    await create(client, deployment);
    await create(client, service);
    await setAppCommand(ns, "0.0.0.0");
    originals = {
      deployment: await client.get(PATHS.deployment(ns, "orders-api")),
      service: await client.get(PATHS.service(ns, "orders-api")),
    };
    const policy = examplePolicy(ns);
    policy.spec.networkPolicy = { enabled: true };
    const created = await create(client, policy);

    const np = await eventually("the NetworkPolicy exists", () => getNetworkPolicy(ns));
    expect(np.spec).toEqual({
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
    });
    expect(np.metadata?.labels).toMatchObject({
      "app.kubernetes.io/managed-by": "portcullis",
      "portcullis.dev/policy": "orders-api",
    });
    expect(np.metadata?.ownerReferences).toEqual([
      expect.objectContaining({
        kind: "AccessPolicy",
        name: "orders-api",
        uid: created.metadata?.uid,
        controller: true,
      }),
    ]);
    expect(np.metadata?.managedFields?.map((f) => f.manager)).toEqual(["portcullis"]);

    const fenced = await exposure(ns, "FencedByNetworkPolicy");
    expect(condition(fenced, "AppPortExposed")?.status).toBe("False");
    expect(condition(fenced, "AppPortExposed")?.message).toContain("portcullis-orders-api");
    expect(fenced.status?.targets?.[0]?.exposedPorts).toEqual([
      { container: "app", port: 8000, evidence: "uvicorn --host 0.0.0.0", fenced: true },
    ]);
  });

  it("follows the listener port and allowAdminPort", async () => {
    await mergePatch(client, PATHS.policy(ns, "orders-api"), { spec: { listener: { port: 8081 } } });
    await eventually("the NetworkPolicy admits 8081 and the admin port only", async () => {
      const ports = admittedPorts(await getNetworkPolicy(ns));
      return JSON.stringify(ports) === JSON.stringify([8081, 9901]);
    });
    await mergePatch(client, PATHS.policy(ns, "orders-api"), {
      spec: { networkPolicy: { enabled: true, allowAdminPort: false } },
    });
    await eventually("the NetworkPolicy admits the listener only", async () => {
      const ports = admittedPorts(await getNetworkPolicy(ns));
      return JSON.stringify(ports) === JSON.stringify([8081]);
    });
  });

  it("writes nothing more once settled", async () => {
    await running.operator.idle();
    const before = (await getNetworkPolicy(ns))?.metadata?.resourceVersion;
    await eventually(
      "the operator's cache caught up",
      () =>
        running.operator.cached("networkPolicies", ns, "portcullis-orders-api")?.metadata?.resourceVersion ===
        before,
    );
    const mark = running.calls.calls.length;
    running.operator.resync();
    await running.operator.idle();
    expect(running.calls.writes(mark)).toEqual([]);
  });

  it("is removed when turned off, and comes back when turned on", async () => {
    await mergePatch(client, PATHS.policy(ns, "orders-api"), { spec: { networkPolicy: { enabled: false } } });
    await eventually("the NetworkPolicy is gone", async () => (await getNetworkPolicy(ns)) === undefined);
    await exposure(ns, "ListensBeyondLoopback");
    await mergePatch(client, PATHS.policy(ns, "orders-api"), { spec: { networkPolicy: { enabled: true } } });
    await eventually("the NetworkPolicy is back", () => getNetworkPolicy(ns));
  });

  it("is removed when the policy no longer selects the Deployment", async () => {
    await mergePatch(client, PATHS.policy(ns, "orders-api"), {
      spec: { selector: { matchLabels: { app: "someone-else" } } },
    });
    await eventually("the NetworkPolicy is gone", async () => (await getNetworkPolicy(ns)) === undefined);
    await mergePatch(client, PATHS.policy(ns, "orders-api"), {
      spec: { selector: { matchLabels: { app: "orders-api" } } },
    });
    await eventually("the NetworkPolicy is back", () => getNetworkPolicy(ns));
  });

  it("is removed with the policy, and the user's objects are as they were", async () => {
    await client.request("DELETE", PATHS.policy(ns, "orders-api"));
    await eventually(
      "the policy is gone",
      async () => (await getOrUndefined(client, PATHS.policy(ns, "orders-api"))) === undefined,
    );
    expect(await getNetworkPolicy(ns)).toBeUndefined();
    expect(userVisible(await client.get(PATHS.deployment(ns, "orders-api")))).toEqual(
      userVisible(originals.deployment),
    );
    expect(userVisible(await client.get(PATHS.service(ns, "orders-api")))).toEqual(
      userVisible(originals.service),
    );
  });
});
