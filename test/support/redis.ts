// A real redis-server (test/setup/prepare.ts installs it) on a free port (loopback unless told
// otherwise), without persistence, for shared rate-limit tests.

import { mkdtemp, rm } from "node:fs/promises";
import { createConnection } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "../../examples/free-port.ts";
import { redisServerBinary } from "../setup/cache.ts";
import { type SupervisedProcess, startSupervisedProcess } from "./supervised-process.ts";

export interface RedisServer {
  readonly url: string;
  readonly port: number;
  stop(): Promise<void>;
  /** Starts it again on the same port (after stop()). */
  start(): Promise<void>;
  /** Stops it and removes its directory. */
  remove(): Promise<void>;
}

export interface RedisOptions {
  /** The address it listens on. Default 127.0.0.1. */
  host?: string;
  /** requirepass: clients must authenticate (the URL then carries it). */
  password?: string;
}

async function waitForPort(host: string, port: number, process: SupervisedProcess): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const open = await new Promise<boolean>((resolve) => {
      const socket = createConnection({ port, host }, () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
    if (open) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`redis-server did not listen on ${port}:\n${process.logTail()}`);
}

export async function startRedis(options: RedisOptions = {}): Promise<RedisServer> {
  const { host = "127.0.0.1", password } = options;
  const dir = await mkdtemp(join(tmpdir(), "portcullis-redis-"));
  const port = await freePort(host);
  let current: SupervisedProcess | undefined;
  const start = async () => {
    current = startSupervisedProcess(
      "redis-server",
      redisServerBinary(),
      [
        ...["--port", String(port), "--bind", host, "--save", "", "--appendonly", "no", "--dir", dir],
        ...(password === undefined ? [] : ["--requirepass", password]),
      ],
      join(dir, "redis.log"),
    );
    await waitForPort(host, port, current);
  };
  await start();
  return {
    url: `redis://${password === undefined ? "" : `:${encodeURIComponent(password)}@`}${host}:${port}`,
    port,
    start,
    async stop() {
      await current?.stop(2000);
      current = undefined;
    },
    async remove() {
      await current?.stop(2000);
      current = undefined;
      await rm(dir, { recursive: true, force: true });
    },
  };
}
