// End to end on a real control plane: the operator reconciles the example into the Deployment the
// API server holds, and that pod (its containers run as local processes, see support/pod.ts) serves
// real tokens from a real IdP to the real FastAPI app through the port the Service now targets.

import type { V1ConfigMap, V1Deployment, V1Secret, V1Service } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { type IdentityProvider, startIdentityProvider } from "../examples/idp.ts";
import type { KubeClient } from "../operator/kube-client.ts";
import type { ControlPlane } from "./support/controlplane.ts";
import {
  create,
  createNamespace,
  eventually,
  examplePolicy,
  exampleWorkload,
  getOrUndefined,
  isReady,
  mergePatch,
  operatorConfig,
  PATHS,
  type ServedPolicy,
  startTestCluster,
  startTestOperator,
  type TestCluster,
  type TestOperator,
  userVisible,
} from "./support/operator.ts";
import { exampleImages, type LocalPod, runPod } from "./support/pod.ts";
import { type RedisServer, startRedis } from "./support/redis.ts";

const ns = "shop";
const name = "orders-api";

let cp: ControlPlane;
let client: KubeClient;
let cluster: TestCluster;
let idp: IdentityProvider;
let operator: TestOperator;
let pod: LocalPod | undefined;
let redis: RedisServer | undefined;
let before: { deployment: unknown; service: unknown };

async function call(
  port: number,
  path: string,
  init: { method?: string; token?: string; headers?: Record<string, string> } = {},
) {
  const headers: Record<string, string> = { ...init.headers };
  if (init.token) headers.authorization = `Bearer ${init.token}`;
  const response = await fetch(`http://127.0.0.1:${port}${path}`, { method: init.method ?? "GET", headers });
  const text = await response.text();
  const body = text.startsWith("{") ? (JSON.parse(text) as Record<string, unknown>) : {};
  return { status: response.status, body };
}

async function startPodFromApiServer(): Promise<LocalPod> {
  const deployment = await client.get<V1Deployment>(PATHS.deployment(ns, name));
  const configMaps = new Map<string, V1ConfigMap>();
  for (const volume of deployment.spec?.template.spec?.volumes ?? []) {
    const cmName = volume.configMap?.name;
    if (cmName) configMaps.set(cmName, await client.get<V1ConfigMap>(PATHS.configMap(ns, cmName)));
  }
  const secrets = new Map<string, V1Secret>();
  for (const container of deployment.spec?.template.spec?.initContainers ?? []) {
    for (const variable of container.env ?? []) {
      const ref = variable.valueFrom?.secretKeyRef;
      const secret = ref?.name
        ? await getOrUndefined<V1Secret>(client, PATHS.secret(ns, ref.name))
        : undefined;
      if (ref?.name && secret) secrets.set(ref.name, secret);
    }
  }
  const started = await runPod({ deployment, configMaps, secrets, images: await exampleImages() });
  // The kubelet's readiness probe, as the Deployment declares it: the pod takes Service traffic after it.
  const sidecar = deployment.spec?.template.spec?.initContainers?.find((c) => c.name === "portcullis");
  const probe = sidecar?.readinessProbe?.httpGet;
  expect(probe).toBeDefined();
  await eventually(
    "the pod is ready",
    async () =>
      (await fetch(`http://127.0.0.1:${started.port(String(probe?.port))}${probe?.path}`)).status === 200,
    60_000,
  );
  return started;
}

/** The local port behind the Service's targetPort, resolved against the pod like kube-proxy would. */
async function servicePort(): Promise<number> {
  const service = await client.get<V1Service>(PATHS.service(ns, name));
  const target = service.spec?.ports?.[0]?.targetPort;
  if (target === undefined || !pod) throw new Error("no targetPort or no pod");
  return pod.port(target);
}

beforeAll(async () => {
  cluster = await startTestCluster();
  ({ cp, client } = cluster);
  await createNamespace(client, ns);
  idp = await startIdentityProvider();
  const { deployment, service } = exampleWorkload(ns, name);
  await create(client, deployment);
  await create(client, service);
  before = {
    deployment: userVisible(await client.get(PATHS.deployment(ns, name))),
    service: userVisible(await client.get(PATHS.service(ns, name))),
  };
  // Shared rate limits: the sidecar's Redis URL from a Secret in the app's namespace.
  redis = await startRedis();
  await create(client, {
    apiVersion: "v1",
    kind: "Secret",
    metadata: { name: "rate-limits", namespace: ns },
    stringData: { url: redis.url },
  });
  await createNamespace(client, "portcullis-system");
  operator = await startTestOperator(
    cp.kubeConfig,
    operatorConfig((c) => {
      c.leaderElection.leaseNamespace = "portcullis-system";
      c.sidecarRedisUrl = { secret: { name: "rate-limits", key: "url" } };
    }),
  );
  const policy = examplePolicy(ns, name);
  policy.spec.authentication.issuers[0] = { ...policy.spec.authentication.issuers[0], issuer: idp.issuer };
  await create(client, policy);
  await eventually("the policy is Ready", async () => {
    const served = await getOrUndefined<ServedPolicy>(client, PATHS.policy(ns, name));
    return served && isReady(served);
  });
  pod = await startPodFromApiServer();
});

afterAll(async () => {
  await pod?.stop();
  await operator?.operator.stop();
  await idp?.stop();
  await redis?.remove();
  await cluster?.stop();
});

describe("end to end: operator, sidecar and app on a real control plane", () => {
  it("serves 200/401/403 with real tokens through the port the Service targets", async () => {
    const port = await servicePort();
    const [reader, admin] = await Promise.all([idp.token("reader"), idp.token("admin")]);

    const read = await call(port, "/orders", { token: reader, headers: { "X-Auth-Subject": "root" } });
    expect(read.status).toBe(200);
    const identity = read.body.identity as { x_auth: Record<string, string[]> };
    expect(identity.x_auth["x-auth-subject"]).toEqual(["reader"]);
    expect(identity.x_auth["x-auth-roles"]).toEqual(["reader"]);

    expect((await call(port, "/orders")).status).toBe(401);
    expect((await call(port, "/orders/1", { method: "DELETE", token: reader })).status).toBe(403);
    expect((await call(port, "/internal/x", { token: admin })).status).toBe(403);
    expect((await call(port, "/orders/1", { method: "DELETE", token: admin })).status).toBe(200);
    expect((await call(port, "/healthz")).status).toBe(200);
  });

  it("gives the sidecar its Redis URL from the Secret the operator references, never in the pod spec", async () => {
    const deployment = await client.get<V1Deployment>(PATHS.deployment(ns, name));
    expect(JSON.stringify(deployment)).not.toContain(redis?.url);
    const sidecarLog = () => pod?.processes.get("portcullis")?.logTail(400) ?? "";
    await eventually("the sidecar uses Redis", async () =>
      sidecarLog().includes("store: redis rate limits share buckets in Redis"),
    );
    expect(sidecarLog()).toContain(`127.0.0.1:${redis?.port}`);
  });

  it("delivers a rule change to the running sidecar through the ConfigMap, without a rollout", async () => {
    const template = (await client.get<V1Deployment>(PATHS.deployment(ns, name))).spec?.template;
    const policy = await client.get<ServedPolicy>(PATHS.policy(ns, name));
    const rules = policy.spec.authorization.rules.map((rule) =>
      rule.name === "read-orders" ? { ...rule, anyRole: ["admin"] } : rule,
    );
    await mergePatch(client, PATHS.policy(ns, name), { spec: { authorization: { rules } } });

    const configMapName = template?.spec?.volumes?.find((v) => v.configMap)?.configMap?.name ?? "";
    const updated = await eventually("the ConfigMap carries the new rule", async () => {
      const configMap = await client.get<V1ConfigMap>(PATHS.configMap(ns, configMapName));
      const document = parse(configMap.data?.["policy.yaml"] ?? "") as ServedPolicy;
      const rule = document.spec.authorization.rules.find((r) => r.name === "read-orders");
      return JSON.stringify(rule?.anyRole) === '["admin"]' ? configMap : undefined;
    });
    expect((await client.get<V1Deployment>(PATHS.deployment(ns, name))).spec?.template).toEqual(template);

    // The kubelet projects the new ConfigMap into the running pod; the sidecar reloads it.
    for (const volume of pod?.volumes.values() ?? []) volume.write(updated.data ?? {});
    const port = await servicePort();
    const reader = await idp.token("reader");
    await eventually(
      "the reader loses GET /orders",
      async () => (await call(port, "/orders", { token: reader })).status === 403,
    ).catch((error: Error) => {
      throw new Error(`${error.message}\nsidecar log:\n${pod?.processes.get("portcullis")?.logTail(30)}`);
    });
    expect((await call(port, "/orders", { token: await idp.token("admin") })).status).toBe(200);
  });

  it("restores the Deployment and the Service exactly when the policy is deleted", async () => {
    await client.request("DELETE", PATHS.policy(ns, name));
    await eventually(
      "the policy is gone",
      async () => (await getOrUndefined(client, PATHS.policy(ns, name))) === undefined,
    );
    await eventually("the Deployment is restored", async () => {
      const deployment = userVisible(await client.get(PATHS.deployment(ns, name)));
      return JSON.stringify(deployment) === JSON.stringify(before.deployment);
    });
    expect(userVisible(await client.get(PATHS.service(ns, name)))).toEqual(before.service);
  });
});
