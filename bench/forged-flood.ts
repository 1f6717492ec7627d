// What a flood of forged tokens costs valid traffic. One proxy process (the example policy, access log
// on, a tiny node:http upstream) serves a valid client from 127.0.0.1 (one real RS256 token, so it is
// verified once and then cached; closed loop) while a second client floods it from 127.0.0.2 (open
// loop, a fixed rate); rounds of the scenarios alternate, and each one's valid req/s is divided by the
// control's from the same rounds:
//   flood sent elsewhere the same flood aimed at the upstream directly: what the flooding client itself
//                        takes from the shared cores (the control)
//   distinct forgeries   every request a new token under the IdP's kid with random signature bytes:
//                        each costs an RSA signature check, and no cache can help
//   ...+ limit           the same with spec.authentication.failedAuthenticationLimit (10/s, burst 20):
//                        the flooding peer gets 429 before any verification
//   one forgery replayed the same forged token again and again (refused-token cache, shared verification)
// Before those, each kind of request alone at the flood's rate: the proxy's CPU per request.
// (bench/verify.ts measures the refused-token cache alone.)
// Closed-loop clients written with undici, no wrk needed:
//   npx node bench/forged-flood.ts [--rounds 5] [--round-ms 2000] [--connections 16] [--flood-rate 3000]

import { fork } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { createServer } from "node:http";
import { Pool } from "undici";
import type { ProxyRuntime } from "../proxy/runtime.ts";
import { median } from "./support/median.ts";
import { examplePortcullis, exampleRuntime, listenOnLoopback, upstreamHandler } from "./support/servers.ts";

const SCENARIOS = [
  { name: "valid alone (baseline)", flood: "none", runtime: "open" },
  { name: "flood sent elsewhere (control)", flood: "elsewhere", runtime: "open" },
  { name: "distinct forgeries", flood: "distinct", runtime: "open" },
  { name: "distinct forgeries + limit", flood: "distinct", runtime: "limited" },
  { name: "one forgery replayed", flood: "replay", runtime: "open" },
] as const;
type Flood = (typeof SCENARIOS)[number]["flood"];

/** Requests measured one kind at a time: the proxy's CPU per request. */
const COSTS = [
  { name: "valid token (verified before)", flood: "none", runtime: "open" },
  { name: "distinct forgeries", flood: "distinct", runtime: "open" },
  { name: "distinct forgeries, limit exhausted", flood: "distinct", runtime: "limited" },
  { name: "one forgery replayed", flood: "replay", runtime: "open" },
] as const satisfies readonly { name: string; flood: Flood; runtime: RuntimeName }[];
type RuntimeName = (typeof SCENARIOS)[number]["runtime"];

interface Ready {
  port: number;
}
interface LoadOrder {
  ms: number;
  flood: Flood;
  /** Requests per second, open loop; undefined: closed loop. */
  rate?: number;
}
interface LoadReport {
  perSecond: number;
  statuses: Record<string, number>;
}

// ---- child processes ------------------------------------------------------------------------------

async function runUpstream(): Promise<void> {
  const ready: Ready = { port: await listenOnLoopback(createServer(upstreamHandler)) };
  process.send?.(ready);
}

/** The proxy with two runtimes for the example policy, switched by the parent between rounds. */
async function runProxy(upstream: string, issuer: string): Promise<void> {
  const { KeySetRegistry } = await import("../proxy/authn/key-set.ts");
  const keySets = new KeySetRegistry();
  const [open, limited] = await Promise.all([
    exampleRuntime(issuer, { keySets }),
    exampleRuntime(issuer, {
      keySets,
      patch: (document) => {
        document.spec.authentication.failedAuthenticationLimit = { perSecond: 10, burst: 20 };
      },
    }),
  ]);
  const runtimes: Record<RuntimeName, ProxyRuntime> = { open, limited };
  let current = runtimes.open;
  // The access log on (to stdout, which the parent discards): every refusal writes a line too.
  const proxy = await examplePortcullis(upstream, issuer, "info", { current: () => current });
  const port = await listenOnLoopback(proxy.server);
  process.on("message", (message: unknown) => {
    if (message === "exit") process.exit(0);
    if (message === "cpu") {
      const { user, system } = process.cpuUsage();
      process.send?.(user + system);
      return;
    }
    const name = (message as { runtime?: RuntimeName }).runtime;
    if (name !== undefined) {
      current = runtimes[name];
      process.send?.("switched");
    }
  });
  const ready: Ready = { port };
  process.send?.(ready);
}

/** A closed-loop client: `connections` requests outstanding, each answered before the next is sent. */
async function runLoad(
  url: string,
  elsewhere: string,
  localAddress: string,
  connections: number,
  token: string,
): Promise<void> {
  const pool = new Pool(url, { connections, pipelining: 1, connect: { localAddress } });
  const elsewherePool = new Pool(elsewhere, { connections, pipelining: 1, connect: { localAddress } });
  // header.payload of a token the IdP would sign; a forgery gets random signature bytes.
  const unsigned = token.split(".").slice(0, 2).join(".");
  const replayed = `${unsigned}.${randomBytes(256).toString("base64url")}`;
  const tokenFor = (flood: Flood): string =>
    flood === "none"
      ? token
      : flood === "replay"
        ? replayed
        : `${unsigned}.${randomBytes(256).toString("base64url")}`;
  process.on("message", async (message: unknown) => {
    if (message === "exit") {
      await Promise.all([pool.close(), elsewherePool.close()]);
      process.exit(0);
    }
    const order = message as LoadOrder;
    const statuses: Record<string, number> = {};
    let done = 0;
    const start = performance.now();
    const deadline = start + order.ms;
    const target = order.flood === "elsewhere" ? elsewherePool : pool;
    const send = async () => {
      const response = await target.request({
        method: "GET",
        path: "/orders",
        headers: { authorization: `Bearer ${tokenFor(order.flood)}` },
      });
      await response.body.dump();
      statuses[response.statusCode] = (statuses[response.statusCode] ?? 0) + 1;
      done++;
    };
    if (order.rate === undefined) {
      // Closed loop: each connection sends its next request when the last is answered.
      const worker = async () => {
        while (performance.now() < deadline) await send();
      };
      await Promise.all(Array.from({ length: connections }, worker));
    } else {
      // Open loop: `rate` requests a second whatever the answers, at most `connections` outstanding.
      let sent = 0;
      let inFlight = 0;
      const pending = new Set<Promise<void>>();
      while (performance.now() < deadline) {
        const due = Math.floor(((performance.now() - start) / 1000) * order.rate);
        while (sent < due && inFlight < connections) {
          sent++;
          inFlight++;
          const request = send().finally(() => {
            inFlight--;
            pending.delete(request);
          });
          pending.add(request);
        }
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
      await Promise.all(pending);
    }
    const report: LoadReport = { perSecond: (done * 1000) / (performance.now() - start), statuses };
    process.send?.(report);
  });
  process.send?.("ready");
}

// ---- the parent ----------------------------------------------------------------------------------

async function child<T>(args: string[]): Promise<{ process: ReturnType<typeof fork>; first: T }> {
  const process_ = fork(new URL(import.meta.url).pathname, args, {
    stdio: ["ignore", "ignore", "inherit", "ipc"],
  });
  const [first] = (await once(process_, "message")) as [T];
  return { process: process_, first };
}

async function ask<T>(target: ReturnType<typeof fork>, message: unknown): Promise<T> {
  const answer = once(target, "message");
  target.send(message as string);
  return ((await answer) as [T])[0];
}

async function main(): Promise<void> {
  const flag = (name: string, fallback: number) => {
    const at = process.argv.indexOf(name);
    return at > 0 ? Number(process.argv[at + 1]) : fallback;
  };
  const rounds = flag("--rounds", 5);
  const roundMs = flag("--round-ms", 2000);
  const connections = flag("--connections", 16);
  const floodRate = flag("--flood-rate", 3000);
  const { startIdentityProvider } = await import("../examples/idp.ts");
  const idp = await startIdentityProvider({ signingAlg: "RS256", tokenTtlSeconds: 3600 });
  const token = await idp.token("reader");
  const children: ReturnType<typeof fork>[] = [];
  try {
    const upstream = await child<Ready>(["upstream"]);
    children.push(upstream.process);
    const proxy = await child<Ready>(["proxy", `http://127.0.0.1:${upstream.first.port}`, idp.issuer]);
    children.push(proxy.process);
    const url = `http://127.0.0.1:${proxy.first.port}`;
    const direct = `http://127.0.0.1:${upstream.first.port}`;
    const valid = await child<string>(["load", url, direct, "127.0.0.1", String(connections), token]);
    const flood = await child<string>(["load", url, direct, "127.0.0.2", String(connections), token]);
    children.push(valid.process, flood.process);

    interface Sample {
      valid: LoadReport;
      flood: LoadReport | undefined;
      /** The proxy process's CPU in the round, us. */
      cpu: number;
    }
    const results = new Map<string, Sample[]>(SCENARIOS.map((s) => [s.name, []]));
    const count = (report: LoadReport) => Object.values(report.statuses).reduce((a, b) => a + b, 0);
    // Round 0 warms up (JIT, pools, the valid token in each runtime's cache) and is not counted.
    const costs = new Map<string, number[]>(COSTS.map((c) => [c.name, []]));
    for (let round = 0; round <= rounds; round++) {
      // The proxy's CPU per request, each kind alone at the same open-loop rate from one client.
      for (const cost of COSTS) {
        await ask(proxy.process, { runtime: cost.runtime });
        const cpuBefore = await ask<number>(proxy.process, "cpu");
        const report = await ask<LoadReport>(flood.process, {
          ms: round === 0 ? 300 : roundMs / 2,
          flood: cost.flood,
          rate: floodRate,
        } satisfies LoadOrder);
        const cpu = (await ask<number>(proxy.process, "cpu")) - cpuBefore;
        if (round > 0) costs.get(cost.name)!.push(cpu / count(report));
      }
      for (const scenario of SCENARIOS) {
        await ask(proxy.process, { runtime: scenario.runtime });
        const ms = round === 0 ? 500 : roundMs;
        const cpuBefore = await ask<number>(proxy.process, "cpu");
        const [v, f] = await Promise.all([
          ask<LoadReport>(valid.process, { ms, flood: "none" } satisfies LoadOrder),
          scenario.flood === "none"
            ? undefined
            : ask<LoadReport>(flood.process, {
                ms,
                flood: scenario.flood,
                rate: floodRate,
              } satisfies LoadOrder),
        ]);
        const cpu = (await ask<number>(proxy.process, "cpu")) - cpuBefore;
        if (round === 0) continue;
        if (Object.keys(v.statuses).some((status) => status !== "200")) {
          throw new Error(`valid client got ${JSON.stringify(v.statuses)} in ${scenario.name}`);
        }
        results.get(scenario.name)!.push({ valid: v, flood: f, cpu });
      }
    }
    const baseline = results.get(SCENARIOS[0].name)!;
    const rateOf = (name: string) => median(results.get(name)!.map((x) => x.valid.perSecond));
    const aloneRate = rateOf(SCENARIOS[0].name);
    const controlRate = rateOf(SCENARIOS[1].name);
    const validCpu = median(baseline.map((x) => x.cpu / count(x.valid)));
    console.log(
      `node ${process.version}; one proxy process (example policy, access log on), tiny upstream; valid client: ${connections} connections, closed loop; flood: ${floodRate} req/s open loop from another address; median of ${rounds} alternating rounds of ${roundMs} ms`,
    );
    const validCost = median(costs.get(COSTS[0].name)!);
    console.log(`proxy CPU per request, each kind alone at ${floodRate} req/s:`);
    for (const cost of COSTS) {
      const us = median(costs.get(cost.name)!);
      console.log(
        `  ${cost.name.padEnd(40)} ${us.toFixed(1).padStart(7)} us  ${(us / validCost).toFixed(2)}x a valid request`,
      );
    }
    console.log("valid traffic (closed loop) under the flood:");
    console.log(
      `${"scenario".padEnd(31)} ${"valid req/s".padStart(11)} ${"vs alone".padStart(8)} ${"vs control".padStart(10)} ${"lost/flood req".padStart(14)}  flood answers`,
    );
    for (const scenario of SCENARIOS) {
      const samples = results.get(scenario.name)!;
      const rate = rateOf(scenario.name);
      const floods = samples.flatMap((x) => (x.flood === undefined ? [] : [x.flood]));
      const answers: Record<string, number> = {};
      for (const f of floods) {
        for (const [status, n] of Object.entries(f.statuses)) answers[status] = (answers[status] ?? 0) + n;
      }
      const answerText = Object.entries(answers)
        .map(([status, n]) => `${status}: ${n}`)
        .join(", ");
      // Valid requests the proxy did not serve for each flood request it answered, against the control.
      const floodRateSeen = median(floods.map((f) => f.perSecond));
      const lost = floods.length === 0 ? "-" : ((controlRate - rate) / floodRateSeen).toFixed(2);
      console.log(
        `${scenario.name.padEnd(31)} ${rate.toFixed(0).padStart(11)} ${`${(rate / aloneRate).toFixed(2)}x`.padStart(8)} ${`${(rate / controlRate).toFixed(2)}x`.padStart(10)} ${lost.padStart(14)}  ${answerText}`,
      );
    }
    console.log(`proxy CPU per valid request alone: ${validCpu.toFixed(1)} us`);
  } finally {
    for (const p of children) {
      if (p.connected) p.send("exit");
      p.kill();
    }
    await idp.stop();
  }
}

const role = process.argv[2];
if (role === "upstream") await runUpstream();
else if (role === "proxy") await runProxy(process.argv[3]!, process.argv[4]!);
else if (role === "load")
  await runLoad(
    process.argv[3]!,
    process.argv[4]!,
    process.argv[5]!,
    Number(process.argv[6]),
    process.argv[7]!,
  );
else await main();
