// The shared bucket store on Redis: GCRA (generic cell rate algorithm) in a Lua script, so one
// round trip decides and the "theoretical arrival time" is the only state (one key per bucket,
// expiring when the bucket would be full again).

import { type CommandParser, createClient, defineScript } from "@redis/client";
import type { SharedBucketStore } from "./rate-limit.ts";

const GCRA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat - (burst - 1) * interval
if now < allow_at then return math.ceil(allow_at - now) end
local new_tat = tat + interval
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.max(1, math.ceil(new_tat - now)))
return 0
`;

/**
 * Sent as EVALSHA (the script's SHA1, not its text); node-redis falls back to EVAL once when Redis
 * answers NOSCRIPT (a restarted or flushed Redis), which loads it again.
 */
const takeScript = defineScript({
  SCRIPT: GCRA,
  NUMBER_OF_KEYS: 1,
  parseCommand(parser: CommandParser, key: string, intervalMs: number, burst: number) {
    parser.pushKey(key);
    parser.push(String(intervalMs), String(burst));
  },
  /** Milliseconds until the request would be allowed; 0 when it is. */
  transformReply: (reply: number): number => Number(reply),
});

export interface RedisBucketStore extends SharedBucketStore {
  close(): Promise<void>;
}

export async function connectRedisBuckets(
  url: string,
  options: { prefix?: string; timeoutMs?: number; firstConnectMs?: number } = {},
): Promise<RedisBucketStore> {
  const prefix = options.prefix ?? "portcullis:rl:";
  const timeoutMs = options.timeoutMs ?? 250;
  const firstConnectMs = options.firstConnectMs ?? 1000;
  const client = createClient({
    url,
    scripts: { takeToken: takeScript },
    // Fail fast instead of queueing while disconnected: the limiter falls back to local buckets.
    disableOfflineQueue: true,
    socket: { connectTimeout: 1000, reconnectStrategy: (retries) => Math.min(50 * 2 ** retries, 2000) },
  });
  // Without a listener, node-redis rethrows connection errors as uncaught exceptions.
  client.on("error", () => {});
  // Awaited for at most firstConnectMs: while Redis is down, connect() keeps retrying and never settles,
  // and the sidecar must start (and serve, on local buckets) anyway. Commands fail fast until it connects.
  await withTimeout(client.connect(), firstConnectMs).catch(() => {});
  return {
    async take(key, intervalMs, burst) {
      return withTimeout(client.takeToken(prefix + key, intervalMs, burst), timeoutMs);
    },
    async close() {
      // destroy(), not close(): close() waits for a reconnecting client, possibly for ever.
      if (client.isOpen) client.destroy();
    },
  };
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`redis did not answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
