// Runs the example FastAPI app under uvicorn as a child process, for tests and the demo.

import { type ChildProcess, spawn } from "node:child_process";
import { Socket } from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { freePort } from "../free-port.ts";
import { ensureVenv, repoRoot } from "./venv.ts";

export interface UpstreamOptions {
  /** Default: a free port, retried if another process grabs it first. */
  port?: number;
  /** Default 127.0.0.1, as in Kubernetes where only the sidecar may reach the app. */
  host?: string;
  /** More uvicorn flags, e.g. ["--http", "h11"] or ["--forwarded-allow-ips", "*"]. */
  extraArgs?: readonly string[];
  /** Extra environment for the uvicorn process. */
  env?: Readonly<Record<string, string>>;
  /** Another app than the example: its interpreter (with uvicorn), directory, and `module:attribute`. */
  app?: { python: string; dir: string; target: string };
  /** The path that answers 2xx once the app is up. Default /healthz. */
  readyPath?: string;
}

export interface Upstream {
  url: string;
  port: number;
  pid: number;
  /** The last 64 KiB of uvicorn's stdout and stderr. */
  output(): string;
  /** SIGTERM (uvicorn drains), then SIGKILL after graceMs (default 5000). Idempotent. */
  stop(graceMs?: number): Promise<void>;
}

const appDir = import.meta.dirname;
const launcher = join(import.meta.dirname, "tethered.py");
const readyTimeoutMs = 30_000;
const outputLimit = 64 * 1024;
const attempts = 5;

// Belt and braces with the stdin tether: a normal exit of this process kills its upstreams.
const running = new Set<ChildProcess>();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

export async function startUpstream(options: UpstreamOptions = {}): Promise<Upstream> {
  const python = options.app?.python ?? (await ensureVenv());
  const host = options.host ?? "127.0.0.1";
  for (let attempt = 1; ; attempt++) {
    const port = options.port ?? (await freePort(host));
    try {
      return await launch(python, host, port, options);
    } catch (error) {
      // Another process may take the port between our probe and uvicorn's bind.
      if (options.port !== undefined || attempt >= attempts || !(error instanceof AddressInUse)) throw error;
    }
  }
}

class AddressInUse extends Error {}

async function launch(
  python: string,
  host: string,
  port: number,
  options: UpstreamOptions,
): Promise<Upstream> {
  const args = [
    launcher,
    options.app?.target ?? "app:app",
    "--app-dir",
    options.app?.dir ?? appDir,
    "--host",
    host,
    "--port",
    String(port),
    "--proxy-headers",
    "--no-access-log",
    ...(options.extraArgs ?? []),
  ];
  const child = spawn(python, args, {
    cwd: repoRoot,
    env: { ...process.env, PYTHONUNBUFFERED: "1", ...options.env },
    stdio: ["pipe", "pipe", "pipe"],
  });
  let output = "";
  const collect = (chunk: Buffer) => {
    output = (output + chunk.toString("utf8")).slice(-outputLimit);
  };
  child.stdout?.on("data", collect);
  child.stderr?.on("data", collect);
  // Never let a forgotten upstream keep the parent alive; the stdin tether ends it with us.
  child.unref();
  for (const stream of [child.stdin, child.stdout, child.stderr]) {
    if (stream instanceof Socket) stream.unref();
  }
  running.add(child);
  let spawnError: Error | undefined;
  const exited = new Promise<void>((done) => {
    child.once("exit", () => done());
    child.once("error", (error) => {
      spawnError = error;
      done();
    });
  });

  const url = `http://${host.includes(":") ? `[${host}]` : host}:${port}`;
  try {
    await waitUntilHealthy(
      `${url}${options.readyPath ?? "/healthz"}`,
      child,
      () => spawnError,
      () => output,
    );
  } catch (error) {
    child.kill("SIGKILL");
    await exited;
    running.delete(child);
    throw error;
  }

  let stopping: Promise<void> | undefined;
  const stop = (graceMs = 5000): Promise<void> => {
    stopping ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
        await exited;
        clearTimeout(timer);
      }
      running.delete(child);
      child.stdin?.destroy();
    })();
    return stopping;
  };
  return { url, port, pid: child.pid ?? -1, output: () => output, stop };
}

async function waitUntilHealthy(
  url: string,
  child: ChildProcess,
  spawnError: () => Error | undefined,
  output: () => string,
): Promise<void> {
  const deadline = Date.now() + readyTimeoutMs;
  while (Date.now() < deadline) {
    const failed = spawnError();
    if (failed) throw new Error(`cannot start uvicorn: ${failed.message}`);
    if (child.exitCode !== null || child.signalCode !== null) {
      const text = output();
      if (/address already in use/i.test(text)) throw new AddressInUse(text);
      throw new Error(`uvicorn exited (${child.exitCode ?? child.signalCode}) before it was ready:\n${text}`);
    }
    try {
      const response = await fetch(url, { signal: AbortSignal.timeout(1000) });
      await response.arrayBuffer();
      if (response.ok) return;
    } catch {
      // Not listening yet.
    }
    await sleep(100);
  }
  throw new Error(`uvicorn did not answer ${url} within ${readyTimeoutMs} ms:\n${output()}`);
}
