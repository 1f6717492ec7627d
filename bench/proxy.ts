// The proxy against a bare node:http + undici pass-through, same tiny upstream, same load (wrk, 32
// connections): requests/s, p50/p99 latency, CPU time per request, peak RSS and peak private (anonymous)
// memory of the server process, and the ratio. Each server runs in a child process of its own; its CPU
// and memory are read from /proc by this process.
//   npx node bench/proxy.ts [--seconds 3] [--rounds 7] [--profile <dir>] [--sidecar-node-options "<flags>"]...
// (--sidecar-node-options: node flags and NAME=value environment variables, e.g. "MALLOC_ARENA_MAX=2";
// --each-round prints every round's req/s)
//
// Servers measured:
//   pass-through (stream)    node:http + undici Pool.stream(), the shape FIELD-NOTES measured
//   pass-through (dispatch)  node:http + undici Pool.dispatch() writing into res, what forward.ts does
//   portcullis               createProxyServer with the example policy: RS256 bearer token, anyRole rule,
//                            header hygiene, identity headers, JSON access log to stdout, metrics
//   portcullis, log off      the same at log level warn: what the access log costs
//   sidecar (deployed)       the compiled proxy/main.js (npm run build, what the image runs) with the
//                            runtime settings (MALLOC_ARENA_MAX, NODE_OPTIONS) the operator sets for the
//                            default memory limit
// The budget (ARCHITECTURE.md): portcullis >= 0.90x the bare pass-through. Servers in separate processes
// measured in turns see other tenants' load in turns too: read the budget from proxy-interleaved.ts.

import { type ChildProcess, execFileSync, fork } from "node:child_process";
import { once } from "node:events";
import { openSync, readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { availableParallelism } from "node:os";
import { median } from "./support/median.ts";
import {
  type CompiledProxy,
  compileProxy,
  deployedSettings,
  dispatchPassThrough,
  examplePortcullis,
  type Handler,
  listenOnLoopback,
  passThroughPool,
  startCompiledSidecar,
  streamPassThrough,
  upstreamHandler,
} from "./support/servers.ts";
import { hasWrk, type Measurement, WRK_CONNECTIONS, wrk } from "./support/wrk.ts";

const ROLE = process.argv[2];

type ServerKind = "upstream" | "stream" | "dispatch" | "portcullis" | "portcullis-quiet" | "sidecar";

interface Ready {
  port: number;
}

// ---- child processes ------------------------------------------------------------------------------

/** "exit" from the parent ends the child normally, so --cpu-prof and friends write their output. */
function exitOnRequest(): void {
  process.on("message", (message: unknown) => {
    if (message === "exit") process.exit(0);
  });
}

async function listen(server: Server): Promise<void> {
  const ready: Ready = { port: await listenOnLoopback(server) };
  process.send?.(ready);
  exitOnRequest();
}

async function runServer(handler: Handler): Promise<void> {
  await listen(createServer(handler));
}

// ---- the parent: load generator and report ----------------------------------------------------------

interface Child {
  kind: ServerKind;
  /** The row's name. */
  label: string;
  process: ChildProcess;
  port: number;
}

async function start(kind: ServerKind, args: string[] = []): Promise<Child> {
  // Access logs go where a container's stdout would: written, never read here.
  const devNull = openSync("/dev/null", "w");
  // --profile <dir>: V8 CPU profiles of the portcullis servers, for `node --cpu-prof` tooling.
  const at = process.argv.indexOf("--profile");
  const profile =
    at > 0 && kind.startsWith("portcullis") ? [`--cpu-prof`, `--cpu-prof-dir=${process.argv[at + 1]}`] : [];
  const child = fork(new URL(import.meta.url).pathname, [kind, ...args], {
    stdio: ["ignore", devNull, "inherit", "ipc"],
    execArgv: [...process.execArgv, ...profile],
  });
  const [message] = (await once(child, "message")) as [Ready];
  return { kind, label: LABELS[kind], process: child, port: message.port };
}

async function startSidecar(
  built: CompiledProxy,
  upstream: string,
  issuer: string,
  settings: string,
): Promise<Child> {
  const sidecar = await startCompiledSidecar(built, upstream, issuer, settings);
  const label = settings === DEPLOYED_SETTINGS ? LABELS.sidecar : `sidecar ${settings || "(Node defaults)"}`;
  return { kind: "sidecar", label, process: sidecar.process, port: sidecar.port };
}

// ---- measuring a child from /proc -----------------------------------------------------------------

const CLOCK_TICKS_PER_SECOND = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim());

/** utime + stime of a process (all threads) or of one thread, in microseconds. */
function cpuMicros(statFile: string): number {
  const fields = readFileSync(statFile, "utf8").split(") ")[1]!.split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1e6) / CLOCK_TICKS_PER_SECOND;
}

function statusKiB(pid: number, field: string): number {
  const match = new RegExp(`${field}:\\s+(\\d+)`).exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(match?.[1] ?? Number.NaN);
}

/** Private memory: anonymous pages (heap, malloc), not the node binary's shared, file-backed text. */
function anonymousKiB(pid: number): number {
  const match = /Anonymous:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/smaps_rollup`, "utf8"));
  return Number(match?.[1] ?? Number.NaN);
}

interface Result extends Measurement {
  cpuMicrosPerRequest: number;
  mainThreadMicrosPerRequest: number;
  maxRssMiB: number;
  maxPrivateMiB: number;
}

async function measure(child: Child, seconds: number, token: string): Promise<Result> {
  const pid = child.process.pid!;
  const url = `http://127.0.0.1:${child.port}/orders`;
  const cpuBefore = cpuMicros(`/proc/${pid}/stat`);
  const mainBefore = cpuMicros(`/proc/${pid}/task/${pid}/stat`);
  let privatePeak = anonymousKiB(pid);
  const sampler = setInterval(() => {
    privatePeak = Math.max(privatePeak, anonymousKiB(pid));
  }, 100);
  const load = await wrk(url, seconds, token);
  clearInterval(sampler);
  return {
    ...load,
    cpuMicrosPerRequest: (cpuMicros(`/proc/${pid}/stat`) - cpuBefore) / load.requests,
    mainThreadMicrosPerRequest: (cpuMicros(`/proc/${pid}/task/${pid}/stat`) - mainBefore) / load.requests,
    maxRssMiB: statusKiB(pid, "VmHWM") / 1024,
    maxPrivateMiB: Math.max(privatePeak, anonymousKiB(pid)) / 1024,
  };
}

function mean(results: readonly Result[], pick: (r: Result) => number): number {
  return results.reduce((sum, r) => sum + pick(r), 0) / results.length;
}

/** What the operator sets for a sidecar with the default memory limit. */
const DEPLOYED_SETTINGS = deployedSettings();

const LABELS: Record<ServerKind, string> = {
  upstream: "upstream",
  stream: "pass-through (stream)",
  dispatch: "pass-through (dispatch)",
  portcullis: "portcullis",
  "portcullis-quiet": "portcullis, log off",
  sidecar: "sidecar (deployed)",
};

function row(cells: readonly (string | number)[], widths: readonly number[]): string {
  return cells
    .map((cell, i) => (i === 0 ? String(cell).padEnd(widths[i]!) : String(cell).padStart(widths[i]!)))
    .join(" ");
}

async function main(): Promise<void> {
  const flag = (name: string, fallback: number) => {
    const at = process.argv.indexOf(name);
    return at > 0 ? Number(process.argv[at + 1]) : fallback;
  };
  const seconds = flag("--seconds", 3);
  const rounds = flag("--rounds", 7);
  if (!hasWrk()) {
    console.log("bench/proxy.ts: wrk is not installed (apt-get install -y wrk); skipped.");
    return;
  }
  const { startIdentityProvider } = await import("../examples/idp.ts");
  const idp = await startIdentityProvider({ signingAlg: "RS256", tokenTtlSeconds: 3600 });
  const token = await idp.token("reader");
  const upstream = await start("upstream");
  const upstreamUrl = `http://127.0.0.1:${upstream.port}`;
  const built = compileProxy();
  const servers = [
    await start("stream", [upstreamUrl]),
    await start("dispatch", [upstreamUrl]),
    await start("portcullis", [upstreamUrl, idp.issuer]),
    await start("portcullis-quiet", [upstreamUrl, idp.issuer]),
  ];
  // --sidecar-node-options "<flags>" (repeatable; "" for Node's defaults) adds sidecars run with
  // other V8 settings, measured in the same rounds as the deployed one.
  const variants = process.argv.flatMap((arg, i) =>
    arg === "--sidecar-node-options" ? [process.argv[i + 1] ?? ""] : [],
  );
  for (const nodeOptions of [DEPLOYED_SETTINGS, ...variants]) {
    servers.push(await startSidecar(built, upstreamUrl, idp.issuer, nodeOptions));
  }
  try {
    // Warm-up: JIT (a few seconds matter on this machine), connection pools, the token cache.
    for (const server of servers) await wrk(`http://127.0.0.1:${server.port}/orders`, 5, token);
    const results = new Map<string, Result[]>(servers.map((s) => [s.label, []]));
    // Alternating rounds, so other load on the machine lands on every server alike.
    for (let round = 0; round < rounds; round++) {
      for (const server of servers) results.get(server.label)!.push(await measure(server, seconds, token));
    }
    console.log(
      `node ${process.version}, ${availableParallelism()} CPUs; wrk -t1 -c${WRK_CONNECTIONS} -d${seconds}s x ${rounds} round(s); GET /orders, RS256 bearer token; tiny node:http upstream`,
    );
    const widths = [Math.max(24, ...servers.map((s) => s.label.length)), 8, 7, 7, 11, 12, 9, 13, 7];
    console.log(
      row(
        [
          "server",
          "req/s",
          "p50 ms",
          "p99 ms",
          "CPU us/req",
          "main us/req",
          "peak RSS",
          "peak private",
          "errors",
        ],
        widths,
      ),
    );
    for (const server of servers) {
      const r = results.get(server.label)!;
      console.log(
        row(
          [
            server.label,
            mean(r, (x) => x.requestsPerSecond).toFixed(0),
            mean(r, (x) => x.p50Ms).toFixed(2),
            mean(r, (x) => x.p99Ms).toFixed(2),
            mean(r, (x) => x.cpuMicrosPerRequest).toFixed(1),
            mean(r, (x) => x.mainThreadMicrosPerRequest).toFixed(1),
            `${Math.max(...r.map((x) => x.maxRssMiB)).toFixed(0)} MiB`,
            `${Math.max(...r.map((x) => x.maxPrivateMiB)).toFixed(0)} MiB`,
            r.reduce((sum, x) => sum + x.errors, 0),
          ],
          widths,
        ),
      );
    }
    // Each round measures every server back to back, so a ratio within one round compares the two
    // under nearly the same machine; the median over rounds sets aside the rounds another tenant of
    // the machine disturbed, and the range shows how large that noise was.
    const perRound = (label: string, baseline: string, pick: (r: Result) => number) => {
      const [a, b] = [results.get(label)!, results.get(baseline)!];
      return a.map((r, i) => pick(r) / pick(b[i]!)).sort((x, y) => x - y);
    };
    const ratios: [string, string][] = [
      [LABELS.portcullis, LABELS.stream],
      [LABELS.portcullis, LABELS.dispatch],
      [LABELS["portcullis-quiet"], LABELS.stream],
      ...servers.filter((s) => s.kind === "sidecar").map((s): [string, string] => [s.label, LABELS.stream]),
    ];
    if (process.argv.includes("--each-round")) {
      for (const server of servers) {
        const each = results.get(server.label)!.map((r) => r.requestsPerSecond.toFixed(0).padStart(6));
        console.log(`${server.label.padEnd(widths[0]!)} req/s per round: ${each.join(" ")}`);
      }
    }
    console.log(`ratios: median over ${rounds} round(s) [lowest-highest round]`);
    for (const [label, baseline] of ratios) {
      const rps = perRound(label, baseline, (r) => r.requestsPerSecond);
      const cpu = perRound(label, baseline, (r) => r.cpuMicrosPerRequest);
      console.log(
        `${label} / ${baseline}: ${median(rps).toFixed(2)}x req/s [${rps[0]!.toFixed(2)}-${rps.at(-1)!.toFixed(2)}], ${median(cpu).toFixed(2)}x CPU per request [${cpu[0]!.toFixed(2)}-${cpu.at(-1)!.toFixed(2)}]`,
      );
    }
    console.log(
      "budget (ARCHITECTURE.md): portcullis >= 0.90x the bare pass-through's req/s; RSS <= 64 MiB under load",
    );
  } finally {
    // "exit" lets each server end normally (so --cpu-prof writes its profile); the sidecar gets
    // SIGTERM and drains; kill what lingers.
    await Promise.all(
      [upstream, ...servers].map(async (child) => {
        if (child.process.connected) child.process.send("exit");
        else child.process.kill("SIGTERM");
        const exited = once(child.process, "exit");
        const timer = setTimeout(() => child.process.kill(), 5_000);
        await exited;
        clearTimeout(timer);
      }),
    );
    await idp.stop();
    built.remove();
  }
}

if (ROLE === "upstream") await runServer(upstreamHandler);
else if (ROLE === "stream") await runServer(streamPassThrough(passThroughPool(process.argv[3]!)));
else if (ROLE === "dispatch") await runServer(dispatchPassThrough(passThroughPool(process.argv[3]!)));
else if (ROLE === "portcullis")
  await listen((await examplePortcullis(process.argv[3]!, process.argv[4]!, "info")).server);
else if (ROLE === "portcullis-quiet")
  await listen((await examplePortcullis(process.argv[3]!, process.argv[4]!, "warn")).server);
else await main();
