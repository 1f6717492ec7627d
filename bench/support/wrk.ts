// wrk, the load generator every proxy benchmark uses (apt-get install -y wrk): one thread, 32
// connections, the bearer token on every request.

import { execFile, execFileSync } from "node:child_process";

export const WRK_CONNECTIONS = 32;

/** The benchmarks that need wrk skip themselves without it. */
export function hasWrk(): boolean {
  try {
    execFileSync("wrk", ["--version"], { stdio: "ignore" });
    return true;
  } catch (error) {
    // wrk --version exits 1 after printing its version.
    return (error as { status?: number }).status === 1;
  }
}

export interface Measurement {
  requestsPerSecond: number;
  requests: number;
  p50Ms: number;
  p99Ms: number;
  /** Non-2xx answers and socket errors. */
  errors: number;
}

function toMs(value: string): number {
  const match = /^([\d.]+)(us|ms|s)$/.exec(value.trim());
  if (!match) return Number.NaN;
  const n = Number(match[1]);
  return match[2] === "us" ? n / 1000 : match[2] === "s" ? n * 1000 : n;
}

/** GET `url` for `seconds`; what wrk reports. */
export async function wrk(url: string, seconds: number, token: string): Promise<Measurement> {
  const output = await new Promise<string>((resolve, reject) =>
    execFile(
      "wrk",
      [
        "-t1",
        `-c${WRK_CONNECTIONS}`,
        `-d${seconds}s`,
        "--latency",
        "-H",
        `Authorization: Bearer ${token}`,
        url,
      ],
      { encoding: "utf8" },
      (error, stdout) => (error ? reject(error) : resolve(stdout)),
    ),
  );
  const errors =
    Number(/Non-2xx or 3xx responses: (\d+)/.exec(output)?.[1] ?? 0) +
    [...output.matchAll(/(connect|read|write|timeout) (\d+)/g)].reduce((sum, m) => sum + Number(m[2]), 0);
  return {
    requests: Number(/(\d+) requests in/.exec(output)?.[1]),
    requestsPerSecond: Number(/Requests\/sec:\s+([\d.]+)/.exec(output)?.[1]),
    p50Ms: toMs(/\s50%\s+(\S+)/.exec(output)?.[1] ?? ""),
    p99Ms: toMs(/\s99%\s+(\S+)/.exec(output)?.[1] ?? ""),
    errors,
  };
}
