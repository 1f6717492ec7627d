// The access line's cost, per line, written to /dev/null as a container's stdout would be: sonic-boom's
// own batching (minLength, what pino.destination offers) against batchedDestination (LineBatch in
// front of sonic-boom, what createLogger uses), with a destination that drops every line as the baseline.
//   npx node bench/access-log.ts [--lines 300000]
import { openSync } from "node:fs";
import pino from "pino";
import { type AccessLine, batchedDestination, createLogger, writeAccessLine } from "../proxy/access-log.ts";
import { newRequestId } from "../proxy/pipeline.ts";

const at = process.argv.indexOf("--lines");
const LINES = at > 0 ? Number(process.argv[at + 1]) : 300_000;
const devNull = () => openSync("/dev/null", "w");

const destinations: Record<string, () => pino.DestinationStream> = {
  "dropped (no write)": () => ({ write() {} }),
  "sonic-boom minLength 8 KiB": () => pino.destination({ dest: devNull(), sync: false, minLength: 8 * 1024 }),
  "LineBatch + sonic-boom": () => batchedDestination(devNull()),
};

const line: AccessLine = {
  requestId: "3f2bfbc2e89c353e0f578b0e95d901cd",
  method: "GET",
  path: "/orders/42",
  rule: "read-orders",
  decision: "allow",
  reason: "any-role",
  subject: "0oa1b2c3d4e5f6g7h8i9",
  clientId: "reader",
  roles: ["orders.read"],
  rateLimit: undefined,
  wouldStatus: undefined,
  explanation: undefined,
  status: 200,
  latencyMs: 1.234,
  upstreamMs: 0.567,
  failure: undefined,
};

const PATHS = ["/orders", "/orders/42", "/orders/7/items", "/healthz"];

/**
 * CPU microseconds per line, every write included (the flush at the end waits for them). The event
 * loop turns every 32 lines: a proxy under 32 connections answers at most about that many per turn.
 */
async function perLine(destination: pino.DestinationStream): Promise<number> {
  const logger = createLogger({ format: "json", level: "info", destination });
  const start = process.cpuUsage();
  for (let i = 0; i < LINES; i++) {
    // What varies per request in the proxy: the id (a new one each time), the path, the timings.
    line.requestId = newRequestId();
    line.path = PATHS[i % PATHS.length];
    line.latencyMs = Math.round(Math.random() * 5_000_000) / 1000;
    line.upstreamMs = Math.round(Math.random() * 4_000_000) / 1000;
    writeAccessLine(logger, line);
    if (i % 32 === 31) await new Promise((resolve) => setImmediate(resolve));
  }
  await new Promise<void>((resolve) => logger.flush(() => resolve()));
  const used = process.cpuUsage(start);
  return (used.user + used.system) / LINES;
}

const results = new Map<string, number>();
for (let round = 0; round < 3; round++) {
  for (const [name, make] of Object.entries(destinations)) {
    const us = await perLine(make());
    // The first round warms the JIT up; the best of the others is reported.
    if (round > 0) results.set(name, Math.min(results.get(name) ?? Number.POSITIVE_INFINITY, us));
  }
}
const baseline = results.get("dropped (no write)")!;
console.log(`node ${process.version}; ${LINES} JSON access lines per run, best of 2 runs`);
for (const [name, us] of results) {
  console.log(`${name.padEnd(28)} ${us.toFixed(2).padStart(6)} us CPU/line  ${(us / baseline).toFixed(2)}x`);
}
