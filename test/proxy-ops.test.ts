// The proxy as the sidecar container runs it: proxy/main.ts as a child process, in front of the real
// FastAPI app, trusting the real OpenID Provider. Readiness, metrics, access log lines, hot reload
// (plain rewrite and Kubernetes' ConfigMap `..data` swap), a broken file, the SIGTERM drain, an IdP
// outage after warm-up, and startup refusals.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rename, rm, symlink, writeFile } from "node:fs/promises";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import { Agent, request } from "undici";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { parse, stringify } from "yaml";
import { startUpstream, type Upstream } from "../examples/fastapi/upstream.ts";
import { type IdentityProvider, startIdentityProvider } from "../examples/idp.ts";

const repoRoot = join(import.meta.dirname, "..");
const mainFile = join(repoRoot, "proxy/main.ts");
const examplePolicy = join(repoRoot, "examples/fastapi/policy.yaml");
const SETPRIV = "/usr/bin/setpriv";

let idp: IdentityProvider;
let upstream: Upstream;
let workDir: string;
const tokens: Record<string, string> = {};

type PolicyDocument = {
  spec: {
    authentication: { issuers: { issuer: string }[] };
    authorization: { rules: Record<string, unknown>[] };
  };
};

/** The example policy, pointed at the test IdP, optionally edited. */
async function policyText(edit?: (doc: PolicyDocument) => void): Promise<string> {
  const doc = parse(await readFile(examplePolicy, "utf8")) as PolicyDocument;
  const [issuer] = doc.spec.authentication.issuers;
  if (issuer) issuer.issuer = idp.issuer;
  edit?.(doc);
  return stringify(doc);
}

/** The `admin` rule opened to readers: a visible change for hot-reload tests. */
const adminForReaders = (doc: PolicyDocument) => {
  const rule = doc.spec.authorization.rules.find((r) => r.name === "admin");
  if (!rule) throw new Error("example policy has no admin rule");
  delete rule.allRoles;
  rule.anyRole = ["reader"];
};

// ---- the proxy process ---------------------------------------------------------------------------

interface LogLine extends Record<string, unknown> {
  msg?: string;
  message?: string;
}

interface ProxyProcess {
  child: ChildProcess;
  url: string;
  adminUrl: string;
  exited: Promise<number | null>;
  lines: LogLine[];
  stdout(): string;
  stderr(): string;
  waitForLine(predicate: (line: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  stop(): Promise<void>;
}

const running = new Set<ProxyProcess>();

function spawnProxy(args: readonly string[]): Omit<ProxyProcess, "url" | "adminUrl"> {
  const argv = [mainFile, ...args];
  // setpriv's parent-death signal: a killed test run leaves no proxy behind.
  const [file, fileArgs] = existsSync(SETPRIV)
    ? [SETPRIV, ["--pdeathsig", "KILL", "--", process.execPath, ...argv]]
    : [process.execPath, argv];
  const child = spawn(file, fileArgs, { cwd: repoRoot, stdio: ["ignore", "pipe", "pipe"] });
  const lines: LogLine[] = [];
  let stdout = "";
  let stderr = "";
  const waiters = new Set<() => void>();
  if (!child.stdout || !child.stderr) throw new Error("no pipes");
  createInterface({ input: child.stdout }).on("line", (text) => {
    stdout += `${text}\n`;
    try {
      lines.push(JSON.parse(text) as LogLine);
    } catch {
      lines.push({ unparsed: text });
    }
    for (const wake of waiters) wake();
  });
  child.stderr.on("data", (chunk: Buffer) => {
    stderr += chunk.toString("utf8");
  });
  const exited = new Promise<number | null>((resolve) => {
    child.once("exit", (code) => {
      for (const wake of waiters) wake();
      resolve(code);
    });
  });
  const proxy = {
    child,
    exited,
    lines,
    stdout: () => stdout,
    stderr: () => stderr,
    async waitForLine(predicate: (line: LogLine) => boolean, timeoutMs = 15_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = lines.find(predicate);
        if (found) return found;
        if (child.exitCode !== null || child.signalCode !== null) {
          throw new Error(`proxy exited (${child.exitCode ?? child.signalCode}):\n${stdout}\n${stderr}`);
        }
        if (Date.now() > deadline)
          throw new Error(`no such log line within ${timeoutMs} ms:\n${stdout}\n${stderr}`);
        await new Promise<void>((resolve) => {
          const wake = () => {
            waiters.delete(wake);
            clearTimeout(timer);
            resolve();
          };
          const timer = setTimeout(wake, 200);
          waiters.add(wake);
        });
      }
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
        await exited;
        clearTimeout(timer);
      }
    },
  };
  return proxy;
}

/** Starts the proxy on free ports and waits for its "listening" line (not for readiness). */
async function startProxy(policyFile: string, extra: readonly string[] = []): Promise<ProxyProcess> {
  const spawned = spawnProxy([
    "--policy",
    policyFile,
    "--upstream",
    upstream.url,
    "--listen",
    "127.0.0.1:0",
    "--admin",
    "127.0.0.1:0",
    ...extra,
  ]);
  const proxy = spawned as ProxyProcess;
  running.add(proxy);
  const listening = await proxy.waitForLine((line) => (line.msg ?? line.message) === "listening");
  proxy.url = `http://${String(listening.listen)}`;
  proxy.adminUrl = `http://${String(listening.admin)}`;
  return proxy;
}

async function waitUntilReady(proxy: ProxyProcess): Promise<void> {
  await proxy.waitForLine((line) => (line.msg ?? line.message) === "ready");
}

// Each test's own connections: a closed proxy must not leave keep-alive sockets in a shared pool.
let agent = new Agent();
afterEach(async () => {
  await agent.close();
  agent = new Agent();
});

async function get(
  url: string,
  token?: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: Record<string, unknown>; text: string }> {
  const response = await request(url, {
    dispatcher: agent,
    headers: { ...headers, ...(token ? { authorization: `Bearer ${token}` } : {}) },
  });
  const text = await response.body.text();
  let body: Record<string, unknown> = {};
  try {
    body = JSON.parse(text) as Record<string, unknown>;
  } catch {
    // Prometheus text, or empty.
  }
  return { status: response.statusCode, body, text };
}

async function metricsText(proxy: ProxyProcess): Promise<string> {
  return (await get(`${proxy.adminUrl}/metrics`)).text;
}

/** The value of one sample, 0 when absent. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number {
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const match = /^([a-z_]+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const present = Object.fromEntries(
      [...(match[2] ?? "").matchAll(/([a-z_]+)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1], m[2]]),
    );
    if (Object.entries(labels).every(([k, v]) => present[k] === v)) return Number(match[3]);
  }
  return 0;
}

async function eventually<T>(
  probe: () => Promise<T>,
  accept: (value: T) => boolean,
  timeoutMs = 10_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (accept(value) || Date.now() > deadline) return value;
    await sleep(100);
  }
}

beforeAll(async () => {
  [idp, upstream] = await Promise.all([startIdentityProvider(), startUpstream()]);
  for (const client of ["reader", "writer", "admin"]) tokens[client] = await idp.token(client);
  workDir = await mkdtemp(join(tmpdir(), "portcullis-ops-"));
});

afterAll(async () => {
  await Promise.all([...running].map((proxy) => proxy.stop()));
  await Promise.all([upstream?.stop(), idp?.stop()]);
  if (workDir) await rm(workDir, { recursive: true, force: true });
});

// ---- one long-lived proxy for the steady-state checks ----------------------------------------------

describe("portcullis-proxy (JSON logs, plain policy file)", () => {
  let proxy: ProxyProcess;
  let policyFile: string;

  beforeAll(async () => {
    policyFile = join(workDir, "policy.yaml");
    await writeFile(policyFile, await policyText());
    proxy = await startProxy(policyFile);
    await waitUntilReady(proxy);
  });

  it("is ready with warm keys, and serves the policy", async () => {
    const ready = await get(`${proxy.adminUrl}/readyz`);
    expect(ready.status).toBe(200);
    expect(ready.body.status).toBe("ready");
    expect((await get(`${proxy.adminUrl}/healthz`)).status).toBe(200);
    expect((await get(`${proxy.adminUrl}/nothing`)).status).toBe(404);
    expect((await get(`${proxy.url}/orders`, tokens.reader)).status).toBe(200);
  });

  it("writes one JSON access-log line per request, without the token", async () => {
    const ids = ["ops-log-1", "ops-log-2", "ops-log-3"];
    const statuses = [
      (await get(`${proxy.url}/orders`, tokens.reader, { "x-request-id": ids[0] ?? "" })).status,
      (await get(`${proxy.url}/orders`, undefined, { "x-request-id": ids[1] ?? "" })).status,
      (await get(`${proxy.url}/orders/1`, tokens.reader, { "x-request-id": ids[2] ?? "" })).status,
    ];
    expect(statuses).toEqual([200, 401, 200]);
    for (const [i, id] of ids.entries()) {
      const line = await proxy.waitForLine((l) => l.requestId === id);
      expect(proxy.lines.filter((l) => l.requestId === id)).toHaveLength(1);
      expect(line).toMatchObject({ level: "info", msg: "request", requestId: id, status: statuses[i] });
      expect(typeof line.time).toBe("string");
      expect(line.method).toBe("GET");
      expect(typeof line.latencyMs).toBe("number");
    }
    const first = proxy.lines.find((l) => l.requestId === ids[0]);
    expect(first).toMatchObject({
      path: "/orders",
      rule: "read-orders",
      decision: "allow",
      clientId: "reader",
    });
    expect(proxy.lines.find((l) => l.requestId === ids[1])).toMatchObject({ decision: "unauthenticated" });
    expect(proxy.stdout()).not.toContain(tokens.reader);
  });

  it("exposes requests by rule, decision and status, JWKS fetches and process metrics", async () => {
    await get(`${proxy.url}/internal/x`, tokens.admin);
    const text = await metricsText(proxy);
    expect(
      sample(text, "portcullis_requests_total", { rule: "read-orders", decision: "allow", status: "200" }),
    ).toBeGreaterThanOrEqual(1);
    expect(
      sample(text, "portcullis_requests_total", {
        rule: "read-orders",
        decision: "unauthenticated",
        status: "401",
      }),
    ).toBeGreaterThanOrEqual(1);
    expect(
      sample(text, "portcullis_requests_total", { rule: "internal", decision: "deny", status: "403" }),
    ).toBe(1);
    expect(
      sample(text, "portcullis_request_duration_seconds_count", { rule: "read-orders" }),
    ).toBeGreaterThanOrEqual(1);
    expect(
      sample(text, "portcullis_upstream_duration_seconds_count", { rule: "read-orders" }),
    ).toBeGreaterThanOrEqual(1);
    expect(
      sample(text, "portcullis_jwks_fetches_total", { issuer: idp.issuer, outcome: "ok" }),
    ).toBeGreaterThanOrEqual(1);
    expect(text).toMatch(new RegExp(`^portcullis_jwks_age_seconds\\{issuer="${idp.issuer}"\\} \\d`, "m"));
    expect(sample(text, "portcullis_policy_info", { name: "orders-api" })).toBe(1);
    expect(sample(text, "portcullis_process_resident_memory_bytes")).toBeGreaterThan(0);
    expect(text).toContain("portcullis_nodejs_eventloop_lag_seconds");
  });

  it("keeps serving with cached keys when the IdP goes down after warm-up", async () => {
    const fresh = await idp.token("writer");
    await idp.stop();
    try {
      const response = await get(`${proxy.url}/orders`, fresh);
      expect(response.status).toBe(200);
      expect(
        (response.body.identity as { x_auth: Record<string, string[]> }).x_auth["x-auth-client-id"],
      ).toEqual(["writer"]);
      expect((await get(`${proxy.adminUrl}/readyz`)).status).toBe(200);
    } finally {
      await idp.start();
    }
  });

  it("applies a rewritten policy file", async () => {
    expect((await get(`${proxy.url}/admin/x`, tokens.reader)).status).toBe(403);
    await writeFile(policyFile, await policyText(adminForReaders));
    const after = await eventually(
      () => get(`${proxy.url}/admin/x`, tokens.reader),
      (r) => r.status === 200,
    );
    expect(after.status).toBe(200);
    await proxy.waitForLine((l) => l.msg === "policy reloaded");
    expect(sample(await metricsText(proxy), "portcullis_policy_reloads_total", { outcome: "success" })).toBe(
      1,
    );
  });

  it("keeps the last good policy when the file breaks, and counts the error", async () => {
    const broken = (await policyText(adminForReaders)).replace("{order_id:int}", "{order_id:integer}");
    await writeFile(policyFile, broken);
    const rejected = await proxy.waitForLine(
      (l) => l.msg === "policy file rejected; the last good policy stays in force",
    );
    expect(JSON.stringify(rejected.problems)).toContain("spec.authorization.rules[1].paths[1]");
    expect(sample(await metricsText(proxy), "portcullis_policy_reloads_total", { outcome: "error" })).toBe(1);
    // The reloaded policy (admin open to readers) is still the one enforced.
    expect((await get(`${proxy.url}/admin/x`, tokens.reader)).status).toBe(200);
    expect((await get(`${proxy.url}/orders`)).status).toBe(401);
    expect((await get(`${proxy.adminUrl}/readyz`)).status).toBe(200);
  });
});

// ---- processes of their own ---------------------------------------------------------------------------

describe("portcullis-proxy lifecycle", () => {
  it("is not ready until the issuer's keys have loaded", async () => {
    const policyFile = join(workDir, "cold.yaml");
    await writeFile(policyFile, await policyText());
    await idp.stop();
    let proxy: ProxyProcess;
    try {
      proxy = await startProxy(policyFile);
      const cold = await get(`${proxy.adminUrl}/readyz`);
      expect(cold.status).toBe(503);
      expect(String(cold.body.reason)).toContain(idp.issuer);
      expect((await get(`${proxy.adminUrl}/healthz`)).status).toBe(200);
    } finally {
      await idp.start();
    }
    await waitUntilReady(proxy);
    expect((await get(`${proxy.adminUrl}/readyz`)).status).toBe(200);
    expect((await get(`${proxy.url}/orders`, tokens.reader)).status).toBe(200);
    await proxy.stop();
    expect(await proxy.exited).toBe(0);
  });

  it("writes ECS lines with --log-format ecs", async () => {
    const policyFile = join(workDir, "ecs.yaml");
    await writeFile(policyFile, await policyText());
    const proxy = await startProxy(policyFile, ["--log-format", "ecs"]);
    await waitUntilReady(proxy);
    expect((await get(`${proxy.url}/orders`, tokens.reader, { "x-request-id": "ops-ecs-1" })).status).toBe(
      200,
    );
    const line = await proxy.waitForLine((l) => l["http.request.id"] === "ops-ecs-1");
    expect(line).toMatchObject({
      "log.level": "info",
      message: "request",
      "http.request.method": "GET",
      "url.path": "/orders",
      "http.response.status_code": 200,
      "portcullis.rule": "read-orders",
      "portcullis.decision": "allow",
    });
    expect(line["event.duration"]).toBeGreaterThan(0);
    expect(line["ecs.version"]).toMatch(/^\d+\.\d+/);
    expect(Number.isNaN(Date.parse(String(line["@timestamp"])))).toBe(false);
    for (const l of proxy.lines) expect(l).toHaveProperty("ecs.version");
    await proxy.stop();
  });

  it("follows a ConfigMap update (the ..data symlink swap)", async () => {
    // The layout kubelet writes: policy.yaml -> ..data/policy.yaml, ..data -> ..<timestamp>/
    const mount = join(workDir, "configmap");
    await mkdir(join(mount, "..2026_01_01_00_00_00.1"), { recursive: true });
    await writeFile(join(mount, "..2026_01_01_00_00_00.1", "policy.yaml"), await policyText());
    await symlink("..2026_01_01_00_00_00.1", join(mount, "..data"));
    await symlink("..data/policy.yaml", join(mount, "policy.yaml"));
    const proxy = await startProxy(join(mount, "policy.yaml"));
    await waitUntilReady(proxy);
    expect((await get(`${proxy.url}/admin/x`, tokens.reader)).status).toBe(403);

    await mkdir(join(mount, "..2026_01_01_00_01_00.2"));
    await writeFile(join(mount, "..2026_01_01_00_01_00.2", "policy.yaml"), await policyText(adminForReaders));
    await symlink("..2026_01_01_00_01_00.2", join(mount, "..data_tmp"));
    await rename(join(mount, "..data_tmp"), join(mount, "..data"));
    await rm(join(mount, "..2026_01_01_00_00_00.1"), { recursive: true });

    const after = await eventually(
      () => get(`${proxy.url}/admin/x`, tokens.reader),
      (r) => r.status === 200,
    );
    expect(after.status).toBe(200);
    await proxy.stop();
  });

  it("drains on SIGTERM: 50 slow requests complete, new connections are refused, exit 0", async () => {
    const policyFile = join(workDir, "drain.yaml");
    await writeFile(policyFile, await policyText());
    const proxy = await startProxy(policyFile, ["--drain-seconds", "30"]);
    await waitUntilReady(proxy);
    const port = Number(new URL(proxy.url).port);

    // One connection per request, so each is a separate in-flight exchange.
    const slow = new Agent({ connections: 64, pipelining: 1 });
    try {
      const pending = Array.from({ length: 50 }, () =>
        request(`${proxy.url}/slow?seconds=2`, {
          dispatcher: slow,
          headers: { authorization: `Bearer ${tokens.reader}` },
        }).then(async (response) => ({ status: response.statusCode, body: await response.body.text() })),
      );
      const inFlight = await eventually(
        async () => sample(await metricsText(proxy), "portcullis_requests_in_flight"),
        (n) => n === 50,
      );
      expect(inFlight).toBe(50);

      proxy.child.kill("SIGTERM");
      await proxy.waitForLine((l) => l.msg === "draining");
      expect(await connectOutcome(port)).toBe("refused");
      expect((await get(`${proxy.adminUrl}/readyz`)).body).toMatchObject({
        status: "not ready",
        reason: "draining",
      });

      const results = await Promise.all(pending);
      expect(results.map((r) => r.status)).toEqual(Array(50).fill(200));
      expect(await proxy.exited).toBe(0);
      expect(proxy.lines.some((l) => l.msg === "drained; exiting")).toBe(true);
    } finally {
      await slow.close();
    }
  });

  it("keeps serving when its stdout is closed (the log reader went away: EPIPE)", async () => {
    const policyFile = join(workDir, "epipe.yaml");
    await writeFile(policyFile, await policyText());
    const proxy = await startProxy(policyFile);
    await waitUntilReady(proxy);
    proxy.child.stdout?.destroy();
    // Well over one batch of access lines, so writes to the closed pipe happen.
    for (let i = 0; i < 300; i++) {
      expect((await get(`${proxy.url}/orders`, tokens.reader)).status).toBe(200);
    }
    expect((await get(`${proxy.adminUrl}/healthz`)).status).toBe(200);
    expect(proxy.child.exitCode).toBeNull();
    expect(proxy.stderr()).toBe("");
  });

  it("refuses to start without a valid policy, listing every problem", async () => {
    const policyFile = join(workDir, "invalid.yaml");
    await writeFile(policyFile, (await policyText()).replace("{order_id:int}", "{order_id:integer}"));
    const proxy = spawnProxy(["--policy", policyFile, "--upstream", upstream.url, "--listen", "127.0.0.1:0"]);
    expect(await proxy.exited).toBe(1);
    expect(proxy.stderr()).toContain("spec.authorization.rules[1].paths[1]");
    expect(proxy.stderr()).not.toMatch(/\n\s+at /);

    const missing = spawnProxy(["--policy", join(workDir, "absent.yaml"), "--upstream", upstream.url]);
    expect(await missing.exited).toBe(1);
    expect(missing.stderr()).toContain("cannot read: ENOENT");
  });

  it("exits 2 on a usage error", async () => {
    const proxy = spawnProxy(["--policy", "p.yaml", "--upstream", "http://10.0.0.1:8000"]);
    expect(await proxy.exited).toBe(2);
    expect(proxy.stderr()).toContain("loopback");
  });
});

function connectOutcome(port: number): Promise<"connected" | "refused"> {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve("connected");
    });
    socket.once("error", () => resolve("refused"));
  });
}
