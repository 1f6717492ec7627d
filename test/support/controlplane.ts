// A real Kubernetes control plane for tests, like controller-runtime's envtest: etcd and
// kube-apiserver built from Go modules by test/controlplane/build.sh, started on loopback ports
// with a throw-away PKI. PORTCULLIS_TEST_KUBECONFIG points the tests at an existing cluster instead.
import { rmSync } from "node:fs";
import { access, constants, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { KubeConfig, VersionApi } from "@kubernetes/client-node";
import { freePort } from "../../examples/free-port.ts";
import { cacheRoot } from "../setup/cache.ts";
import { type ControlPlanePki, issueClientCertificate, issueControlPlanePki } from "./controlplane-pki.ts";
import { processExists, type SupervisedProcess, startSupervisedProcess } from "./supervised-process.ts";

export interface ControlPlane {
  /** A kubeconfig file for the admin user (group system:masters), for subprocesses such as the operator. */
  readonly kubeconfigPath: string;
  /** The same admin identity, loaded. */
  readonly kubeConfig: KubeConfig;
  /** https://127.0.0.1:<port> */
  readonly server: string;
  /** "<major>.<minor>" as the apiserver reports it, e.g. "1.35". */
  readonly serverVersion: string;
  /** True when PORTCULLIS_TEST_KUBECONFIG chose an existing cluster: stop() leaves it alone. */
  readonly external: boolean;
  /** Pids of the running etcd and kube-apiserver (empty for an external cluster). */
  processIds(): number[];
  /** Stops kube-apiserver, then etcd, and removes the temp dir. Safe to call twice. */
  stop(): Promise<void>;
  /** Stops kube-apiserver and starts it again on the same port; resolves when /readyz is ok. */
  restartApiServer(): Promise<void>;
  /**
   * The admin credentials with Impersonate-User (and Impersonate-Group) headers. Works against an
   * external cluster too. client-node sends one header value per name, so at most one group.
   */
  impersonationKubeConfig(user: string, groups?: readonly string[]): KubeConfig;
  /**
   * A client certificate for `user` in `groups`, signed by the cluster's client CA: a real
   * authenticated identity with any number of groups, plus a kubeconfig file for subprocesses.
   * Local control plane only.
   */
  userKubeConfig(
    user: string,
    groups?: readonly string[],
  ): Promise<{ kubeConfig: KubeConfig; kubeconfigPath: string }>;
}

export interface StartControlPlaneOptions {
  /** Ignore PORTCULLIS_TEST_KUBECONFIG and always start local processes (tests of this harness). */
  local?: boolean;
}

const CONTROLPLANE_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..", "controlplane");
const READY_TIMEOUT_MS = 120_000;
const STOP_GRACE_MS = 10_000;
const ADMIN = "admin";

export interface ControlPlaneVersions {
  kubernetes: string;
  etcd: string;
}

/** The versions pinned in test/controlplane/versions.env (the single place they live). */
export async function controlPlaneVersions(): Promise<ControlPlaneVersions> {
  const text = await readFile(join(CONTROLPLANE_DIR, "versions.env"), "utf8");
  const values = new Map<string, string>();
  for (const line of text.split("\n")) {
    const match = /^\s*([A-Z_]+)=(\S+)\s*$/.exec(line);
    if (match?.[1] && match[2]) values.set(match[1], match[2]);
  }
  const kubernetes = values.get("KUBERNETES_VERSION");
  const etcd = values.get("ETCD_VERSION");
  if (!kubernetes || !etcd) throw new Error(`versions.env lacks KUBERNETES_VERSION or ETCD_VERSION`);
  return { kubernetes, etcd };
}

/** Where the binaries are: PORTCULLIS_CONTROLPLANE_BIN, else build.sh's cache dir. */
export async function controlPlaneBinDir(): Promise<string> {
  const fromEnv = process.env.PORTCULLIS_CONTROLPLANE_BIN;
  if (fromEnv) return fromEnv;
  const { kubernetes, etcd } = await controlPlaneVersions();
  return join(cacheRoot(), "controlplane", `k8s-${kubernetes}-etcd-${etcd}`);
}

export async function startControlPlane(options: StartControlPlaneOptions = {}): Promise<ControlPlane> {
  const existing = process.env.PORTCULLIS_TEST_KUBECONFIG;
  if (existing && !options.local) return useExistingCluster(existing);
  return startLocalControlPlane();
}

// --- an existing cluster ----------------------------------------------------------------------

async function useExistingCluster(kubeconfigPath: string): Promise<ControlPlane> {
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromFile(kubeconfigPath);
  const cluster = kubeConfig.getCurrentCluster();
  if (!cluster) throw new Error(`PORTCULLIS_TEST_KUBECONFIG=${kubeconfigPath} has no current cluster`);
  return {
    kubeconfigPath,
    kubeConfig,
    server: cluster.server,
    serverVersion: await readServerVersion(kubeConfig),
    external: true,
    processIds: () => [],
    stop: async () => {},
    restartApiServer: async () => {
      throw new Error("restartApiServer() needs the local control plane; PORTCULLIS_TEST_KUBECONFIG is set");
    },
    impersonationKubeConfig: (user, groups) => impersonating(kubeConfig, user, groups),
    userKubeConfig: async () => {
      throw new Error("userKubeConfig() needs the local control plane's CA; use impersonationKubeConfig()");
    },
  };
}

// --- the local control plane ------------------------------------------------------------------

// Temp dirs of control planes still running, removed on process exit if a test never called stop().
// Registered after supervised-process's handler (imported above), so processes die first.
const liveDirs = new Set<string>();
process.on("exit", () => {
  for (const dir of liveDirs) rmSync(dir, { recursive: true, force: true });
});

const DIR_PREFIX = "portcullis-controlplane-";
const OWNER_FILE = "owner.pid";

// A test process killed outright runs no exit handler: its processes die by parent-death signal,
// but its temp dir stays. The next start removes dirs whose owning process is gone.
async function removeAbandonedDirs(): Promise<void> {
  for (const entry of await readdir(tmpdir())) {
    if (!entry.startsWith(DIR_PREFIX)) continue;
    const dir = join(tmpdir(), entry);
    const owner = Number(await readFile(join(dir, OWNER_FILE), "utf8").catch(() => ""));
    if (Number.isInteger(owner) && owner > 0 && !processExists(owner)) {
      await rm(dir, { recursive: true, force: true });
    }
  }
}

async function startLocalControlPlane(): Promise<ControlPlane> {
  const binDir = await controlPlaneBinDir();
  const etcdBinary = join(binDir, "etcd");
  const apiServerBinary = join(binDir, "kube-apiserver");
  for (const binary of [etcdBinary, apiServerBinary]) {
    if (!(await isExecutable(binary))) {
      throw new Error(
        `${binary} is missing: run test/controlplane/build.sh (prints the dir it fills), or set ` +
          `PORTCULLIS_CONTROLPLANE_BIN to a dir with etcd and kube-apiserver, or PORTCULLIS_TEST_KUBECONFIG`,
      );
    }
  }

  await removeAbandonedDirs();
  const dir = await mkdtemp(join(tmpdir(), DIR_PREFIX));
  liveDirs.add(dir);
  await writeFile(join(dir, OWNER_FILE), String(process.pid));
  let etcd: SupervisedProcess | undefined;
  let apiServer: SupervisedProcess | undefined;
  const teardown = async () => {
    await apiServer?.stop(STOP_GRACE_MS);
    await etcd?.stop(STOP_GRACE_MS);
    await rm(dir, { recursive: true, force: true });
    liveDirs.delete(dir);
  };

  try {
    const pki = await issueControlPlanePki(dir);
    const etcdStarted = await startEtcd(etcdBinary, dir);
    etcd = etcdStarted.process;
    const port = await freePort();
    const server = `https://127.0.0.1:${port}`;
    const apiServerArgs = kubeApiServerArgs(pki, port, etcdStarted.clientUrl, server);
    const launchApiServer = async () => {
      const started = startSupervisedProcess(
        "kube-apiserver",
        apiServerBinary,
        apiServerArgs,
        join(dir, "kube-apiserver.log"),
      );
      await waitUntilReady(started, () => apiServerReady(port, pki));
      return started;
    };
    apiServer = await launchApiServer();

    const kubeConfig = await certificateKubeConfig(server, pki.caCertPath, pki.admin);
    const kubeconfigPath = join(dir, "kubeconfig");
    await writeFile(kubeconfigPath, kubeConfig.exportConfig(), { mode: 0o600 });
    const serverVersion = await readServerVersion(kubeConfig);

    let stopped: Promise<void> | undefined;
    let clientCount = 0;
    return {
      kubeconfigPath,
      kubeConfig,
      server,
      serverVersion,
      external: false,
      processIds: () => [etcd, apiServer].flatMap((p) => (p && processExists(p.pid) ? [p.pid] : [])),
      stop: () => {
        stopped ??= teardown();
        return stopped;
      },
      async restartApiServer() {
        if (stopped) throw new Error("restartApiServer() after stop()");
        await apiServer?.stop(STOP_GRACE_MS);
        apiServer = await launchApiServer();
      },
      impersonationKubeConfig: (user, groups) => impersonating(kubeConfig, user, groups),
      async userKubeConfig(user, groups = []) {
        clientCount += 1;
        const fileName = `user-${clientCount}`;
        const ca = { certPath: pki.caCertPath, keyPath: pki.caKeyPath };
        const cert = await issueClientCertificate(dir, ca, fileName, user, groups);
        const userConfig = await certificateKubeConfig(server, pki.caCertPath, cert);
        const path = join(dir, `${fileName}.kubeconfig`);
        await writeFile(path, userConfig.exportConfig(), { mode: 0o600 });
        return { kubeConfig: userConfig, kubeconfigPath: path };
      },
    };
  } catch (error) {
    await teardown();
    throw error;
  }
}

function kubeApiServerArgs(pki: ControlPlanePki, port: number, etcdUrl: string, server: string): string[] {
  return [
    `--etcd-servers=${etcdUrl}`,
    "--bind-address=127.0.0.1",
    // Without a default route the apiserver cannot pick an address to advertise on its own.
    "--advertise-address=127.0.0.1",
    `--secure-port=${port}`,
    `--tls-cert-file=${pki.servingCertPath}`,
    `--tls-private-key-file=${pki.servingKeyPath}`,
    `--client-ca-file=${pki.caCertPath}`,
    "--authorization-mode=RBAC",
    `--service-account-issuer=${server}`,
    `--service-account-key-file=${pki.serviceAccountPublicKeyPath}`,
    `--service-account-signing-key-file=${pki.serviceAccountKeyPath}`,
    "--service-cluster-ip-range=10.0.0.0/24",
    // No controller-manager mints tokens, so pods could never satisfy ServiceAccount admission (envtest does the same).
    "--disable-admission-plugins=ServiceAccount",
    "--allow-privileged=true",
    // The only address is loopback; no endpoints for the `kubernetes` Service to reconcile.
    "--endpoint-reconciler-type=none",
    "--profiling=false",
  ];
}

async function startEtcd(
  binary: string,
  dir: string,
): Promise<{ process: SupervisedProcess; clientUrl: string }> {
  const clientPort = await freePort();
  const peerPort = await freePort();
  const clientUrl = `http://127.0.0.1:${clientPort}`;
  const peerUrl = `http://127.0.0.1:${peerPort}`;
  const etcd = startSupervisedProcess(
    "etcd",
    binary,
    [
      "--name=portcullis-test",
      `--data-dir=${join(dir, "etcd")}`,
      `--listen-client-urls=${clientUrl}`,
      `--advertise-client-urls=${clientUrl}`,
      `--listen-peer-urls=${peerUrl}`,
      `--initial-advertise-peer-urls=${peerUrl}`,
      `--initial-cluster=portcullis-test=${peerUrl}`,
      // Throw-away data: skipping fsync keeps a shared 2-core machine responsive (envtest does the same).
      "--unsafe-no-fsync=true",
      "--log-level=warn",
    ],
    join(dir, "etcd.log"),
  );
  await waitUntilReady(etcd, () => etcdHealthy(clientUrl));
  return { process: etcd, clientUrl };
}

// --- readiness --------------------------------------------------------------------------------

async function waitUntilReady(proc: SupervisedProcess, probe: () => Promise<boolean>): Promise<void> {
  let exitedHow: string | undefined;
  void proc.exited.then((how) => {
    exitedHow = how;
  });
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (exitedHow !== undefined) {
      throw new Error(
        `${proc.name} exited (${exitedHow}) before it was ready. ${proc.logPath}:\n${proc.logTail()}`,
      );
    }
    if (await probe()) return;
    await new Promise((done) => setTimeout(done, 100));
  }
  await proc.stop(STOP_GRACE_MS);
  throw new Error(`${proc.name} not ready after ${READY_TIMEOUT_MS} ms. ${proc.logPath}:\n${proc.logTail()}`);
}

async function etcdHealthy(clientUrl: string): Promise<boolean> {
  const body = await new Promise<string | undefined>((done) => {
    const req = httpRequest(`${clientUrl}/health`, { timeout: 2_000 }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        text += chunk;
      });
      res.on("end", () => done(res.statusCode === 200 ? text : undefined));
    });
    req.on("error", () => done(undefined));
    req.on("timeout", () => req.destroy());
    req.end();
  });
  if (body === undefined) return false;
  try {
    const parsed: unknown = JSON.parse(body);
    return typeof parsed === "object" && parsed !== null && "health" in parsed && parsed.health === "true";
  } catch {
    return false;
  }
}

async function apiServerReady(port: number, pki: ControlPlanePki): Promise<boolean> {
  const [ca, cert, key] = await Promise.all([
    readFile(pki.caCertPath),
    readFile(pki.admin.certPath),
    readFile(pki.admin.keyPath),
  ]);
  return new Promise<boolean>((done) => {
    const req = httpsRequest(
      { host: "127.0.0.1", port, path: "/readyz", ca, cert, key, timeout: 5_000, agent: false },
      (res) => {
        res.resume();
        res.on("end", () => done(res.statusCode === 200));
      },
    );
    req.on("error", () => done(false));
    req.on("timeout", () => req.destroy());
    req.end();
  });
}

// --- kubeconfigs ------------------------------------------------------------------------------

async function certificateKubeConfig(
  server: string,
  caCertPath: string,
  cert: { certPath: string; keyPath: string },
): Promise<KubeConfig> {
  const base64 = async (path: string) => (await readFile(path)).toString("base64");
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromOptions({
    clusters: [{ name: "portcullis-test", server, caData: await base64(caCertPath), skipTLSVerify: false }],
    users: [{ name: ADMIN, certData: await base64(cert.certPath), keyData: await base64(cert.keyPath) }],
    contexts: [{ name: "portcullis-test", cluster: "portcullis-test", user: ADMIN }],
    currentContext: "portcullis-test",
  });
  return kubeConfig;
}

type Authenticator = Parameters<KubeConfig["addAuthenticator"]>[0];

function impersonating(base: KubeConfig, user: string, groups: readonly string[] = []): KubeConfig {
  if (groups.length > 1) {
    throw new Error(
      "impersonationKubeConfig(): client-node sends one Impersonate-Group value; use userKubeConfig()",
    );
  }
  const cluster = base.getCurrentCluster();
  const baseUser = base.getCurrentUser();
  if (!cluster || !baseUser)
    throw new Error("impersonationKubeConfig(): the base kubeconfig has no current context");
  const name = `impersonating-${user}`;
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromClusterAndUser(cluster, { ...baseUser, name, impersonateUser: user });
  const group = groups[0];
  if (group !== undefined) {
    const addGroup: Authenticator = {
      isAuthProvider: (candidate) => candidate.name === name,
      applyAuthentication: async (_user, opts) => {
        opts.headers = { ...opts.headers, "Impersonate-Group": group };
      },
    };
    kubeConfig.addAuthenticator(addGroup);
  }
  return kubeConfig;
}

async function readServerVersion(kubeConfig: KubeConfig): Promise<string> {
  const info = await kubeConfig.makeApiClient(VersionApi).getCode();
  // Some distributions report minor as "35+".
  return `${info.major.replace(/\D/g, "")}.${info.minor.replace(/\D/g, "")}`;
}

// --- small pieces -----------------------------------------------------------------------------

async function isExecutable(path: string): Promise<boolean> {
  try {
    await access(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}
