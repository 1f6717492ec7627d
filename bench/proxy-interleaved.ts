// The proxy against the bare pass-throughs in ONE server process, under ONE wrk run: the server's
// request handler changes every second (stream pass-through, dispatch pass-through, portcullis, in
// turn) and each window's completed requests are counted. Neighbouring windows share the machine's
// state of the moment, the process's JIT and GC and the very same client and upstream connections,
// so the ratios are far steadier on a shared machine than those of bench/proxy.ts, whose servers
// take turns minutes apart.
//   npx node bench/proxy-interleaved.ts [--seconds 45] [--node-options "<flags and NAME=value>"]
// The server runs with the runtime settings the operator gives a sidecar with the default memory limit
// (MALLOC_ARENA_MAX, NODE_OPTIONS), unless --node-options says otherwise.
// The budget (ARCHITECTURE.md): portcullis >= 0.90x the bare pass-through's throughput.

import { fork } from "node:child_process";
import { once } from "node:events";
import { createServer } from "node:http";
import { median } from "./support/median.ts";
import {
  deployedSettings,
  dispatchPassThrough,
  examplePortcullis,
  type Handler,
  listenOnLoopback,
  parseRuntimeSettings,
  passThroughPool,
  streamPassThrough,
  upstreamHandler,
} from "./support/servers.ts";
import { hasWrk, WRK_CONNECTIONS, wrk } from "./support/wrk.ts";

const MODES = ["pass-through (stream)", "pass-through (dispatch)", "portcullis"] as const;
type Mode = (typeof MODES)[number];
const WINDOW_MS = 1_000;

interface Ready {
  port: number;
}

/** Requests per second of each window, in the order the windows ran. */
type Windows = { mode: Mode; perSecond: number }[];

// ---- child processes ------------------------------------------------------------------------------

async function runUpstream(): Promise<void> {
  const ready: Ready = { port: await listenOnLoopback(createServer(upstreamHandler)) };
  process.send?.(ready);
}

/** One server whose 'request' listener rotates through MODES until the parent asks for the counts. */
async function runRotatingServer(upstream: string, issuer: string): Promise<void> {
  const proxy = await examplePortcullis(upstream, issuer, "info");
  const handlers: Record<Mode, Handler> = {
    "pass-through (stream)": streamPassThrough(passThroughPool(upstream)),
    "pass-through (dispatch)": dispatchPassThrough(passThroughPool(upstream)),
    // The proxy's own listeners (request, and checkContinue, upgrade... which this load never uses).
    portcullis: (req, res) => proxy.server.emit("request", req, res),
  };
  let mode: Mode = MODES[0];
  let served = 0;
  const port = await listenOnLoopback(
    createServer((req, res) => {
      served++;
      handlers[mode](req, res);
    }),
  );
  const windows: Windows = [];
  let turn = 0;
  let started = performance.now();
  let servedAtStart = 0;
  const rotate = setInterval(() => {
    const now = performance.now();
    windows.push({ mode, perSecond: ((served - servedAtStart) * 1000) / (now - started) });
    turn++;
    mode = MODES[turn % MODES.length]!;
    started = now;
    servedAtStart = served;
  }, WINDOW_MS);
  process.on("message", (message: unknown) => {
    if (message === "counts") {
      clearInterval(rotate);
      process.send?.(windows);
    } else if (message === "reset") {
      windows.length = 0;
    } else if (message === "exit") {
      process.exit(0);
    }
  });
  const ready: Ready = { port };
  process.send?.(ready);
}

// ---- the parent ----------------------------------------------------------------------------------

async function child(
  args: string[],
  settings = "",
): Promise<{ process: ReturnType<typeof fork>; port: number }> {
  const { flags, env } = parseRuntimeSettings(settings);
  const process_ = fork(new URL(import.meta.url).pathname, args, {
    stdio: ["ignore", "ignore", "inherit", "ipc"],
    execArgv: [...process.execArgv, ...flags],
    env: { ...process.env, ...env },
  });
  const [message] = (await once(process_, "message")) as [Ready];
  return { process: process_, port: message.port };
}

/**
 * The ratio of `mode`'s windows to `baseline`'s, each window against the baseline windows just before
 * and after it (their mean): what the machine did during those three seconds cancels out.
 */
function ratios(windows: Windows, mode: Mode, baseline: Mode): number[] {
  const out: number[] = [];
  windows.forEach((window, i) => {
    if (window.mode !== mode) return;
    const before = windows.slice(0, i).findLast((w) => w.mode === baseline);
    const after = windows.slice(i + 1).find((w) => w.mode === baseline);
    if (before && after) out.push(window.perSecond / ((before.perSecond + after.perSecond) / 2));
  });
  return out.sort((a, b) => a - b);
}

async function main(): Promise<void> {
  const flag = (name: string) => {
    const at = process.argv.indexOf(name);
    return at > 0 ? process.argv[at + 1] : undefined;
  };
  const seconds = Number(flag("--seconds") ?? 45);
  const nodeOptions = flag("--node-options") ?? deployedSettings();
  if (!hasWrk()) {
    console.log("bench/proxy-interleaved.ts: wrk is not installed (apt-get install -y wrk); skipped.");
    return;
  }
  const { startIdentityProvider } = await import("../examples/idp.ts");
  const idp = await startIdentityProvider({ signingAlg: "RS256", tokenTtlSeconds: 3600 });
  const token = await idp.token("reader");
  const upstream = await child(["upstream"]);
  const server = await child(["server", `http://127.0.0.1:${upstream.port}`, idp.issuer], nodeOptions);
  try {
    // Warm-up: JIT, connection pools, the token cache, for every mode.
    await wrk(`http://127.0.0.1:${server.port}/orders`, 6, token);
    server.process.send("reset");
    await wrk(`http://127.0.0.1:${server.port}/orders`, seconds, token);
    server.process.send("counts");
    const [windows] = (await once(server.process, "message")) as [Windows];
    console.log(
      `node ${process.version}; one server (${nodeOptions || "Node's defaults"}), its handler rotated every ${WINDOW_MS} ms; wrk -t1 -c${WRK_CONNECTIONS} -d${seconds}s; GET /orders, RS256 bearer token; tiny node:http upstream`,
    );
    for (const mode of MODES) {
      const rates = windows.filter((w) => w.mode === mode).map((w) => w.perSecond);
      console.log(
        `${mode.padEnd(24)} ${median(rates)
          .toFixed(0)
          .padStart(7)} req/s (median of ${rates.length} windows)`,
      );
    }
    console.log("ratios: median over windows [lowest-highest window], each against its neighbours");
    for (const baseline of MODES.slice(0, 2)) {
      const r = ratios(windows, "portcullis", baseline);
      console.log(
        `portcullis / ${baseline}: ${median(r).toFixed(2)}x req/s [${r[0]!.toFixed(2)}-${r.at(-1)!.toFixed(2)}]`,
      );
    }
    console.log("budget (ARCHITECTURE.md): portcullis >= 0.90x the bare pass-through's req/s");
  } finally {
    for (const { process: p } of [server, upstream]) {
      if (p.connected) p.send("exit");
      p.kill();
    }
    await idp.stop();
  }
}

const role = process.argv[2];
if (role === "upstream") await runUpstream();
else if (role === "server") await runRotatingServer(process.argv[3]!, process.argv[4]!);
else await main();
