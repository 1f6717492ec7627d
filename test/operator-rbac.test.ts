// The operator as the ServiceAccount the Helm chart runs it as, bound to exactly the ClusterRole of
// operator/rbac.ts, against a real kube-apiserver with RBAC on: the whole life of a policy (protect,
// events, status, finalizer, release, ConfigMap deletion, leader election) with no request forbidden.
// It watches a configured list of namespaces: a policy elsewhere is left alone.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { KubeClient } from "../operator/kube-client.ts";
import { CLUSTER_ROLE_NAME, clusterRole } from "../operator/rbac.ts";
import type { ControlPlane } from "./support/controlplane.ts";
import {
  create,
  createNamespace,
  eventually,
  examplePolicy,
  exampleWorkload,
  getOrUndefined,
  isReady,
  operatorConfig,
  PATHS,
  policyWhen,
  type ServedPolicy,
  startTestCluster,
  startTestOperator,
  type TestCluster,
  type TestOperator,
  userVisible,
} from "./support/operator.ts";

const SYSTEM_NAMESPACE = "portcullis-system";
const SERVICE_ACCOUNT = "portcullis-operator";

let cp: ControlPlane;
let client: KubeClient;
let cluster: TestCluster;
let running: TestOperator;

beforeAll(async () => {
  cluster = await startTestCluster();
  ({ cp, client } = cluster);
  await createNamespace(client, SYSTEM_NAMESPACE);
  await client.request("POST", `/api/v1/namespaces/${SYSTEM_NAMESPACE}/serviceaccounts`, {
    body: { apiVersion: "v1", kind: "ServiceAccount", metadata: { name: SERVICE_ACCOUNT } },
  });
  await client.request("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", { body: clusterRole() });
  await client.request("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
    body: {
      apiVersion: "rbac.authorization.k8s.io/v1",
      kind: "ClusterRoleBinding",
      metadata: { name: CLUSTER_ROLE_NAME },
      roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: CLUSTER_ROLE_NAME },
      subjects: [{ kind: "ServiceAccount", name: SERVICE_ACCOUNT, namespace: SYSTEM_NAMESPACE }],
    },
  });
  const asServiceAccount = cp.impersonationKubeConfig(
    `system:serviceaccount:${SYSTEM_NAMESPACE}:${SERVICE_ACCOUNT}`,
    ["system:serviceaccounts"],
  );
  running = await startTestOperator(
    asServiceAccount,
    operatorConfig((c) => {
      c.leaderElection.leaseNamespace = SYSTEM_NAMESPACE;
      c.leaderElection.identity = "rbac-replica";
      // One watch per namespace: what a namespaced install looks like.
      c.namespaces = ["rbac", "rbac-quiet"];
    }),
  );
});

afterAll(async () => {
  await running?.operator.stop();
  await cluster?.stop();
});

describe("the operator bound to the ClusterRole of operator/rbac.ts", () => {
  it("protects and releases the example app without a forbidden request", async () => {
    const ns = "rbac";
    // A namespace the operator is not configured for: its policy must stay untouched.
    await createNamespace(client, "elsewhere");
    const { deployment: otherDeployment } = exampleWorkload("elsewhere");
    await create(client, otherDeployment);
    await create(client, examplePolicy("elsewhere"));
    await createNamespace(client, ns);
    const { deployment, service } = exampleWorkload(ns);
    const originalDeployment = await create(client, deployment);
    const originalService = await create(client, service);
    // With spec.networkPolicy, so the NetworkPolicy's watch, create and delete are exercised too.
    const policy = examplePolicy(ns);
    policy.spec.networkPolicy = { enabled: true };
    await create(client, policy);
    await policyWhen(client, ns, "orders-api", "Ready", isReady);
    expect(await getOrUndefined(client, PATHS.configMap(ns, "portcullis-orders-api"))).toBeDefined();
    await eventually("the NetworkPolicy exists", () =>
      getOrUndefined(client, PATHS.networkPolicy(ns, "portcullis-orders-api")),
    );
    await eventually("an Event was recorded", async () => {
      const events = await client.get<{ items: unknown[] }>(PATHS.events(ns));
      return events.items.length > 0;
    });

    await client.request("DELETE", PATHS.policy(ns, "orders-api"));
    await eventually(
      "the policy is gone",
      async () => (await getOrUndefined(client, PATHS.policy(ns, "orders-api"))) === undefined,
    );
    expect(userVisible(await client.get(PATHS.deployment(ns, "orders-api")))).toEqual(
      userVisible(originalDeployment),
    );
    expect(userVisible(await client.get(PATHS.service(ns, "orders-api")))).toEqual(
      userVisible(originalService),
    );
    expect(await getOrUndefined(client, PATHS.configMap(ns, "portcullis-orders-api"))).toBeUndefined();
    expect(await getOrUndefined(client, PATHS.networkPolicy(ns, "portcullis-orders-api"))).toBeUndefined();

    const ignored = await client.get<ServedPolicy>(PATHS.policy("elsewhere", "orders-api"));
    expect(ignored.status).toBeUndefined();
    expect(ignored.metadata?.finalizers).toBeUndefined();

    expect(running.operator.isLeader()).toBe(true);
    expect(running.calls.forbidden()).toEqual([]);
    // The flow above did write, as the ServiceAccount: the check is not vacuous.
    expect(running.calls.writes().length).toBeGreaterThan(0);
  });
});
