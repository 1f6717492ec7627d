// `npm start`: the whole thing on loopback, all real. An OpenID Provider on :9400 (the issuer in
// examples/fastapi/policy.yaml), the FastAPI orders app under uvicorn, and the proxy as its own process
// (proxy/main.ts, exactly what the sidecar container runs) on :8080 with its admin port on :9901.
// It sends a few requests as three clients, shows what came back and what FastAPI was told, prints curl
// commands to try, and then tails the proxy's access log until Ctrl-C stops everything.
// PORTCULLIS_DEMO_EXIT=1 exits after the table (the demo's test uses it).

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import { styleText } from "node:util";
import { startUpstream, type Upstream } from "./fastapi/upstream.ts";
import { ensureVenv, repoRoot } from "./fastapi/venv.ts";
import { type IdentityProvider, startIdentityProvider } from "./idp.ts";

const IDP_PORT = 9400;
const PROXY = "http://127.0.0.1:8080";
const ADMIN = "http://127.0.0.1:9901";
const POLICY = "examples/fastapi/policy.yaml";
const SETPRIV = "/usr/bin/setpriv";

const dim = (text: string) => styleText("dim", text);
const bold = (text: string) => styleText("bold", text);

interface Stack {
  idp?: IdentityProvider;
  upstream?: Upstream;
  proxy?: ChildProcess;
  proxyExited?: Promise<void>;
}

const stack: Stack = {};
let proxyErrors = "";

async function main(): Promise<void> {
  console.log(
    `${bold("Portcullis demo")} ${dim("- identity-aware sidecar for FastAPI, everything on loopback")}\n`,
  );

  step("Python venv", dim(".venv (the first run installs FastAPI and uvicorn: a minute)"));
  await ensureVenv();
  stack.idp = await startIdentityProvider({ port: IDP_PORT });
  step("OpenID Provider", `${stack.idp.issuer}  ${dim("clients reader, writer, admin")}`);
  stack.upstream = await startUpstream();
  step("FastAPI orders", `${stack.upstream.url}  ${dim("uvicorn, examples/fastapi/app.py")}`);
  const accessLog = startProxy(stack.upstream.url);
  await waitUntilReady();
  step("Portcullis proxy", `${PROXY}  ${dim(`admin ${ADMIN}, policy ${POLICY}`)}`);

  const idp = stack.idp;
  const tokens = {
    reader: await idp.token("reader"),
    writer: await idp.token("writer"),
    admin: await idp.token("admin"),
  };
  console.log();
  await showRequests(tokens);
  printCurl();

  if (process.env.PORTCULLIS_DEMO_EXIT === "1") return;
  console.log(`\n${bold("Access log")} ${dim("(live; Ctrl-C stops everything)")}`);
  accessLog.liveSince = Date.now();
  await new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
  console.log();
}

function step(what: string, detail: string): void {
  console.log(`${styleText("cyan", "▸")} ${what.padEnd(18)}${detail}`);
}

// ---- the proxy process ----------------------------------------------------------------------------

function startProxy(upstreamUrl: string): { liveSince: number } {
  const args = [
    join(repoRoot, "proxy/main.ts"),
    "--policy",
    POLICY,
    "--upstream",
    upstreamUrl,
    "--listen",
    "127.0.0.1:8080",
    "--admin",
    "127.0.0.1:9901",
  ];
  // setpriv's parent-death signal: the proxy dies with the demo even if the demo is SIGKILLed.
  const [file, argv] = existsSync(SETPRIV)
    ? [SETPRIV, ["--pdeathsig", "TERM", "--", process.execPath, ...args]]
    : [process.execPath, args];
  const child = spawn(file, argv, { cwd: repoRoot, stdio: ["ignore", "pipe", "pipe"] });
  stack.proxy = child;
  stack.proxyExited = new Promise((resolve) => {
    child.once("exit", () => resolve());
    child.once("error", () => resolve());
  });
  // Lines logged before liveSince (the table's requests) are not shown as live traffic.
  const state = { liveSince: Number.POSITIVE_INFINITY };
  if (child.stdout) {
    createInterface({ input: child.stdout }).on("line", (line) => {
      if (Number.isFinite(state.liveSince)) printAccessLine(line, state.liveSince);
      else if (/"level":"(error|fatal)"/.test(line)) proxyErrors += `${line}\n`;
    });
  }
  child.stderr?.on("data", (chunk: Buffer) => {
    proxyErrors += chunk.toString("utf8");
  });
  return state;
}

async function waitUntilReady(): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (stack.proxy?.exitCode !== null) throw new Error(`the proxy exited:\n${proxyErrors}`);
    const response = await fetch(`${ADMIN}/readyz`, { signal: AbortSignal.timeout(1000) }).catch(
      () => undefined,
    );
    await response?.arrayBuffer();
    if (response?.ok) return;
    await sleep(100);
  }
  throw new Error(`the proxy did not become ready within 30 s:\n${proxyErrors}`);
}

function printAccessLine(line: string, since: number): void {
  let entry: Record<string, unknown>;
  try {
    entry = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return;
  }
  if (Date.parse(String(entry.time)) < since) return;
  if (entry.msg !== "request") {
    if (entry.level === "warn" || entry.level === "error")
      console.log(dim(`  ${String(entry.level)}: ${String(entry.msg)}`));
    return;
  }
  const status = Number(entry.status);
  const who = typeof entry.clientId === "string" ? entry.clientId : "anonymous";
  const limit = typeof entry.rateLimit === "string" ? ` limit=${entry.rateLimit}` : "";
  console.log(
    `  ${String(entry.method).padEnd(6)} ${String(entry.path ?? "?").padEnd(20)} ${colourStatus(status)} ` +
      `${String(entry.decision).padEnd(15)} ${dim(`rule=${String(entry.rule)} as=${who}${limit} ${String(entry.latencyMs)} ms`)}`,
  );
}

// ---- the table --------------------------------------------------------------------------------------

interface Probe {
  method: string;
  path: string;
  as: "anonymous" | "reader" | "writer" | "admin" | "forged";
  note: string;
  headers?: Record<string, string>;
  body?: unknown;
}

const PROBES: Probe[] = [
  { method: "GET", path: "/healthz", as: "anonymous", note: "public rule" },
  { method: "GET", path: "/orders", as: "anonymous", note: "no token" },
  { method: "GET", path: "/orders", as: "forged", note: "signature does not verify" },
  { method: "GET", path: "/orders", as: "reader", note: "orders.read -> reader" },
  {
    method: "GET",
    path: "/orders/1",
    as: "reader",
    note: "spoofed X-Auth-Roles: admin is stripped",
    headers: { "X-Auth-Roles": "admin", X_Auth_Subject: "root" },
  },
  { method: "POST", path: "/orders", as: "reader", note: "needs writer", body: { item: "tea", quantity: 1 } },
  {
    method: "POST",
    path: "/orders",
    as: "writer",
    note: "orders.write -> writer",
    body: { item: "tea", quantity: 1 },
  },
  { method: "DELETE", path: "/orders/2", as: "writer", note: "needs admin" },
  { method: "DELETE", path: "/orders/2", as: "admin", note: "orders.admin -> admin" },
  { method: "GET", path: "/internal/config", as: "admin", note: "deny rule" },
  { method: "GET", path: "/nowhere", as: "admin", note: "no rule: default deny" },
];

async function showRequests(tokens: Record<"reader" | "writer" | "admin", string>): Promise<void> {
  const forged = `${tokens.reader.slice(0, -6)}AAAAAA`;
  const rows: string[][] = [];
  for (const probe of PROBES) {
    const token = probe.as === "anonymous" ? undefined : probe.as === "forged" ? forged : tokens[probe.as];
    const { status, seen } = await send(probe, token);
    rows.push([`${probe.method} ${probe.path}`, probe.as, String(status), seen, probe.note]);
  }
  // The writer bursts: the policy allows each client 5 POST /orders per second with a burst of 10
  // (rateLimits: writes-per-client); the writer already spent one above.
  const burst = await Promise.all(
    Array.from({ length: 14 }, () =>
      send(
        { method: "POST", path: "/orders", as: "writer", note: "", body: { item: "x", quantity: 1 } },
        tokens.writer,
      ),
    ),
  );
  const counts = new Map<number, number>();
  for (const { status } of burst) counts.set(status, (counts.get(status) ?? 0) + 1);
  const summary = [...counts].sort(([a], [b]) => a - b).map(([status, n]) => `${n}x ${status}`);
  const retryAfter = burst.find(({ status }) => status === 429)?.retryAfter;
  const seen = counts.has(429) ? "(429s not forwarded)" : "";
  const why = `writes-per-client: 5/s, burst 10${retryAfter ? `; Retry-After: ${retryAfter}` : ""}`;
  rows.push(["POST /orders x14", "writer", summary.join(", "), seen, why]);

  const headers = ["request", "as", "status", "FastAPI saw (identity headers)", "why"];
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const pad = (cells: string[], colour: boolean) =>
    cells
      .map((cell, i) => {
        const padded = cell.padEnd(widths[i] ?? 0);
        if (!colour) return padded;
        if (i === 2) return colourStatusText(cell, padded);
        if (i === 4) return dim(padded);
        return padded;
      })
      .join("  ");
  console.log(bold(pad(headers, false)));
  console.log(dim(widths.map((w) => "─".repeat(w)).join("  ")));
  for (const row of rows) console.log(pad(row, true));
}

async function send(
  probe: Probe,
  token: string | undefined,
): Promise<{ status: number; seen: string; retryAfter: string | null }> {
  const headers: Record<string, string> = { ...probe.headers };
  if (token) headers.authorization = `Bearer ${token}`;
  if (probe.body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(`${PROXY}${probe.path}`, {
    method: probe.method,
    headers,
    ...(probe.body === undefined ? {} : { body: JSON.stringify(probe.body) }),
  });
  const text = await response.text();
  return {
    status: response.status,
    seen: describeIdentity(text),
    retryAfter: response.headers.get("retry-after"),
  };
}

/** The app echoes its identity headers; a proxy refusal is a problem+json that never reached it. */
function describeIdentity(text: string): string {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    return "";
  }
  if (!isRecord(body)) return "";
  const identity = body.identity;
  if (!isRecord(identity) || !isRecord(identity.x_auth)) {
    return typeof body.title === "string"
      ? `(not forwarded: ${body.title.toLowerCase()})`
      : "(not forwarded)";
  }
  const xAuth = identity.x_auth;
  const one = (name: string) => {
    const values = xAuth[name];
    return Array.isArray(values) ? values.join(" | ") : undefined;
  };
  const parts = [
    ["sub", one("x-auth-subject")],
    ["roles", one("x-auth-roles")],
  ].flatMap(([label, value]) => (value ? [`${label}=${value}`] : []));
  const spoofed = Array.isArray(identity.raw_headers)
    ? identity.raw_headers.some((pair) => Array.isArray(pair) && /^x[_.]auth/.test(String(pair[0])))
    : false;
  if (parts.length === 0) return "(no identity: public route)";
  return parts.join(" ") + (spoofed ? " (spoofed copy got through!)" : "");
}

function colourStatus(status: number): string {
  return colourStatusText(String(status), String(status));
}

function colourStatusText(status: string, text: string): string {
  if (/^2/.test(status)) return styleText("green", text);
  if (/^4(01|03)/.test(status)) return styleText("yellow", text);
  if (/429/.test(status)) return styleText("magenta", text);
  return styleText("red", text);
}

function printCurl(): void {
  const idp = stack.idp;
  if (!idp) return;
  const fetchToken = (client: string, secret: string, scope: string) =>
    `curl -s -u ${client}:${secret} -d grant_type=client_credentials -d 'scope=${scope}' ` +
    `-d resource=${idp.audience} ${idp.tokenEndpoint} | sed -E 's/.*"access_token":"([^"]+)".*/\\1/'`;
  console.log(`\n${bold("Try it")}`);
  console.log(dim("  # a token for the reader client (client credentials at the IdP)"));
  console.log(`  TOKEN=$(${fetchToken("reader", "reader-secret", "orders.read")})`);
  console.log(`  curl -i -H "Authorization: Bearer $TOKEN" ${PROXY}/orders`);
  console.log(
    `  curl -i -X POST -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' -d '{"item":"tea"}' ${PROXY}/orders`,
  );
  console.log(
    dim("  # writer and admin: same command with writer:writer-secret 'orders.read orders.write',"),
  );
  console.log(dim("  # admin:admin-secret 'orders.read orders.write orders.admin'"));
  console.log(`  curl -s ${ADMIN}/readyz; curl -s ${ADMIN}/metrics | grep ^portcullis_requests_total`);
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

// ---- shutdown ---------------------------------------------------------------------------------------

async function stopAll(): Promise<void> {
  const { proxy, proxyExited } = stack;
  if (proxy && proxy.exitCode === null && proxy.signalCode === null) {
    proxy.kill("SIGTERM");
    const timer = setTimeout(() => proxy.kill("SIGKILL"), 5_000);
    await proxyExited;
    clearTimeout(timer);
  }
  await Promise.all([stack.upstream?.stop(), stack.idp?.stop()]);
}

let failed = false;
try {
  await main();
} catch (error) {
  failed = true;
  console.error(styleText("red", `\ndemo failed: ${error instanceof Error ? error.message : String(error)}`));
  if (String(error).includes("EADDRINUSE")) {
    console.error(`ports ${IDP_PORT}, 8080 and 9901 must be free (is another demo running?)`);
  }
} finally {
  await stopAll();
}
console.log(dim("stopped: proxy, FastAPI app and IdP"));
process.exit(failed ? 1 : 0);
