// The operator against a real kube-apiserver + etcd (no kubelet): the CRD's validation, then the
// example policy's whole life on the example app: protected, idle without writes, rule and sidecar
// changes, a Deployment relabelled away, deletion restoring the user's objects exactly, two policies
// in conflict, and an invalid policy that leaves workloads alone.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  FINALIZER,
  LISTENER_PORT_NAME,
  ORIGINAL_TARGET_PORTS_ANNOTATION,
  POLICY_ANNOTATION,
  POLICY_VOLUME,
  PRESTOP_PATH,
  SIDECAR_HASH_ANNOTATION,
  SIDECAR_NAME,
} from "../operator/config.ts";
import { isApiError, type KubeClient, type KubeObject } from "../operator/kube-client.ts";
import { validatePolicyText } from "../policy/validate.ts";
import type { ControlPlane } from "./support/controlplane.ts";
import {
  condition,
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
  policyWhen,
  type ServedPolicy,
  startTestCluster,
  startTestOperator,
  type TestCluster,
  type TestOperator,
  userVisible,
} from "./support/operator.ts";
import { finishRollout } from "./support/rollouts.ts";

interface Container {
  name: string;
  restartPolicy?: string;
  image?: string;
  command?: string[];
  args?: string[];
  env?: { name: string; value?: string }[];
  ports?: { name?: string; containerPort: number }[];
  lifecycle?: unknown;
}
interface PodTemplate {
  metadata?: { labels?: Record<string, string>; annotations?: Record<string, string> };
  spec: { containers: Container[]; initContainers?: Container[]; volumes?: { name: string }[] };
}
type Deployment = KubeObject & { spec: { template: PodTemplate } };
type Service = KubeObject & { spec: { ports: { port: number; targetPort?: number | string }[] } };

let cp: ControlPlane;
let client: KubeClient;
let cluster: TestCluster;
let running: TestOperator;

beforeAll(async () => {
  // Rollouts held: "rollout" finishes its own; "invalid" proves the operator writes nothing there
  // (no status writes by the stand-in either).
  cluster = await startTestCluster({ holdRollouts: ["rollout", "invalid"] });
  ({ cp, client } = cluster);
  await createNamespace(client, "portcullis-system");
  running = await startTestOperator(
    cp.kubeConfig,
    operatorConfig((c) => {
      c.leaderElection.leaseNamespace = "portcullis-system";
      c.leaderElection.identity = "operator-under-test";
    }),
    { serveAdmin: true },
  );
});

afterAll(async () => {
  await running?.operator.stop();
  await cluster?.stop();
});

/** Creates the example Deployment and Service in a new namespace; returns them as served. */
async function exampleApp(namespace: string, name = "orders-api") {
  await createNamespace(client, namespace);
  const { deployment, service } = exampleWorkload(namespace, name);
  return {
    deployment: await create<Deployment>(client, deployment),
    service: await create<Service>(client, service),
  };
}

const getDeployment = (ns: string, name = "orders-api") => client.get<Deployment>(PATHS.deployment(ns, name));
const getService = (ns: string, name = "orders-api") => client.get<Service>(PATHS.service(ns, name));
const sidecarOf = (d: Deployment) =>
  d.spec.template.spec.initContainers?.find((c) => c.name === SIDECAR_NAME);

async function eventsIn(namespace: string): Promise<{ reason: string; involvedObject: { name: string } }[]> {
  const list = await client.get<{ items: { reason: string; involvedObject: { name: string } }[] }>(
    PATHS.events(namespace),
  );
  return list.items;
}

describe("the CRD on the API server", () => {
  const rejects = async (what: string, mutate: (spec: ReturnType<typeof examplePolicy>["spec"]) => void) => {
    const policy = examplePolicy("default", `bad-${what}`);
    mutate(policy.spec);
    const error = await create(client, policy).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(isApiError(error, 422), `${what}: ${String(error)}`).toBe(true);
    return (error as Error).message;
  };

  it("rejects a bad method (schema)", async () => {
    const message = await rejects("method", (spec) => {
      (spec.authorization.rules[0] as { methods: string[] }).methods = ["FETCH"];
    });
    expect(message).toMatch(/FETCH/);
  });

  it("rejects a rule both public and deny, a listener on the upstream port, and no issuer (CEL)", async () => {
    expect(
      await rejects("both", (spec) => {
        Object.assign(spec.authorization.rules[0] as object, { deny: true });
      }),
    ).toMatch(/exactly one of/);
    expect(
      await rejects("ports", (spec) => {
        spec.upstream.port = spec.listener.port;
      }),
    ).toMatch(/listener.port must differ from upstream.port/);
    expect(
      await rejects("issuers", (spec) => {
        spec.authentication.issuers = [];
      }),
    ).toMatch(/issuers/);
  });
});

describe("the example policy on the example app", () => {
  const ns = "shop";
  let original: { deployment: Deployment; service: Service };
  let protectedDeployment: Deployment;

  it("adds the sidecar, retargets the Service, and reports Ready", async () => {
    original = await exampleApp(ns);
    await create(client, examplePolicy(ns));
    const policy = await policyWhen(client, ns, "orders-api", "Ready", isReady);

    expect(policy.metadata?.finalizers).toContain(FINALIZER);
    expect(condition(policy, "Accepted")?.status).toBe("True");
    expect(policy.status?.targets).toEqual([
      expect.objectContaining({ kind: "Deployment", name: "orders-api", state: "Protected" }),
    ]);
    expect(policy.status?.protectedTargets).toBe(1);

    const deployment = await getDeployment(ns);
    protectedDeployment = deployment;
    expect(deployment.metadata?.annotations?.[POLICY_ANNOTATION]).toBe("orders-api");
    expect(deployment.metadata?.ownerReferences).toBeUndefined();
    const sidecar = sidecarOf(deployment);
    // kube-apiserver 1.35: a native sidecar.
    expect(sidecar?.restartPolicy).toBe("Always");
    expect(sidecar?.args).toEqual([
      "--policy",
      "/etc/portcullis/policy.yaml",
      "--upstream",
      "http://127.0.0.1:8000",
      "--listen",
      "0.0.0.0:8080",
      "--admin",
      expect.stringMatching(/^0\.0\.0\.0:\d+$/),
    ]);
    expect(deployment.spec.template.spec.volumes?.map((v) => v.name)).toContain(POLICY_VOLUME);
    expect(deployment.spec.template.metadata?.annotations?.[SIDECAR_HASH_ANNOTATION]).toMatch(
      /^[0-9a-f]{16}$/,
    );
    // The app container is as the user wrote it, plus the preStop hook that holds its shutdown on the
    // sidecar (the API server fills in the hook's scheme).
    const withoutHook = deployment.spec.template.spec.containers.map(({ lifecycle, ...rest }) => {
      expect(lifecycle).toEqual({ preStop: { httpGet: { path: PRESTOP_PATH, port: 9901, scheme: "HTTP" } } });
      return rest;
    });
    expect(withoutHook).toEqual(original.deployment.spec.template.spec.containers);

    const service = await getService(ns);
    expect(service.spec.ports[0]?.targetPort).toBe(LISTENER_PORT_NAME);
    expect(JSON.parse(service.metadata?.annotations?.[ORIGINAL_TARGET_PORTS_ANNOTATION] ?? "{}")).toEqual({
      "80/TCP": "http",
    });

    const configMap = await client.get<KubeObject & { data: Record<string, string> }>(
      PATHS.configMap(ns, "portcullis-orders-api"),
    );
    const validated = validatePolicyText(configMap.data["policy.yaml"] ?? "", Date.now());
    expect(validated.problems.filter((p) => p.severity === "error")).toEqual([]);
    expect(validated.policy?.metadata?.name).toBe("orders-api");
    expect(configMap.metadata?.ownerReferences?.[0]).toMatchObject({
      kind: "AccessPolicy",
      name: "orders-api",
    });

    const events = await eventually("a Protected event", async () => {
      const items = await eventsIn(ns);
      return items.some((e) => e.reason === "Protected") ? items : undefined;
    });
    expect(events.find((e) => e.reason === "Protected")?.involvedObject.name).toBe("orders-api");
  });

  it("writes nothing when reconciling again", async () => {
    await running.operator.idle();
    const objects = [
      { kind: "policies", path: PATHS.policy(ns, "orders-api"), name: "orders-api" },
      { kind: "deployments", path: PATHS.deployment(ns, "orders-api"), name: "orders-api" },
      { kind: "services", path: PATHS.service(ns, "orders-api"), name: "orders-api" },
      {
        kind: "configMaps",
        path: PATHS.configMap(ns, "portcullis-orders-api"),
        name: "portcullis-orders-api",
      },
    ] as const;
    const versions = async () =>
      Promise.all(objects.map(async (o) => (await client.get<KubeObject>(o.path)).metadata?.resourceVersion));
    const before = await versions();
    // Compare like with like: the operator's caches have seen the objects as served now.
    await eventually("the operator's caches caught up", () =>
      objects.every(
        (o, i) => running.operator.cached(o.kind, ns, o.name)?.metadata?.resourceVersion === before[i],
      ),
    );
    await running.operator.idle();
    const mark = running.calls.calls.length;
    running.operator.resync();
    await running.operator.idle();
    expect(running.calls.writes(mark)).toEqual([]);
    expect(await versions()).toEqual(before);
  });

  it("updates the ConfigMap but not the pod template when rules change", async () => {
    const policy = await client.get<ServedPolicy>(PATHS.policy(ns, "orders-api"));
    const rules = [...policy.spec.authorization.rules, { name: "metrics", paths: ["/metrics"], deny: true }];
    await mergePatch(client, PATHS.policy(ns, "orders-api"), { spec: { authorization: { rules } } });
    await eventually("the ConfigMap carries the new rule", async () => {
      const cm = await client.get<{ data: Record<string, string> }>(
        PATHS.configMap(ns, "portcullis-orders-api"),
      );
      return cm.data["policy.yaml"]?.includes("name: metrics");
    });
    await policyWhen(client, ns, "orders-api", "Ready at the new generation", isReady);
    await running.operator.idle();
    const deployment = await getDeployment(ns);
    expect(deployment.spec.template).toEqual(protectedDeployment.spec.template);
    expect(deployment.metadata?.resourceVersion).toBe(protectedDeployment.metadata?.resourceVersion);
  });

  it("changes the pod template when sidecar settings change", async () => {
    await mergePatch(client, PATHS.policy(ns, "orders-api"), { spec: { sidecar: { logLevel: "debug" } } });
    const deployment = await eventually("the sidecar logs at debug", async () => {
      const d = await getDeployment(ns);
      const level = sidecarOf(d)?.env?.find((e) => e.name === "PORTCULLIS_LOG_LEVEL")?.value;
      return level === "debug" ? d : undefined;
    });
    expect(deployment.spec.template.metadata?.annotations?.[SIDECAR_HASH_ANNOTATION]).not.toBe(
      protectedDeployment.spec.template.metadata?.annotations?.[SIDECAR_HASH_ANNOTATION],
    );
    await policyWhen(client, ns, "orders-api", "Ready after the sidecar change", isReady);
  });

  it("restores the Deployment and the Service exactly when the policy is deleted", async () => {
    await client.request("DELETE", PATHS.policy(ns, "orders-api"));
    await eventually(
      "the policy is gone",
      async () => (await getOrUndefined(client, PATHS.policy(ns, "orders-api"))) === undefined,
    );
    expect(userVisible(await getDeployment(ns))).toEqual(userVisible(original.deployment));
    expect(userVisible(await getService(ns))).toEqual(userVisible(original.service));
    expect(await getOrUndefined(client, PATHS.configMap(ns, "portcullis-orders-api"))).toBeUndefined();
    await running.operator.idle();
    const events = await eventsIn(ns);
    // Once: the reconcile after the deletion finds the release done (no orphan pass repeats it).
    expect(events.filter((e) => e.reason === "Removed")).toHaveLength(1);
  });
});

describe("a Service in front of a Deployment still rolling the sidecar out", () => {
  const ns = "rollout";

  it("keeps its target until every pod has the sidecar, then points at it", async () => {
    const original = await exampleApp(ns);
    await create(client, examplePolicy(ns));
    const pending = await policyWhen(client, ns, "orders-api", "waiting for the rollout", (p) =>
      (p.status?.targets ?? []).some((t) => t.state === "Pending" && /rolling out/.test(t.message ?? "")),
    );
    expect(condition(pending, "Ready")?.status).toBe("False");
    expect(sidecarOf(await getDeployment(ns))).toBeDefined();
    // Pods without the sidecar would drop out of a Service pointed at its named port: not yet.
    expect(userVisible(await getService(ns))).toEqual(userVisible(original.service));

    await finishRollout(client, ns, "orders-api");
    await policyWhen(client, ns, "orders-api", "Ready", isReady);
    expect((await getService(ns)).spec.ports[0]?.targetPort).toBe(LISTENER_PORT_NAME);
    cluster.rollouts.release(ns);
  });
});

describe("a sidecar edited by hand", () => {
  const ns = "drift";

  it("is written back as the policy says", async () => {
    await exampleApp(ns);
    await create(client, examplePolicy(ns));
    await policyWhen(client, ns, "orders-api", "Ready", isReady);
    const before = await getDeployment(ns);
    const written = sidecarOf(before);
    expect(written?.image).toBeDefined();

    // As `kubectl edit` would: an update under another field manager, the hash annotation untouched.
    const edited = structuredClone(before);
    const sidecar = sidecarOf(edited);
    if (sidecar === undefined) throw new Error("no sidecar");
    Object.assign(sidecar, {
      image: "registry.example/not-portcullis:latest",
      command: ["sleep", "infinity"],
    });
    await client.request("PUT", PATHS.deployment(ns, "orders-api"), {
      query: { fieldManager: "kubectl-edit" },
      body: edited,
    });

    const restored = await eventually("the sidecar is the operator's again", async () => {
      const d = await getDeployment(ns);
      return sidecarOf(d)?.image === written?.image ? d : undefined;
    });
    expect(sidecarOf(restored)?.command).toEqual(["portcullis-proxy"]);
    expect(restored.spec.template.metadata?.annotations?.[SIDECAR_HASH_ANNOTATION]).toBe(
      before.spec.template.metadata?.annotations?.[SIDECAR_HASH_ANNOTATION],
    );
  });
});

describe("a policy deleted after its finalizer was removed by hand", () => {
  const ns = "orphans";

  it("still gets its Deployment and Service restored", async () => {
    const original = await exampleApp(ns);
    await create(client, examplePolicy(ns));
    await policyWhen(client, ns, "orders-api", "Ready", isReady);
    expect(sidecarOf(await getDeployment(ns))).toBeDefined();

    await mergePatch(client, PATHS.policy(ns, "orders-api"), { metadata: { finalizers: null } });
    await client.request("DELETE", PATHS.policy(ns, "orders-api"));
    await eventually(
      "the Deployment is restored",
      async () =>
        JSON.stringify(userVisible(await getDeployment(ns))) ===
        JSON.stringify(userVisible(original.deployment)),
    );
    await eventually(
      "the Service is restored",
      async () =>
        JSON.stringify(userVisible(await getService(ns))) === JSON.stringify(userVisible(original.service)),
    );
    expect(await getOrUndefined(client, PATHS.policy(ns, "orders-api"))).toBeUndefined();
  });
});

describe("a Deployment relabelled out of the selector", () => {
  const ns = "relabel";

  it("loses the sidecar and its Service is restored", async () => {
    await createNamespace(client, ns);
    const { deployment, service } = exampleWorkload(ns);
    const template = (deployment.spec as { template: PodTemplate }).template;
    template.metadata = { labels: { app: "orders-api", protect: "yes" } };
    const created = await create<Deployment>(client, deployment);
    const createdService = await create<Service>(client, service);
    const policy = examplePolicy(ns);
    policy.spec.selector = { matchLabels: { app: "orders-api", protect: "yes" } };
    await create(client, policy);
    await policyWhen(client, ns, "orders-api", "Ready", isReady);
    expect(sidecarOf(await getDeployment(ns))).toBeDefined();

    await mergePatch(client, PATHS.deployment(ns, "orders-api"), {
      spec: { template: { metadata: { labels: { protect: "no" } } } },
    });
    const released = await eventually("the sidecar is removed", async () => {
      const d = await getDeployment(ns);
      return sidecarOf(d) === undefined ? d : undefined;
    });
    const expected = structuredClone(created);
    (expected.spec.template.metadata as { labels: Record<string, string> }).labels.protect = "no";
    expect(userVisible(released)).toEqual(userVisible(expected));
    await eventually("the Service is restored", async () => {
      const s = await getService(ns);
      return JSON.stringify(userVisible(s)) === JSON.stringify(userVisible(createdService));
    });
    const status = await policyWhen(
      client,
      ns,
      "orders-api",
      "no targets",
      (p) => condition(p, "Ready")?.reason === "NoTargets",
    );
    expect(status.status?.targets).toEqual([]);
  });
});

describe("two policies selecting one Deployment", () => {
  const ns = "conflict";

  it("leaves it to the older one; the newer reports Conflict", async () => {
    await exampleApp(ns);
    await create(client, examplePolicy(ns, "first"));
    await policyWhen(client, ns, "first", "Ready", isReady);
    await create(client, examplePolicy(ns, "second"));
    const second = await policyWhen(
      client,
      ns,
      "second",
      "Conflict",
      (p) => condition(p, "Conflict")?.status === "True",
    );
    expect(condition(second, "Ready")?.status).toBe("False");
    expect(second.status?.targets).toEqual([
      expect.objectContaining({
        name: "orders-api",
        state: "Conflict",
        message: expect.stringContaining("first"),
      }),
    ]);
    const first = await policyWhen(client, ns, "first", "still Ready", isReady);
    expect(condition(first, "Conflict")?.status).toBe("False");
    expect((await getDeployment(ns)).metadata?.annotations?.[POLICY_ANNOTATION]).toBe("first");
    await eventually("a Conflict event", async () =>
      (await eventsIn(ns)).some((e) => e.reason === "Conflict"),
    );
  });
});

describe("an invalid policy", () => {
  const ns = "invalid";

  it("reports Accepted=False and leaves the workloads untouched", async () => {
    const { deployment, service } = await exampleApp(ns);
    const policy = examplePolicy(ns);
    // Valid for the schema, not for the semantic checks: a token issuer over plain http off loopback.
    policy.spec.authentication.issuers[0] = { issuer: "http://idp.example.com", audiences: ["api://orders"] };
    await create(client, policy);
    const served = await policyWhen(
      client,
      ns,
      "orders-api",
      "Accepted=False",
      (p) => condition(p, "Accepted")?.status === "False",
    );
    expect(condition(served, "Accepted")?.message).toMatch(/issuer/);
    expect(condition(served, "Ready")?.status).toBe("False");
    await running.operator.idle();
    expect((await getDeployment(ns)).metadata?.resourceVersion).toBe(deployment.metadata?.resourceVersion);
    expect((await getService(ns)).metadata?.resourceVersion).toBe(service.metadata?.resourceVersion);
    expect(await getOrUndefined(client, PATHS.configMap(ns, "portcullis-orders-api"))).toBeUndefined();
  });
});

describe("a policy deleted, finalizer stripped, while no operator ran", () => {
  const ns = "offline";

  it("has its Deployment and Service restored by the next operator that starts", async () => {
    const original = await exampleApp(ns);
    await create(client, examplePolicy(ns));
    await policyWhen(client, ns, "orders-api", "Ready", isReady);

    await running.operator.stop();
    await mergePatch(client, PATHS.policy(ns, "orders-api"), { metadata: { finalizers: null } });
    await client.request("DELETE", PATHS.policy(ns, "orders-api"));
    expect(await getOrUndefined(client, PATHS.policy(ns, "orders-api"))).toBeUndefined();
    expect(sidecarOf(await getDeployment(ns))).toBeDefined();

    // Its informers list the Deployment marked by a policy that no longer exists: that is a key too.
    running = await startTestOperator(
      cp.kubeConfig,
      operatorConfig((c) => {
        c.leaderElection.leaseNamespace = "portcullis-system";
        c.leaderElection.identity = "operator-after-restart";
      }),
      { serveAdmin: true },
    );
    await eventually(
      "the Deployment is restored",
      async () =>
        JSON.stringify(userVisible(await getDeployment(ns))) ===
        JSON.stringify(userVisible(original.deployment)),
      30_000,
    );
    await eventually(
      "the Service is restored",
      async () =>
        JSON.stringify(userVisible(await getService(ns))) === JSON.stringify(userVisible(original.service)),
    );
  });
});

describe("the admin endpoints", () => {
  it("serve health, readiness and the operator's metrics", async () => {
    const base = `http://127.0.0.1:${running.operator.admin?.port}`;
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
    expect((await fetch(`${base}/readyz`)).status).toBe(200);
    const metrics = await (await fetch(`${base}/metrics`)).text();
    expect(metrics).toMatch(/portcullis_operator_reconciles_total\{result="success"\} [1-9]/);
    expect(metrics).toContain("portcullis_operator_reconcile_duration_seconds_bucket");
    expect(metrics).toMatch(/portcullis_operator_queue_depth \d+/);
    expect(metrics).toContain("portcullis_operator_retries_total");
  });
});
