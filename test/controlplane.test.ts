// The control-plane harness itself, against real etcd + kube-apiserver processes: the API works
// through @kubernetes/client-node, RBAC is enforced, the apiserver survives a restart, and
// stop() leaves nothing behind.
import { existsSync } from "node:fs";
import { dirname } from "node:path";
import {
  ApiException,
  AppsV1Api,
  AuthenticationV1Api,
  CoreV1Api,
  PatchStrategy,
  RbacAuthorizationV1Api,
  setHeaderOptions,
  type V1Deployment,
} from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ControlPlane, controlPlaneVersions, startControlPlane } from "./support/controlplane.ts";
import { processExists } from "./support/supervised-process.ts";

const namespace = "harness";

function deployment(name: string): V1Deployment {
  return {
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: { name, namespace, labels: { app: name } },
    spec: {
      selector: { matchLabels: { app: name } },
      template: {
        metadata: { labels: { app: name } },
        spec: {
          containers: [
            { name: "app", image: "example.test/app:1", ports: [{ name: "http", containerPort: 8000 }] },
          ],
        },
      },
    },
  };
}

function forbidden(promise: Promise<unknown>) {
  return expect(promise).rejects.toMatchObject({ code: 403 });
}

/** 200 when the call succeeds, else the HTTP status of its ApiException. */
async function statusOf(promise: Promise<unknown>): Promise<number> {
  try {
    await promise;
    return 200;
  } catch (error) {
    if (error instanceof ApiException && typeof error.code === "number") return error.code;
    throw error;
  }
}

describe("local control plane (etcd + kube-apiserver)", () => {
  let cp: ControlPlane;

  beforeAll(async () => {
    cp = await startControlPlane({ local: true });
  });

  afterAll(async () => {
    await cp?.stop();
  });

  it("serves the Kubernetes version pinned in versions.env", async () => {
    const { kubernetes } = await controlPlaneVersions();
    expect(cp.external).toBe(false);
    expect(cp.server).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(cp.serverVersion).toBe(kubernetes.split(".").slice(0, 2).join("."));
    expect(cp.processIds()).toHaveLength(2);
  });

  it("creates and reads back a namespace, a Deployment and a Service", async () => {
    const core = cp.kubeConfig.makeApiClient(CoreV1Api);
    const apps = cp.kubeConfig.makeApiClient(AppsV1Api);
    await core.createNamespace({ body: { metadata: { name: namespace } } });
    await apps.createNamespacedDeployment({ namespace, body: deployment("web") });
    await core.createNamespacedService({
      namespace,
      body: {
        metadata: { name: "web", namespace },
        spec: { selector: { app: "web" }, ports: [{ name: "http", port: 80, targetPort: "http" }] },
      },
    });

    const readBack = await apps.readNamespacedDeployment({ name: "web", namespace });
    expect(readBack.metadata?.uid).toBeTruthy();
    expect(readBack.spec?.template.spec?.containers.map((c) => c.name)).toEqual(["app"]);
    const service = await core.readNamespacedService({ name: "web", namespace });
    // The apiserver allocated a ClusterIP from --service-cluster-ip-range.
    expect(service.spec?.clusterIP).toMatch(/^10\.0\.0\.\d+$/);
    expect(service.spec?.ports?.[0]?.targetPort).toBe("http");
  });

  it("records a server-side apply by field manager portcullis in managedFields", async () => {
    const apps = cp.kubeConfig.makeApiClient(AppsV1Api);
    const applied = await apps.patchNamespacedDeployment(
      {
        name: "web",
        namespace,
        fieldManager: "portcullis",
        force: true,
        body: {
          apiVersion: "apps/v1",
          kind: "Deployment",
          metadata: { name: "web", namespace },
          spec: {
            template: { spec: { containers: [{ name: "portcullis-proxy", image: "example.test/proxy:1" }] } },
          },
        },
      },
      setHeaderOptions("Content-Type", PatchStrategy.ServerSideApply),
    );

    // Containers are a list-map keyed by name: the applied container joins the existing one.
    expect(applied.spec?.template.spec?.containers.map((c) => c.name).sort()).toEqual([
      "app",
      "portcullis-proxy",
    ]);
    const entry = applied.metadata?.managedFields?.find((f) => f.manager === "portcullis");
    expect(entry?.operation).toBe("Apply");
    const fields = JSON.stringify(entry?.fieldsV1);
    expect(fields).toContain('k:{\\"name\\":\\"portcullis-proxy\\"}');
    expect(fields).not.toContain('k:{\\"name\\":\\"app\\"}');
  });

  it("enforces RBAC for an impersonated user and honours a RoleBinding", async () => {
    const asAlice = cp.impersonationKubeConfig("alice").makeApiClient(AppsV1Api);
    await forbidden(asAlice.readNamespacedDeployment({ name: "web", namespace }));
    await forbidden(asAlice.listNamespacedDeployment({ namespace }));

    const rbac = cp.kubeConfig.makeApiClient(RbacAuthorizationV1Api);
    // Not the built-in `view`: it is an aggregated ClusterRole, and without kube-controller-manager
    // nothing fills in its rules.
    await rbac.createNamespacedRole({
      namespace,
      body: {
        metadata: { name: "deployment-reader", namespace },
        rules: [{ apiGroups: ["apps"], resources: ["deployments"], verbs: ["get", "list", "watch"] }],
      },
    });
    await rbac.createNamespacedRoleBinding({
      namespace,
      body: {
        metadata: { name: "alice-reads-deployments", namespace },
        roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "deployment-reader" },
        subjects: [{ apiGroup: "rbac.authorization.k8s.io", kind: "User", name: "alice" }],
      },
    });
    // The RBAC authorizer reads bindings from an informer: the grant arrives shortly after the write.
    await expect
      .poll(() => statusOf(asAlice.readNamespacedDeployment({ name: "web", namespace })), { timeout: 15_000 })
      .toBe(200);
    // The Role grants no writes.
    await forbidden(asAlice.createNamespacedDeployment({ namespace, body: deployment("alice-made") }));
  });

  it("impersonates a user in a group", async () => {
    const review = await cp
      .impersonationKubeConfig("carol", ["auditors"])
      .makeApiClient(AuthenticationV1Api)
      .createSelfSubjectReview({
        body: { apiVersion: "authentication.k8s.io/v1", kind: "SelfSubjectReview" },
      });
    expect(review.status?.userInfo?.username).toBe("carol");
    expect(review.status?.userInfo?.groups).toEqual(
      expect.arrayContaining(["auditors", "system:authenticated"]),
    );
    expect(review.status?.userInfo?.groups).not.toContain("system:masters");
  });

  it("authenticates a client certificate's user and groups", async () => {
    const { kubeConfig, kubeconfigPath } = await cp.userKubeConfig("bob", ["team-a", "team-b"]);
    expect(existsSync(kubeconfigPath)).toBe(true);
    const review = await kubeConfig.makeApiClient(AuthenticationV1Api).createSelfSubjectReview({
      body: { apiVersion: "authentication.k8s.io/v1", kind: "SelfSubjectReview" },
    });
    expect(review.status?.userInfo?.username).toBe("bob");
    expect(review.status?.userInfo?.groups).toEqual(
      expect.arrayContaining(["team-a", "team-b", "system:authenticated"]),
    );
    expect(review.status?.userInfo?.groups).not.toContain("system:masters");
    await forbidden(kubeConfig.makeApiClient(CoreV1Api).listNamespacedService({ namespace }));
  });

  it("keeps the same client working after the apiserver restarts", async () => {
    const apps = cp.kubeConfig.makeApiClient(AppsV1Api);
    const before = await apps.readNamespacedDeployment({ name: "web", namespace });
    const [etcdPid, apiServerPid] = cp.processIds();

    await cp.restartApiServer();

    const [etcdPidAfter, apiServerPidAfter] = cp.processIds();
    expect(etcdPidAfter).toBe(etcdPid);
    expect(apiServerPidAfter).not.toBe(apiServerPid);
    expect(apiServerPid !== undefined && processExists(apiServerPid)).toBe(false);
    // Same client object, same data (etcd kept it), and writes work again.
    const after = await apps.readNamespacedDeployment({ name: "web", namespace });
    expect(after.metadata?.uid).toBe(before.metadata?.uid);
    const created = await apps.createNamespacedDeployment({ namespace, body: deployment("after-restart") });
    expect(created.metadata?.name).toBe("after-restart");
  });

  it("stop() ends both processes and removes its temp dir", async () => {
    const pids = cp.processIds();
    expect(pids).toHaveLength(2);
    const dir = dirname(cp.kubeconfigPath);
    expect(existsSync(dir)).toBe(true);

    await cp.stop();

    expect(pids.filter(processExists)).toEqual([]);
    expect(cp.processIds()).toEqual([]);
    expect(existsSync(dir)).toBe(false);
  });
});
