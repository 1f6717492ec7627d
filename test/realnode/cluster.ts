// A real single-node Kubernetes cluster for end-to-end tests: etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler, containerd + runc, kubelet, kube-proxy (iptables), a
// CNI bridge and kube-router's NetworkPolicy controller, all started by this test process and torn
// down again leaving nothing behind (processes, mounts, network interfaces, iptables rules, ipsets,
// cgroups, host paths, sysctls).
// After ../shared/realnode/RECIPE.md; every gotcha it names is handled here and commented where.
//
// Addresses: the node has its own address (on lo), in the RFC 2544 test range, so
// nothing binds to or targets the machine's real network. Pods are in 198.18.1.0/24 on a bridge,
// Services in 198.19.0.0/24. Only one real node runs on a machine at a time (a lock).
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readdir, readFile, readlink, rm, writeFile } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { CoreV1Api, KubeConfig, RbacAuthorizationV1Api, type V1Node } from "@kubernetes/client-node";
import { freePort } from "../../examples/free-port.ts";
import { controlPlaneBinDir } from "../support/controlplane.ts";
import {
  issueClientCertificate,
  issueControlPlanePki,
  issueServingCertificate,
} from "../support/controlplane-pki.ts";
import {
  processExists,
  type SupervisedProcess,
  startSupervisedProcess,
} from "../support/supervised-process.ts";
import { buildPauseImage, type ImageArchive } from "./images.ts";

const exec = promisify(execFile);

export const NODE_IP = "198.18.0.1";
const BRIDGE = "portcullis-br0";
const POD_CIDR = "198.18.1.0/24";
const SERVICE_CIDR = "198.19.0.0/24";
const KUBERNETES_SERVICE_IP = "198.19.0.1";
const CNI_BIN = "/usr/lib/cni";
const STATE_PREFIX = "/tmp/portcullis-realnode-";
const LOCK = "/tmp/portcullis-realnode.lock";
/** Ports the node components listen on that cannot be chosen freely (kubelet's are fixed in the API). */
const FIXED_PORTS = [10250, 10248, 10257, 10259, 10249, 10256];
const SYSCTLS = [
  "net.ipv4.ip_forward",
  "net.bridge.bridge-nf-call-iptables",
  "vm.overcommit_memory",
  "vm.panic_on_oom",
  "kernel.panic",
  "kernel.panic_on_oops",
  "kernel.keys.root_maxkeys",
  "kernel.keys.root_maxbytes",
];
/** Paths the kubelet, containerd's libcni and kcm create outside their directories (RECIPE gotcha 4). */
const HOST_PATHS = [
  "/var/lib/kubelet",
  "/var/log/containers",
  "/var/log/pods",
  "/var/run/netns",
  "/etc/kubernetes",
  "/var/lib/cni",
  "/usr/libexec/kubernetes",
];

/** kube-router: PORTCULLIS_KUBE_ROUTER (set by test/setup/prepare.ts), else its build script's cache. */
async function kubeRouterBinary(): Promise<string> {
  const fromEnv = process.env.PORTCULLIS_KUBE_ROUTER;
  if (fromEnv) return fromEnv;
  const script = join(import.meta.dirname, "..", "kube-router", "build.sh");
  return join((await run(script, [])).trim(), "kube-router");
}

export interface RealNodeOptions {
  /** The kubelet's syncFrequency: how soon a ConfigMap change reaches a pod's volume. Default 1m. */
  syncFrequency?: string;
  /** Images imported before the node registers (the pause image always is). */
  images?: readonly ImageArchive[];
}

export interface RealNode {
  readonly dir: string;
  readonly kubeconfigPath: string;
  readonly kubeConfig: KubeConfig;
  readonly nodeName: string;
  /** The node's address: host services that pods must reach (an IdP) listen here. */
  readonly nodeIp: string;
  /** Milliseconds from start to Node Ready, and to the default ServiceAccount (pods accepted). */
  readonly startup: { readyMs: number; usableMs: number };
  importImage(image: ImageArchive): Promise<void>;
  /** The last lines of a component's log (etcd, kube-apiserver, kubelet, containerd...). */
  logTail(component: string, lines?: number): string;
  stop(): Promise<void>;
}

interface HostState {
  owner: number;
  sysctls: Record<string, string>;
  existingPaths: string[];
}

async function run(command: string, args: readonly string[]): Promise<string> {
  const { stdout } = await exec(command, args, { maxBuffer: 64 * 1024 * 1024 });
  return stdout;
}

async function tryRun(command: string, args: readonly string[]): Promise<string | undefined> {
  try {
    return await run(command, args);
  } catch {
    return undefined;
  }
}

async function waitFor(
  what: string,
  timeoutMs: number,
  check: () => Promise<boolean>,
  log?: () => string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check().catch(() => false)) return;
    if (Date.now() > deadline)
      throw new Error(`real node: timed out waiting for ${what}${log ? `:\n${log()}` : ""}`);
    await sleep(200);
  }
}

// ---------------------------------------------------------------------------------------------
// The lock: one real node per machine (fixed kubelet ports, one bridge, host sysctls)

async function acquireLock(): Promise<void> {
  const deadline = Date.now() + 15 * 60_000;
  for (;;) {
    try {
      await writeFile(LOCK, String(process.pid), { flag: "wx" });
      return;
    } catch {
      const holder = Number.parseInt(await readFile(LOCK, "utf8").catch(() => ""), 10);
      if (!Number.isInteger(holder) || !processExists(holder)) {
        await rm(LOCK, { force: true });
        continue;
      }
      if (Date.now() > deadline) throw new Error(`real node: another test process (${holder}) holds ${LOCK}`);
      await sleep(1000);
    }
  }
}

async function releaseLock(): Promise<void> {
  const holder = await readFile(LOCK, "utf8").catch(() => "");
  if (holder.trim() === String(process.pid)) await rm(LOCK, { force: true });
}

// ---------------------------------------------------------------------------------------------
// Start

export async function startRealNode(options: RealNodeOptions = {}): Promise<RealNode> {
  if (process.getuid?.() !== 0)
    throw new Error("real node: must run as root (kubelet, containerd, iptables)");
  const bin = await controlPlaneBinDir();
  const kubeRouter = await kubeRouterBinary();
  for (const path of [
    kubeRouter,
    "/usr/sbin/ipset",
    ...["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"].map(
      (b) => join(bin, b),
    ),
    "/usr/bin/containerd",
    "/usr/bin/ctr",
    "/usr/sbin/runc",
    ...["bridge", "host-local", "loopback", "portmap"].map((b) => join(CNI_BIN, b)),
  ]) {
    if (!existsSync(path))
      throw new Error(`real node: ${path} is missing (npm test prepares it: test/setup/prepare.ts)`);
  }
  await acquireLock();
  try {
    await cleanUpAbandoned();
    return await bringUp(bin, kubeRouter, options);
  } catch (error) {
    await releaseLock();
    throw error;
  }
}

async function bringUp(bin: string, kubeRouter: string, options: RealNodeOptions): Promise<RealNode> {
  const started = Date.now();
  const dir = `${STATE_PREFIX}${process.pid}`;
  await rm(dir, { recursive: true, force: true });
  for (const sub of ["pki", "logs", "etcd", "kubelet", "pod-logs", "cni/net.d", "cni/ipam", "containerd"]) {
    await mkdir(join(dir, sub), { recursive: true, mode: 0o700 });
  }
  for (const port of FIXED_PORTS) {
    const listening = await tryRun("ss", ["-Hltn", `sport = :${port}`]);
    if (listening?.trim()) throw new Error(`real node: port ${port} is in use`);
  }

  // Host state this node changes, recorded before anything changes it (restored by stop()).
  const host: HostState = { owner: process.pid, sysctls: {}, existingPaths: [] };
  for (const key of SYSCTLS) {
    const value = await tryRun("sysctl", ["-n", key]);
    if (value !== undefined) host.sysctls[key] = value.trim();
  }
  host.existingPaths = HOST_PATHS.filter((p) => existsSync(p));
  await writeFile(join(dir, "host.json"), JSON.stringify(host));

  const processes = new Map<string, SupervisedProcess>();
  const node: RealNodeInternal = { dir, processes, host };
  try {
    await tryRun("modprobe", ["br_netfilter"]);
    await tryRun("modprobe", ["overlay"]);
    // On lo: this kernel has no dummy interfaces, and any address on lo is local to the host.
    await run("ip", ["addr", "add", `${NODE_IP}/32`, "dev", "lo"]);
    await run("sysctl", ["-qw", "net.ipv4.ip_forward=1"]);
    await tryRun("sysctl", ["-qw", "net.bridge.bridge-nf-call-iptables=1"]);

    const nodeName = hostname().toLowerCase();
    const pki = await issueNodePki(join(dir, "pki"), nodeName);
    const etcdPort = await freePort();
    const etcdPeerPort = await freePort();
    const apiPort = await freePort(NODE_IP);
    const server = `https://${NODE_IP}:${apiPort}`;
    const kubeconfig = async (name: string, cert: { certPath: string; keyPath: string }) => {
      const path = join(dir, `${name}.kubeconfig`);
      await writeFile(
        path,
        JSON.stringify({
          apiVersion: "v1",
          kind: "Config",
          clusters: [{ name: "realnode", cluster: { server, "certificate-authority": pki.ca.certPath } }],
          users: [{ name, user: { "client-certificate": cert.certPath, "client-key": cert.keyPath } }],
          contexts: [{ name, context: { cluster: "realnode", user: name } }],
          "current-context": name,
        }),
      );
      return path;
    };
    const kubeconfigPath = await kubeconfig("admin", pki.admin);
    const start = (name: string, command: string, args: readonly string[]) => {
      processes.set(name, startSupervisedProcess(name, command, args, join(dir, "logs", `${name}.log`)));
    };
    const logTail = (name: string, lines = 40) => processes.get(name)?.logTail(lines) ?? "(not started)";

    start("etcd", join(bin, "etcd"), [
      "--name=realnode",
      `--data-dir=${join(dir, "etcd")}`,
      `--listen-client-urls=http://127.0.0.1:${etcdPort}`,
      `--advertise-client-urls=http://127.0.0.1:${etcdPort}`,
      `--listen-peer-urls=http://127.0.0.1:${etcdPeerPort}`,
      `--initial-advertise-peer-urls=http://127.0.0.1:${etcdPeerPort}`,
      `--initial-cluster=realnode=http://127.0.0.1:${etcdPeerPort}`,
      "--listen-metrics-urls=",
      "--unsafe-no-fsync",
      "--log-level=warn",
    ]);
    const containerdSocket = await writeContainerdConfig(dir);
    start("containerd", "/usr/bin/containerd", ["--config", join(dir, "containerd", "config.toml")]);
    await waitFor(
      "etcd",
      60_000,
      async () => (await fetch(`http://127.0.0.1:${etcdPort}/health`)).ok,
      () => logTail("etcd"),
    );
    start("kube-apiserver", join(bin, "kube-apiserver"), [
      `--etcd-servers=http://127.0.0.1:${etcdPort}`,
      `--bind-address=${NODE_IP}`,
      `--secure-port=${apiPort}`,
      // Pods reach the API at the kubernetes Service, whose endpoint this is (loopback cannot be one).
      `--advertise-address=${NODE_IP}`,
      `--tls-cert-file=${pki.serving.certPath}`,
      `--tls-private-key-file=${pki.serving.keyPath}`,
      `--client-ca-file=${pki.ca.certPath}`,
      `--kubelet-client-certificate=${pki.kubeletClient.certPath}`,
      `--kubelet-client-key=${pki.kubeletClient.keyPath}`,
      // The apiserver otherwise dials the kubelet by hostname, which /etc/hosts maps to 127.0.0.1 (gotcha 2).
      "--kubelet-preferred-address-types=InternalIP,Hostname",
      "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
      `--service-account-key-file=${pki.serviceAccountPublicKeyPath}`,
      `--service-account-signing-key-file=${pki.serviceAccountKeyPath}`,
      `--service-cluster-ip-range=${SERVICE_CIDR}`,
      "--authorization-mode=Node,RBAC",
      "--enable-admission-plugins=NodeRestriction",
      "--allow-privileged=true",
      "--profiling=false",
    ]);
    await waitFor(
      "containerd",
      60_000,
      async () => (await tryRun("ctr", ["--address", containerdSocket, "version"])) !== undefined,
      () => logTail("containerd"),
    );
    const ctr = (...args: string[]) => run("ctr", ["--address", containerdSocket, "-n", "k8s.io", ...args]);
    const importImage = async (image: ImageArchive) => {
      await ctr("images", "import", image.path);
    };
    // No registry: the sandbox image must be local before the first pod (RECIPE, containerd).
    for (const image of [await buildPauseImage(), ...(options.images ?? [])]) await importImage(image);

    const kubeConfig = new KubeConfig();
    kubeConfig.loadFromFile(kubeconfigPath);
    const core = kubeConfig.makeApiClient(CoreV1Api);
    await waitFor(
      "kube-apiserver /readyz",
      120_000,
      async () => {
        await core.listNamespace({ limit: 1 });
        return true;
      },
      () => logTail("kube-apiserver"),
    );

    start("kube-controller-manager", join(bin, "kube-controller-manager"), [
      `--kubeconfig=${await kubeconfig("controller-manager", pki.controllerManager)}`,
      "--bind-address=127.0.0.1",
      "--leader-elect=false",
      `--service-account-private-key-file=${pki.serviceAccountKeyPath}`,
      `--root-ca-file=${pki.ca.certPath}`,
      "--use-service-account-credentials=true",
      `--cluster-signing-cert-file=${pki.ca.certPath}`,
      `--cluster-signing-key-file=${pki.ca.keyPath}`,
      `--service-cluster-ip-range=${SERVICE_CIDR}`,
      `--cluster-cidr=${POD_CIDR}`,
      "--allocate-node-cidrs=false",
      "--profiling=false",
      // Otherwise kcm creates /usr/libexec/kubernetes on the host (gotcha 4).
      `--flex-volume-plugin-dir=${join(dir, "kcm-flexvolume")}`,
    ]);
    start("kube-scheduler", join(bin, "kube-scheduler"), [
      `--kubeconfig=${await kubeconfig("scheduler", pki.scheduler)}`,
      "--bind-address=127.0.0.1",
      "--leader-elect=false",
      "--profiling=false",
    ]);
    await writeKubeletConfig(dir, containerdSocket, pki.ca.certPath, options.syncFrequency ?? "1m");
    start("kubelet", join(bin, "kubelet"), [
      `--config=${join(dir, "kubelet", "config.yaml")}`,
      `--kubeconfig=${await kubeconfig("kubelet", pki.kubelet)}`,
      `--root-dir=${join(dir, "kubelet")}`,
      `--cert-dir=${join(dir, "kubelet", "pki")}`,
      `--hostname-override=${nodeName}`,
      `--node-ip=${NODE_IP}`,
    ]);
    await writeFile(
      join(dir, "kube-proxy.yaml"),
      JSON.stringify({
        apiVersion: "kubeproxy.config.k8s.io/v1alpha1",
        kind: "KubeProxyConfiguration",
        clientConnection: { kubeconfig: await kubeconfig("kube-proxy", pki.kubeProxy) },
        mode: "iptables",
        hostnameOverride: nodeName,
        clusterCIDR: POD_CIDR,
        bindAddress: "127.0.0.1",
        metricsBindAddress: "127.0.0.1:10249",
        healthzBindAddress: "127.0.0.1:10256",
        // No route_localnet=1 on the host.
        iptables: { localhostNodePorts: false },
        // Leave the host's conntrack sysctls alone.
        conntrack: { maxPerCore: 0, min: 0, tcpEstablishedTimeout: "0s", tcpCloseWaitTimeout: "0s" },
      }),
    );
    start("kube-proxy", join(bin, "kube-proxy"), [`--config=${join(dir, "kube-proxy.yaml")}`]);

    await waitFor(
      `node ${nodeName} Ready`,
      180_000,
      async () => {
        const n: V1Node = await core.readNode({ name: nodeName });
        return n.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True") ?? false;
      },
      () => logTail("kubelet"),
    );
    const readyMs = Date.now() - started;

    // NetworkPolicy: the bridge plugin enforces none. kube-router's policy controller alone does (its
    // routing and service proxy stay off), in iptables and ipsets that see bridged pod traffic through
    // br_netfilter, as an enforcing CNI would. It reads the Node, so it starts once the node exists.
    await grantKubeRouter(kubeConfig);
    start("kube-router", kubeRouter, [
      `--kubeconfig=${await kubeconfig("kube-router", pki.kubeRouter)}`,
      `--hostname-override=${nodeName}`,
      "--run-firewall=true",
      "--run-router=false",
      "--run-service-proxy=false",
      "--run-loadbalancer=false",
      "--enable-cni=false",
      "--enable-ipv6=false",
      `--service-cluster-ip-range=${SERVICE_CIDR}`,
      "--health-port=0",
      "--metrics-port=0",
    ]);
    await waitFor(
      "kube-router's NetworkPolicy chains",
      60_000,
      async () => /^-A FORWARD .*-j KUBE-ROUTER-FORWARD/m.test(await run("iptables-save", ["-t", "filter"])),
      () => logTail("kube-router"),
    );
    // Node Ready comes before kcm has made the default ServiceAccount; pods are refused until then (gotcha 3).
    await waitFor(
      "the default ServiceAccount",
      60_000,
      async () => {
        await core.readNamespacedServiceAccount({ name: "default", namespace: "default" });
        return true;
      },
      () => logTail("kube-controller-manager"),
    );
    const usableMs = Date.now() - started;

    return {
      dir,
      kubeconfigPath,
      kubeConfig,
      nodeName,
      nodeIp: NODE_IP,
      startup: { readyMs, usableMs },
      importImage,
      logTail,
      async stop() {
        try {
          await tearDown(node, kubeConfig);
        } finally {
          await releaseLock();
        }
      },
    };
  } catch (error) {
    await tearDown(node, undefined).catch(() => undefined);
    throw error;
  }
}

async function issueNodePki(dir: string, nodeName: string) {
  const base = await issueControlPlanePki(dir);
  const ca = { certPath: base.caCertPath, keyPath: base.caKeyPath };
  const client = (file: string, user: string, groups: string[] = []) =>
    issueClientCertificate(dir, ca, file, user, groups);
  return {
    ca,
    admin: base.admin,
    serviceAccountKeyPath: base.serviceAccountKeyPath,
    serviceAccountPublicKeyPath: base.serviceAccountPublicKeyPath,
    serving: await issueServingCertificate(dir, ca, "apiserver-node", "kube-apiserver", [
      "DNS:kubernetes",
      "DNS:kubernetes.default",
      "DNS:kubernetes.default.svc",
      "DNS:kubernetes.default.svc.cluster.local",
      "DNS:localhost",
      "IP:127.0.0.1",
      `IP:${KUBERNETES_SERVICE_IP}`,
      `IP:${NODE_IP}`,
    ]),
    kubeletClient: await client("apiserver-kubelet-client", "kube-apiserver-kubelet-client", [
      "system:masters",
    ]),
    controllerManager: await client("controller-manager", "system:kube-controller-manager"),
    scheduler: await client("scheduler", "system:kube-scheduler"),
    kubeProxy: await client("kube-proxy", "system:kube-proxy"),
    kubeRouter: await client("kube-router", KUBE_ROUTER_USER),
    // The Node authorizer knows a kubelet by this name and group.
    kubelet: await client("kubelet", `system:node:${nodeName}`, ["system:nodes"]),
  };
}

const KUBE_ROUTER_USER = "portcullis-realnode:kube-router";

/** What kube-router's informers read (it starts them all, though only the policy controller runs). */
async function grantKubeRouter(kubeConfig: KubeConfig): Promise<void> {
  const rbac = kubeConfig.makeApiClient(RbacAuthorizationV1Api);
  const read = ["get", "list", "watch"];
  await rbac.createClusterRole({
    body: {
      metadata: { name: KUBE_ROUTER_USER },
      rules: [
        { apiGroups: [""], resources: ["pods", "namespaces", "nodes", "services"], verbs: read },
        { apiGroups: ["discovery.k8s.io"], resources: ["endpointslices"], verbs: read },
        { apiGroups: ["networking.k8s.io"], resources: ["networkpolicies"], verbs: read },
      ],
    },
  });
  await rbac.createClusterRoleBinding({
    body: {
      metadata: { name: KUBE_ROUTER_USER },
      roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: KUBE_ROUTER_USER },
      subjects: [{ apiGroup: "rbac.authorization.k8s.io", kind: "User", name: KUBE_ROUTER_USER }],
    },
  });
}

async function writeContainerdConfig(dir: string): Promise<string> {
  const root = join(dir, "containerd");
  const socket = join(root, "containerd.sock");
  await writeFile(
    join(root, "config.toml"),
    `version = 2
root = "${root}/root"
state = "${root}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "${socket}"
[plugins."io.containerd.internal.v1.opt"]
  path = "${root}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:3.10"
  stream_server_address = "127.0.0.1"
  # These machines withhold CAP_SYS_RESOURCE: runc cannot lower oom_score_adj to the -998 the
  # kubelet asks for the sandbox ("can't get final child's PID from pipe: EOF"). Clamp instead.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "${CNI_BIN}"
    conf_dir = "${dir}/cni/net.d"
    max_conf_num = 1
`,
  );
  await writeFile(
    join(dir, "cni", "net.d", "10-portcullis.conflist"),
    JSON.stringify({
      cniVersion: "1.0.0",
      name: "portcullis-realnode",
      plugins: [
        {
          type: "bridge",
          bridge: BRIDGE,
          isGateway: true,
          ipMasq: true,
          hairpinMode: true,
          ipam: {
            type: "host-local",
            dataDir: join(dir, "cni", "ipam"),
            ranges: [[{ subnet: POD_CIDR }]],
            routes: [{ dst: "0.0.0.0/0" }],
          },
        },
        { type: "portmap", capabilities: { portMappings: true } },
      ],
    }),
  );
  return socket;
}

async function writeKubeletConfig(
  dir: string,
  socket: string,
  caPath: string,
  syncFrequency: string,
): Promise<void> {
  const nameserver = /^nameserver\s+(\S+)/m.exec(
    await readFile("/etc/resolv.conf", "utf8").catch(() => ""),
  )?.[1];
  await writeFile(join(dir, "resolv.conf"), nameserver ? `nameserver ${nameserver}\n` : "");
  await writeFile(
    join(dir, "kubelet", "config.yaml"),
    JSON.stringify({
      apiVersion: "kubelet.config.k8s.io/v1beta1",
      kind: "KubeletConfiguration",
      containerRuntimeEndpoint: `unix://${socket}`,
      cgroupDriver: "cgroupfs",
      failCgroupV1: false,
      failSwapOn: false,
      address: NODE_IP,
      readOnlyPort: 0,
      authentication: {
        anonymous: { enabled: false },
        webhook: { enabled: true },
        x509: { clientCAFile: caPath },
      },
      authorization: { mode: "Webhook" },
      clusterDomain: "cluster.local",
      resolvConf: join(dir, "resolv.conf"),
      podLogsDir: join(dir, "pod-logs"),
      volumePluginDir: join(dir, "kubelet", "volume-plugins"),
      rotateCertificates: false,
      serverTLSBootstrap: false,
      // How often the kubelet resyncs each pod: ConfigMap volumes are refreshed on that sync.
      syncFrequency,
      evictionHard: {
        "memory.available": "100Mi",
        "nodefs.available": "1%",
        "imagefs.available": "1%",
        "nodefs.inodesFree": "1%",
      },
      imageGCHighThresholdPercent: 99,
      imageGCLowThresholdPercent: 98,
    }),
  );
}

// ---------------------------------------------------------------------------------------------
// Tear down

interface RealNodeInternal {
  dir: string;
  processes: Map<string, SupervisedProcess>;
  host: HostState;
}

async function tearDown(node: RealNodeInternal, kubeConfig: KubeConfig | undefined): Promise<void> {
  const { dir, processes } = node;
  const stop = async (name: string, graceMs = 15_000) => {
    await processes.get(name)?.stop(graceMs);
    processes.delete(name);
  };
  // 1. Controllers first so nothing is recreated, then the kubelet tears pods down itself:
  //    StopPodSandbox runs CNI DEL (IPs, iptables rules, veths, netns). Killing the kubelet before
  //    the pods are gone from the API cancels that and leaves them behind (gotcha 6).
  await stop("kube-controller-manager");
  await stop("kube-scheduler");
  if (kubeConfig && processes.has("kubelet") && processes.has("kube-apiserver")) {
    const core = kubeConfig.makeApiClient(CoreV1Api);
    try {
      const pods = await core.listPodForAllNamespaces();
      await Promise.all(
        pods.items.map((pod) =>
          core
            .deleteNamespacedPod({
              name: pod.metadata?.name ?? "",
              namespace: pod.metadata?.namespace ?? "",
              gracePeriodSeconds: 1,
            })
            .catch(() => undefined),
        ),
      );
      await waitFor(
        "pods to be gone",
        60_000,
        async () => (await core.listPodForAllNamespaces()).items.length === 0,
      );
    } catch {
      // The forced clean-up below handles what is left.
    }
  }
  await stop("kubelet");
  await stop("kube-proxy");
  await stop("kube-router");
  const socket = join(dir, "containerd", "containerd.sock");
  if (processes.has("containerd")) await forceRemoveContainers(socket);
  await stop("containerd");
  await stop("kube-apiserver");
  await stop("etcd");
  await cleanUpHost(dir, node.host);
}

async function forceRemoveContainers(socket: string): Promise<void> {
  const ctr = (...args: string[]) => tryRun("ctr", ["--address", socket, "-n", "k8s.io", ...args]);
  const ids = ((await ctr("containers", "ls", "-q")) ?? "").split("\n").filter(Boolean);
  for (const id of ids) await ctr("tasks", "kill", "-s", "SIGKILL", id);
  if (ids.length) await sleep(500);
  for (const id of ids) await ctr("tasks", "delete", "-f", id);
  for (const id of ids) await ctr("containers", "rm", id);
}

/** Kills every process left in the kubelet's pod cgroups, then removes those cgroups. */
async function removePodCgroups(): Promise<void> {
  const roots: string[] = [];
  for (const controller of await readdir("/sys/fs/cgroup").catch(() => [] as string[])) {
    const candidate = join("/sys/fs/cgroup", controller, "kubepods");
    if (existsSync(candidate)) roots.push(candidate);
  }
  if (existsSync("/sys/fs/cgroup/kubepods")) roots.push("/sys/fs/cgroup/kubepods");
  for (const root of roots) {
    const procs = (await tryRun("find", [root, "-name", "cgroup.procs"])) ?? "";
    for (const file of procs.split("\n").filter(Boolean)) {
      for (const pid of (await readFile(file, "utf8").catch(() => "")).split("\n").filter(Boolean)) {
        try {
          process.kill(Number(pid), "SIGKILL");
        } catch {
          // already gone
        }
      }
    }
  }
  for (const root of roots) await tryRun("find", [root, "-depth", "-type", "d", "-exec", "rmdir", "{}", ";"]);
}

async function cleanUpHost(dir: string, host: HostState): Promise<void> {
  // Shims outlive a containerd that died; they hold container rootfs mounts under dir.
  await tryRun("pkill", ["-KILL", "-f", `containerd-shim-runc-v2 .*-address ${dir}/`]);
  await removePodCgroups();
  // Mounts under dir (container rootfs overlays, sandbox shm, kubelet tmpfs volumes), deepest first.
  for (let round = 0; round < 3; round++) {
    const mountinfo = await readFile("/proc/self/mountinfo", "utf8");
    const mounts = mountinfo
      .split("\n")
      .map((line) => line.split(" ")[4] ?? "")
      .filter((point) => point.startsWith(`${dir}/`))
      .sort()
      .reverse();
    if (mounts.length === 0) break;
    for (const point of mounts)
      if ((await tryRun("umount", [point])) === undefined) await tryRun("umount", ["-l", point]);
  }
  // Sandbox network namespaces the kubelet did not get to delete.
  for (const entry of await readdir("/var/run/netns").catch(() => [] as string[])) {
    if (!entry.startsWith("cni-")) continue;
    const path = join("/var/run/netns", entry);
    await tryRun("umount", [path]);
    await rm(path, { force: true });
  }
  // Network: veths on the bridge, the bridge, the node's address, kube-proxy's and CNI's iptables.
  const veths = (await tryRun("ip", ["-o", "link", "show", "master", BRIDGE])) ?? "";
  for (const line of veths.split("\n").filter(Boolean)) {
    const name = line.split(": ")[1]?.split("@")[0];
    if (name) await tryRun("ip", ["link", "del", name]);
  }
  await tryRun("ip", ["link", "del", BRIDGE]);
  await tryRun("ip", ["addr", "del", `${NODE_IP}/32`, "dev", "lo"]);
  for (const tool of ["iptables", "ip6tables"]) {
    // Read whole, then filter: `save | grep -q` under pipefail fails with SIGPIPE (gotcha 7).
    const rules = await tryRun(`${tool}-save`, []);
    if (rules && /KUBE-|CNI-/.test(rules)) {
      const kept = rules
        .split("\n")
        .filter((line) => !/KUBE-|CNI-/.test(line))
        .join("\n");
      await new Promise<void>((resolve) => {
        const child = execFile(`${tool}-restore`, [], () => resolve());
        child.stdin?.end(`${kept}\n`);
      });
    }
  }
  // kube-router's ipsets, once no rule refers to them any more.
  for (const set of ((await tryRun("ipset", ["list", "-n"])) ?? "").split("\n")) {
    if (/^(inet6:)?(KUBE-|kube-router-)/.test(set)) await tryRun("ipset", ["destroy", set]);
  }
  // Host paths the node created (those that existed before are left, minus our CNI cache entries).
  for (const path of HOST_PATHS) {
    if (host.existingPaths.includes(path)) continue;
    await rm(path, { recursive: true, force: true });
  }
  if (host.existingPaths.includes("/var/log/containers")) {
    for (const entry of await readdir("/var/log/containers").catch(() => [] as string[])) {
      const link = join("/var/log/containers", entry);
      if ((await readlink(link).catch(() => "")).startsWith(`${dir}/`)) await rm(link, { force: true });
    }
  }
  // The kubelet sets vm.overcommit_memory, kernel.panic*, keys limits; the bridge plugin ip_forward.
  for (const [key, value] of Object.entries(host.sysctls)) await tryRun("sysctl", ["-qw", `${key}=${value}`]);
  await rm(dir, { recursive: true, force: true });
}

/** A node left by a test process that died without stop(): clean up after it before starting. */
async function cleanUpAbandoned(): Promise<void> {
  for (const entry of await readdir("/tmp")) {
    const dir = join("/tmp", entry);
    if (!dir.startsWith(STATE_PREFIX)) continue;
    const host = JSON.parse(
      await readFile(join(dir, "host.json"), "utf8").catch(() => "null"),
    ) as HostState | null;
    if (host && processExists(host.owner) && host.owner !== process.pid) continue;
    // Its processes died with their parent (pdeathsig); its containers and host changes did not.
    await cleanUpHost(
      dir,
      host ?? { owner: 0, sysctls: {}, existingPaths: HOST_PATHS.filter((p) => existsSync(p)) },
    );
  }
}
