// The operator at scale on a real kube-apiserver + etcd: 1,000 Deployments (each with a Service) in 20
// namespaces and 200 AccessPolicies (each selecting 5 Deployments), all created before the operator
// starts. Measured on the portcullis-operator binary in a child process (its memory is its own):
//   cold start   time from spawn until every policy is Ready at its generation, API requests by verb,
//                reconciles, peak RSS (VmHWM)
//   idle         writes during a quiet period after convergence (should be 0)
//   restart      a second operator process on the converged cluster: requests and writes until its
//                queue is empty (should write nothing)
// A plain script, not a test:   npx node bench/operator-scale.ts [--namespaces 20] [--per-namespace 50]
// The control plane comes from the test harness (test/controlplane/build.sh builds the binaries).
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { KubeClient, type KubeObject, resourcePath } from "../operator/kube-client.ts";
import { startControlPlane } from "../test/support/controlplane.ts";
import {
  examplePolicy,
  exampleWorkload,
  installCrd,
  PATHS,
  type ServedPolicy,
} from "../test/support/operator.ts";
import { startRolloutStandIn } from "../test/support/rollouts.ts";

const { values } = parseArgs({
  options: {
    namespaces: { type: "string", default: "20" },
    "per-namespace": { type: "string", default: "50" },
    "deployments-per-policy": { type: "string", default: "5" },
    workers: { type: "string", default: "4" },
  },
});
const NAMESPACES = Number(values.namespaces);
const PER_NAMESPACE = Number(values["per-namespace"]);
const PER_POLICY = Number(values["deployments-per-policy"]);
const POLICIES_PER_NAMESPACE = Math.ceil(PER_NAMESPACE / PER_POLICY);
const TOTAL_POLICIES = NAMESPACES * POLICIES_PER_NAMESPACE;
const SETPRIV = "/usr/bin/setpriv";
const root = join(import.meta.dirname, "..");

const namespaceName = (n: number) => `scale-${String(n).padStart(2, "0")}`;

/** Runs `task` over `items` with at most `limit` in flight. */
async function inParallel<T>(items: readonly T[], limit: number, task: (item: T) => Promise<unknown>) {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const item = items[next++] as T;
      await task(item);
    }
  };
  await Promise.all(Array.from({ length: limit }, worker));
}

async function populate(client: KubeClient): Promise<void> {
  const objects: KubeObject[] = [];
  for (let n = 0; n < NAMESPACES; n++) {
    const ns = namespaceName(n);
    await client.request("POST", "/api/v1/namespaces", { body: { metadata: { name: ns } } });
    for (let i = 0; i < PER_NAMESPACE; i++) {
      const name = `app-${String(i).padStart(3, "0")}`;
      const { deployment, service } = exampleWorkload(ns, name);
      const template = (deployment.spec as { template: { metadata: { labels: Record<string, string> } } })
        .template;
      template.metadata.labels.group = `g${Math.floor(i / PER_POLICY)}`;
      // The harness's service CIDR is a /24: headless Services need no IP and are retargeted alike.
      (service.spec as { clusterIP?: string }).clusterIP = "None";
      objects.push(deployment, service);
    }
    for (let p = 0; p < POLICIES_PER_NAMESPACE; p++) {
      const policy = examplePolicy(ns, `policy-${p}`);
      policy.spec.selector = { matchLabels: { group: `g${p}` } };
      objects.push(policy);
    }
  }
  const plural: Record<string, string> = {
    Deployment: "deployments",
    Service: "services",
    AccessPolicy: "accesspolicies",
  };
  await inParallel(objects, 16, (object) =>
    client.request(
      "POST",
      resourcePath(object.apiVersion ?? "", plural[object.kind ?? ""] ?? "", object.metadata?.namespace),
      {
        body: object,
      },
    ),
  );
}

interface OperatorProcess {
  child: ChildProcess;
  adminUrl: Promise<string>;
  exited: Promise<number | null>;
}

function spawnOperator(kubeconfigPath: string, identity: string): OperatorProcess {
  const argv = [
    join(root, "operator", "main.ts"),
    "--admin=127.0.0.1:0",
    "--lease-namespace=portcullis-system",
    `--identity=${identity}`,
    `--workers=${values.workers}`,
    "--log-level=info",
  ];
  const [file, args] = existsSync(SETPRIV)
    ? [SETPRIV, ["--pdeathsig", "KILL", "--", process.execPath, ...argv]]
    : [process.execPath, argv];
  const child = spawn(file, args, {
    env: { ...process.env, KUBECONFIG: kubeconfigPath, KUBERNETES_SERVICE_HOST: "" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const adminUrl = new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).on("line", (text) => {
      try {
        const line = JSON.parse(text) as { msg?: string; admin?: string; level?: number };
        if (line.msg === "started" && line.admin) resolve(`http://${line.admin}`);
        else if ((line.level ?? 0) >= 40) process.stderr.write(`operator: ${text}\n`);
      } catch {
        process.stderr.write(`operator: ${text}\n`);
      }
    });
    void exited.then(() => reject(new Error("the operator exited before it started")));
  });
  return { child, adminUrl, exited };
}

/** Peak and current resident set of a process (the kernel's high-water mark and VmRSS), and CPU time. */
function processFigures(pid: number): string {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const mib = (field: string) =>
    Number(new RegExp(`${field}:\\s+(\\d+)\\s+kB`).exec(status)?.[1] ?? "0") / 1024;
  // utime and stime, fields 14 and 15 of /proc/<pid>/stat, in clock ticks (100 per second on Linux).
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const cpuSeconds = (Number(fields[11]) + Number(fields[12])) / 100;
  return `peak RSS ${mib("VmHWM").toFixed(0)} MiB, RSS now ${mib("VmRSS").toFixed(0)} MiB, CPU ${cpuSeconds.toFixed(1)} s`;
}

interface Scrape {
  requests: Map<string, number>;
  reconciles: number;
  queueDepth: number;
}

async function scrape(adminUrl: string): Promise<Scrape> {
  const text = await (await fetch(`${adminUrl}/metrics`)).text();
  const requests = new Map<string, number>();
  let reconciles = 0;
  let queueDepth = 0;
  for (const line of text.split("\n")) {
    const request = /^portcullis_operator_api_requests_total\{verb="(\w+)",code="(\d+)"\} (\S+)/.exec(line);
    if (request) {
      const verb = request[1] as string;
      requests.set(verb, (requests.get(verb) ?? 0) + Number(request[3]));
    }
    const reconcile = /^portcullis_operator_reconciles_total\{result="\w+"\} (\S+)/.exec(line);
    if (reconcile) reconciles += Number(reconcile[1]);
    const depth = /^portcullis_operator_queue_depth (\S+)/.exec(line);
    if (depth) queueDepth = Number(depth[1]);
  }
  return { requests, reconciles, queueDepth };
}

const writesOf = (s: Scrape) =>
  (s.requests.get("PATCH") ?? 0) + (s.requests.get("POST") ?? 0) + (s.requests.get("DELETE") ?? 0);
const describeRequests = (s: Scrape) =>
  [...s.requests.entries()]
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([verb, count]) => `${verb} ${count}`)
    .join(", ");

async function readyPolicies(client: KubeClient): Promise<number> {
  const list = await client.get<{ items: ServedPolicy[] }>(
    resourcePath("portcullis.dev/v1alpha1", "accesspolicies", undefined),
  );
  return list.items.filter(
    (p) =>
      p.status?.observedGeneration === p.metadata?.generation &&
      p.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True"),
  ).length;
}

async function stopOperator(operator: OperatorProcess): Promise<number | null> {
  operator.child.kill("SIGTERM");
  return operator.exited;
}

const cp = await startControlPlane({ local: true });
const client = new KubeClient(cp.kubeConfig);
// No kube-controller-manager: a stand-in finishes each rollout (the Services wait for them), with a
// client of its own so its requests are not the operator's. Its work is inside the cold start time.
const standInClient = new KubeClient(cp.kubeConfig);
const rollouts = startRolloutStandIn(standInClient);
try {
  await installCrd(client);
  await client.request("POST", "/api/v1/namespaces", { body: { metadata: { name: "portcullis-system" } } });
  const populateStart = performance.now();
  await populate(client);
  console.log(
    `populated: ${NAMESPACES * PER_NAMESPACE} Deployments + Services, ${TOTAL_POLICIES} AccessPolicies in ` +
      `${NAMESPACES} namespaces (${((performance.now() - populateStart) / 1000).toFixed(1)} s)`,
  );

  // --- cold start -----------------------------------------------------------------------------------
  const started = performance.now();
  const first = spawnOperator(cp.kubeconfigPath, "bench-1");
  const firstAdmin = await first.adminUrl;
  let ready = 0;
  while (ready < TOTAL_POLICIES) {
    await new Promise((resolve) => setTimeout(resolve, 200));
    ready = await readyPolicies(client);
  }
  const coldSeconds = (performance.now() - started) / 1000;
  const cold = await scrape(firstAdmin);
  console.log(
    `cold start: all ${TOTAL_POLICIES} policies Ready after ${coldSeconds.toFixed(2)} s; ` +
      `${cold.reconciles} reconciles; API requests: ${describeRequests(cold)}; ` +
      processFigures(first.child.pid as number),
  );

  // --- idle -----------------------------------------------------------------------------------------
  let settled = await scrape(firstAdmin);
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    const next = await scrape(firstAdmin);
    const quiet = next.reconciles === settled.reconciles && next.queueDepth === 0;
    settled = next;
    if (quiet) break;
  }
  await new Promise((resolve) => setTimeout(resolve, 10_000));
  const idle = await scrape(firstAdmin);
  console.log(
    `idle 10 s after convergence: ${writesOf(idle) - writesOf(settled)} writes, ` +
      `${idle.reconciles - settled.reconciles} reconciles; ${processFigures(first.child.pid as number)}`,
  );
  const firstExit = await stopOperator(first);

  // --- restart on a converged cluster ---------------------------------------------------------------
  const restarted = performance.now();
  const second = spawnOperator(cp.kubeconfigPath, "bench-2");
  const secondAdmin = await second.adminUrl;
  let after = await scrape(secondAdmin);
  while (after.reconciles < TOTAL_POLICIES || after.queueDepth > 0) {
    await new Promise((resolve) => setTimeout(resolve, 200));
    after = await scrape(secondAdmin);
  }
  console.log(
    `restart: ${after.reconciles} reconciles in ${((performance.now() - restarted) / 1000).toFixed(2)} s, ` +
      `${writesOf(after)} writes; API requests: ${describeRequests(after)}; ` +
      processFigures(second.child.pid as number),
  );
  const secondExit = await stopOperator(second);
  console.log(`exit codes on SIGTERM: ${firstExit}, ${secondExit}`);
  const sample = await client.get<ServedPolicy>(PATHS.policy(namespaceName(0), "policy-0"));
  console.log(
    `sample status: ${JSON.stringify(sample.status?.conditions?.map((c) => `${c.type}=${c.status}`))}`,
  );
} finally {
  await rollouts.stop();
  await standInClient.close();
  await client.close();
  await cp.stop();
}
