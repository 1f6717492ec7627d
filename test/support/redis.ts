// A real redis-server (test/setup/prepare.ts installs it) on a free loopback port, without
// persistence, for shared rate-limit tests.

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

async function waitForPort(port: number, process: SupervisedProcess): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const open = await new Promise<boolean>((resolve) => {
      const socket = createConnection({ port, host: "127.0.0.1" }, () => {
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

export async function startRedis(): Promise<RedisServer> {
  const dir = await mkdtemp(join(tmpdir(), "portcullis-redis-"));
  const port = await freePort();
  let current: SupervisedProcess | undefined;
  const start = async () => {
    current = startSupervisedProcess(
      "redis-server",
      redisServerBinary(),
      ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir],
      join(dir, "redis.log"),
    );
    await waitForPort(port, current);
  };
  await start();
  return {
    url: `redis://127.0.0.1:${port}`,
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
