// Two runtime settings of the deployed sidecar (node flags, NAME=value environment variables) compared
// SIDE BY SIDE: two compiled sidecars loaded at the same time by two wrk, the same upstream and IdP,
// their ports swapped every round. Both live through the same moments of the shared machine, so the
// ratio of what they served is steady to about 1% (A against A: 0.998x and 1.003x), where servers
// measured in turns differ by 20% from one round to the next.
//   npx node bench/sidecar-settings.ts [--a "<settings>"] [--b "<settings>"] [--rounds 4] [--seconds 10]
// Default: A is what the operator sets for the default memory limit, B is Node's defaults ("").

import { once } from "node:events";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { median } from "./support/median.ts";
import {
  compileProxy,
  deployedSettings,
  listenOnLoopback,
  startCompiledSidecar,
  upstreamHandler,
} from "./support/servers.ts";
import { hasWrk, WRK_CONNECTIONS, wrk } from "./support/wrk.ts";

function flag(name: string): string | undefined {
  const at = process.argv.indexOf(name);
  return at > 0 ? process.argv[at + 1] : undefined;
}

/** Requests served on `port` in `seconds`. */
async function served(port: number, seconds: number, token: string): Promise<number> {
  return (await wrk(`http://127.0.0.1:${port}/orders`, seconds, token)).requests;
}

/** Private (anonymous) memory of a process: V8's heap and malloc, not the binary's shared pages. */
function privateMiB(pid: number): number {
  return Number(/Anonymous:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/smaps_rollup`, "utf8"))?.[1]) / 1024;
}

async function main(): Promise<void> {
  if (!hasWrk()) {
    console.log("bench/sidecar-settings.ts: wrk is not installed (apt-get install -y wrk); skipped.");
    return;
  }
  const a = flag("--a") ?? deployedSettings();
  const b = flag("--b") ?? "";
  const rounds = Number(flag("--rounds") ?? 4);
  const seconds = Number(flag("--seconds") ?? 10);
  const { startIdentityProvider } = await import("../examples/idp.ts");
  const idp = await startIdentityProvider({ signingAlg: "RS256", tokenTtlSeconds: 3600 });
  const token = await idp.token("reader");
  const upstreamServer = createServer(upstreamHandler);
  const upstream = `http://127.0.0.1:${await listenOnLoopback(upstreamServer)}`;
  const built = compileProxy();
  const label = (settings: string) => settings || "(Node defaults)";
  console.log(
    `node ${process.version}; two compiled sidecars side by side, each under wrk -t1 -c${WRK_CONNECTIONS} -d${seconds}s, ${rounds} rounds, ports swapped each round`,
  );
  console.log(`A: ${label(a)}\nB: ${label(b)}`);
  const ratios: number[] = [];
  try {
    for (let round = 0; round < rounds; round++) {
      // A fresh pair each round, started in alternating order.
      const first = round % 2 === 0 ? a : b;
      const second = round % 2 === 0 ? b : a;
      const one = await startCompiledSidecar(built, upstream, idp.issuer, first);
      const two = await startCompiledSidecar(built, upstream, idp.issuer, second);
      try {
        await Promise.all([served(one.port, 3, token), served(two.port, 3, token)]);
        const [servedOne, servedTwo] = await Promise.all([
          served(one.port, seconds, token),
          served(two.port, seconds, token),
        ]);
        const [servedA, servedB] = first === a ? [servedOne, servedTwo] : [servedTwo, servedOne];
        const [memA, memB] = (first === a ? [one, two] : [two, one]).map((s) => privateMiB(s.process.pid!));
        ratios.push(servedA / servedB);
        console.log(
          `round ${round + 1}: A ${(servedA / seconds).toFixed(0)} req/s, ${memA!.toFixed(0)} MiB private; B ${(servedB / seconds).toFixed(0)} req/s, ${memB!.toFixed(0)} MiB private; A/B ${(servedA / servedB).toFixed(3)}x`,
        );
      } finally {
        for (const s of [one, two]) s.process.kill("SIGTERM");
        await Promise.all([one, two].map((s) => once(s.process, "exit")));
      }
    }
    ratios.sort((x, y) => x - y);
    console.log(
      `A/B req/s: median ${median(ratios).toFixed(3)}x [${ratios[0]!.toFixed(3)}-${ratios.at(-1)!.toFixed(3)}]`,
    );
  } finally {
    built.remove();
    upstreamServer.close();
    upstreamServer.closeAllConnections();
    await idp.stop();
  }
}

await main();
