// The Helm chart with the real helm binary: lint, template, values schema, and a server-side dry-run
// apply of everything it renders against a real kube-apiserver.

import { join } from "node:path";
import {
  CoreV1Api,
  type KubernetesObject,
  KubernetesObjectApi,
  loadAllYaml,
  PatchStrategy,
  type V1ClusterRole,
  type V1Deployment,
} from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readOperatorConfig } from "../operator/config.ts";
import { CLUSTER_ROLE_RULES } from "../operator/rbac.ts";
import { type ControlPlane, startControlPlane } from "./support/controlplane.ts";
import { helm } from "./support/helm.ts";

const chart = join(import.meta.dirname, "..", "charts", "portcullis");
const namespace = "portcullis-system";

async function render(...args: string[]): Promise<KubernetesObject[]> {
  const { code, stdout, stderr } = await helm(
    "template",
    "portcullis",
    chart,
    "-n",
    namespace,
    "--include-crds",
    ...args,
  );
  expect(code, stderr).toBe(0);
  return loadAllYaml(stdout) as KubernetesObject[];
}

describe("the Helm chart", () => {
  let cp: ControlPlane;

  beforeAll(async () => {
    cp = await startControlPlane();
    await cp.kubeConfig.makeApiClient(CoreV1Api).createNamespace({ body: { metadata: { name: namespace } } });
  });
  afterAll(async () => {
    await cp?.stop();
  });

  it("passes helm lint --strict", async () => {
    const { code, stdout, stderr } = await helm("lint", "--strict", chart);
    expect(code, stdout + stderr).toBe(0);
  });

  it("grants exactly the rules in operator/rbac.ts and configures the operator with valid settings", async () => {
    const objects = await render(
      "--set",
      "watchNamespaces={shop,billing}",
      "--set",
      "sidecar.mode=native",
      "--set",
      "sidecar.redisUrl=redis://redis.shared.svc:6379/0",
    );
    const role = objects.find((o) => o.kind === "ClusterRole") as V1ClusterRole;
    expect(role.rules?.map((r) => ({ ...r }))).toEqual(CLUSTER_ROLE_RULES.map((r) => ({ ...r })));
    const deployment = objects.find((o) => o.kind === "Deployment") as V1Deployment;
    const container = deployment.spec?.template.spec?.containers[0];
    const env = Object.fromEntries((container?.env ?? []).map((e) => [e.name, e.value ?? "from-field"]));
    const config = readOperatorConfig([], env);
    expect(config).not.toHaveProperty("error");
    expect(config).toMatchObject({
      namespaces: ["billing", "shop"],
      sidecarMode: "native",
      sidecarRedisUrl: { url: "redis://redis.shared.svc:6379/0" },
    });
    expect(container?.securityContext).toMatchObject({
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
    });
  });

  it("rejects values outside its schema", async () => {
    const bad = await helm("template", "portcullis", chart, "--set", "sidecar.mode=sometimes");
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/sidecar.*mode/);
    const unknown = await helm("template", "portcullis", chart, "--set", "replicas=3");
    expect(unknown.code).not.toBe(0);
    const notRedis = await helm(
      "template",
      "portcullis",
      chart,
      "--set",
      "sidecar.redisUrl=http://redis:6379",
    );
    expect(notRedis.code).not.toBe(0);
    expect(notRedis.stderr).toMatch(/redisUrl/);
    const notSecretRef = await helm(
      "template",
      "portcullis",
      chart,
      "--set",
      "sidecar.redisUrlSecret=no-key",
    );
    expect(notSecretRef.code).not.toBe(0);
    expect(notSecretRef.stderr).toMatch(/redisUrlSecret/);
  });

  it("passes a Redis URL Secret reference to the operator, which the operator accepts", async () => {
    const objects = await render("--set", "sidecar.redisUrlSecret=rate-limits/url");
    const deployment = objects.find((o) => o.kind === "Deployment") as V1Deployment;
    const env = Object.fromEntries(
      (deployment.spec?.template.spec?.containers[0]?.env ?? []).map((e) => [
        e.name,
        e.value ?? "from-field",
      ]),
    );
    expect(env).not.toHaveProperty("PORTCULLIS_SIDECAR_REDIS_URL");
    expect(readOperatorConfig([], env)).toMatchObject({
      sidecarRedisUrl: { secret: { name: "rate-limits", key: "url" } },
    });
  });

  it("renders objects the API server accepts (server-side apply, dry run)", async () => {
    const objects = await render();
    const client = KubernetesObjectApi.makeApiClient(cp.kubeConfig);
    const kinds: string[] = [];
    // The CRD first, for real: nothing else in the chart depends on it, but a dry run of it alone proves little.
    for (const object of objects) {
      const dryRun = object.kind === "CustomResourceDefinition" ? undefined : "All";
      const applied = await client.patch(
        object,
        undefined,
        dryRun,
        "helm-test",
        true,
        PatchStrategy.ServerSideApply,
      );
      kinds.push(applied.kind ?? "?");
    }
    expect(kinds.sort()).toEqual(
      [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "Service",
        "ServiceAccount",
      ].sort(),
    );
  });
});
