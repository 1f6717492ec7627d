import { createClient } from "@redis/client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RateLimit } from "../policy/schema.ts";
import {
  bucketKey,
  failedAuthenticationKey,
  peerBucket,
  RateLimiter,
  type RateLimitSubject,
} from "../proxy/rate-limit.ts";
import { connectRedisBuckets, type RedisBucketStore } from "../proxy/redis-buckets.ts";
import { type RedisServer, startRedis } from "./support/redis.ts";

const limit = (overrides: Partial<RateLimit> = {}): RateLimit => ({
  name: "writes",
  rules: ["write-orders"],
  key: "clientId",
  requestsPerSecond: 2,
  burst: 4,
  store: "local",
  ...overrides,
});

const who = (clientId: string, headers: Record<string, string> = {}): RateLimitSubject => ({
  clientId,
  subject: `user-${clientId}`,
  ip: "10.0.0.1",
  header: (name) => headers[name.toLowerCase()],
});

async function allowedOf(limiter: RateLimiter, limits: RateLimit[], subject: RateLimitSubject, n: number) {
  let allowed = 0;
  for (let i = 0; i < n; i++) if ((await limiter.check(limits, subject)).allowed) allowed++;
  return allowed;
}

describe("local token buckets (pure, with a controlled clock)", () => {
  it("allows the burst, then refills at the rate, per key", async () => {
    let now = 1_000_000;
    const limiter = new RateLimiter({ now: () => now });
    const limits = [limit()];
    expect(await allowedOf(limiter, limits, who("a"), 10)).toBe(4);
    const denied = await limiter.check(limits, who("a"));
    expect(denied).toEqual({ allowed: false, limit: "writes", retryAfterSeconds: 1 });
    expect(await allowedOf(limiter, limits, who("b"), 10)).toBe(4);
    now += 1000; // two tokens at 2/s
    expect(await allowedOf(limiter, limits, who("a"), 10)).toBe(2);
    now += 60_000; // never above the burst
    expect(await allowedOf(limiter, limits, who("a"), 10)).toBe(4);
  });

  it("keys by subject, client, ip or a header; a missing value shares one bucket", () => {
    const subject = who("c1", { "x-tenant": "t1" });
    expect(bucketKey(limit({ key: "clientId" }), subject)).toBe("writes\u0000\u0000c1");
    expect(bucketKey(limit({ key: "subject" }), subject)).toBe("writes\u0000\u0000user-c1");
    expect(bucketKey(limit({ key: "ip" }), subject)).toBe("writes\u000010.0.0.1");
    expect(bucketKey(limit({ key: "header:X-Tenant" }), subject)).toBe("writes\u0000t1");
    expect(bucketKey(limit({ key: "header:X-Other" }), subject)).toBe("writes\u0000-");
  });

  it("counts an IPv6 peer by its /64 and an IPv4-mapped one as IPv4, so rotating addresses buys nothing", () => {
    expect(peerBucket("10.0.0.1")).toBe("10.0.0.1");
    expect(peerBucket("::ffff:10.0.0.1")).toBe("10.0.0.1");
    expect(peerBucket("::FFFF:10.0.0.1")).toBe("10.0.0.1");
    expect(peerBucket("2001:db8:1:2:3:4:5:6")).toBe("2001:db8:1:2::/64");
    expect(peerBucket("2001:0db8:0001:0002:ffff:ffff:ffff:ffff")).toBe("2001:db8:1:2::/64");
    expect(peerBucket("2001:db8:1:2::7")).toBe("2001:db8:1:2::/64");
    expect(peerBucket("2001:db8::1")).toBe("2001:db8:0:0::/64");
    expect(peerBucket("2001:db8::")).toBe("2001:db8:0:0::/64");
    expect(peerBucket("::1")).toBe("0:0:0:0::/64");
    expect(peerBucket("::")).toBe("0:0:0:0::/64");
    expect(peerBucket("fe80::1%eth0")).toBe("fe80:0:0:0::/64");
    expect(peerBucket("64:ff9b::192.0.2.1")).toBe("64:ff9b:0:0::/64");
    expect(peerBucket("1:2:3:4:5:6:192.0.2.1")).toBe("1:2:3:4::/64");
    // Not an address (a socket always has one; "unknown" when it was already closed): as it is.
    expect(peerBucket("unknown")).toBe("unknown");
    expect(peerBucket("1:2:3")).toBe("1:2:3");
    const a = who("x");
    const b = who("x");
    a.ip = peerBucket("2001:db8:1:2::a");
    b.ip = peerBucket("2001:db8:1:2:ffff::b");
    expect(bucketKey(limit({ key: "ip" }), a)).toBe(bucketKey(limit({ key: "ip" }), b));
    b.ip = peerBucket("2001:db8:1:3::a");
    expect(bucketKey(limit({ key: "ip" }), a)).not.toBe(bucketKey(limit({ key: "ip" }), b));
    expect(failedAuthenticationKey(peerBucket("2001:db8:1:2::a"))).toBe(
      failedAuthenticationKey(peerBucket("2001:db8:1:2::b")),
    );
  });

  it("keeps subjects and clients of different issuers in different buckets", async () => {
    const limiter = new RateLimiter({ now: () => 0 });
    const limits = [limit({ key: "subject", requestsPerSecond: 1, burst: 1 })];
    const alice = (issuer: string): RateLimitSubject => ({
      issuer,
      subject: "alice",
      ip: "10.0.0.1",
      header: () => undefined,
    });
    expect(bucketKey(limits[0]!, alice("https://a")) === bucketKey(limits[0]!, alice("https://b"))).toBe(
      false,
    );
    expect((await limiter.check(limits, alice("https://a"))).allowed).toBe(true);
    // The same sub from another IdP has a bucket of its own.
    expect((await limiter.check(limits, alice("https://b"))).allowed).toBe(true);
    expect((await limiter.check(limits, alice("https://a"))).allowed).toBe(false);
  });

  it("keeps memory bounded", async () => {
    const limiter = new RateLimiter({ maxBuckets: 100 });
    for (let i = 0; i < 1000; i++) await limiter.check([limit()], who(`client-${i}`));
    // The most recent client still has its own, partly used bucket.
    expect(await allowedOf(limiter, [limit()], who("client-999"), 10)).toBe(3);
  });
});

describe("shared buckets on a real Redis", () => {
  let redis: RedisServer;
  let stores: RedisBucketStore[] = [];

  beforeAll(async () => {
    redis = await startRedis();
  });
  afterAll(async () => {
    for (const store of stores) await store.close();
    await redis?.remove();
  });

  it("shares one budget across replicas", async () => {
    stores = [await connectRedisBuckets(redis.url), await connectRedisBuckets(redis.url)];
    const replicas = stores.map((shared) => new RateLimiter({ shared }));
    const limits = [limit({ store: "redis", requestsPerSecond: 1, burst: 5, name: "shared" })];
    let allowed = 0;
    for (let i = 0; i < 12; i++) {
      const replica = replicas[i % 2]!;
      if ((await replica.check(limits, who("tenant"))).allowed) allowed++;
    }
    // Burst 5 at 1/s: the 12 calls take well under a second on loopback, so at most one refill.
    expect(allowed).toBeGreaterThanOrEqual(5);
    expect(allowed).toBeLessThanOrEqual(6);
    const denied = await replicas[0]!.check(limits, who("tenant"));
    expect(denied.allowed).toBe(false);
  });

  it("keeps two issuers' identical subject in separate Redis buckets", async () => {
    const store = await connectRedisBuckets(redis.url);
    stores.push(store);
    const limiter = new RateLimiter({ shared: store });
    const limits = [limit({ store: "redis", key: "subject", requestsPerSecond: 1, burst: 2, name: "idps" })];
    const alice = (issuer: string): RateLimitSubject => ({
      issuer,
      subject: "alice",
      ip: "10.0.0.1",
      header: () => undefined,
    });
    expect(await allowedOf(limiter, limits, alice("https://idp-a.example"), 4)).toBe(2);
    // Another IdP's "alice" is someone else: her bucket in Redis is full.
    expect(await allowedOf(limiter, limits, alice("https://idp-b.example"), 4)).toBe(2);
    const admin = createClient({ url: redis.url });
    await admin.connect();
    try {
      const keys = await admin.keys("portcullis:rl:idps*");
      expect(keys).toHaveLength(2);
    } finally {
      admin.destroy();
    }
  });

  it("sends the script by its SHA1, and again by its text once after Redis forgot it", async () => {
    const store = await connectRedisBuckets(redis.url);
    stores.push(store);
    const admin = createClient({ url: redis.url });
    await admin.connect();
    try {
      const calls = async (command: "eval" | "evalsha") => {
        const stats = await admin.info("commandstats");
        return Number(new RegExp(`cmdstat_${command}:calls=(\\d+)`).exec(stats)?.[1] ?? 0);
      };
      const before = { eval: await calls("eval"), evalsha: await calls("evalsha") };
      await admin.scriptFlush();
      expect(await store.take("sha", 1000, 3)).toBe(0);
      for (let i = 0; i < 4; i++) await store.take("sha", 1000, 3);
      // The first call after the flush: EVALSHA (NOSCRIPT), then EVAL; every later one EVALSHA only.
      expect((await calls("eval")) - before.eval).toBe(1);
      expect((await calls("evalsha")) - before.evalsha).toBe(5);
      expect(await store.take("sha", 1000, 3)).toBeGreaterThan(0);
    } finally {
      admin.destroy();
    }
  });

  it("falls back to local buckets while Redis is down, and returns to Redis after", async () => {
    const store = await connectRedisBuckets(redis.url);
    stores.push(store);
    const fallbacks: string[] = [];
    const limiter = new RateLimiter({ shared: store, onFallback: (name) => fallbacks.push(name) });
    const limits = [limit({ store: "redis", requestsPerSecond: 1, burst: 3, name: "outage" })];
    await redis.stop();
    expect(await allowedOf(limiter, limits, who("x"), 6)).toBe(3);
    expect(fallbacks.length).toBe(6);
    await redis.start();
    let recovered = false;
    for (let i = 0; i < 100 && !recovered; i++) {
      const before = fallbacks.length;
      await limiter.check(
        [limit({ store: "redis", requestsPerSecond: 1, burst: 3, name: "fresh" })],
        who("y"),
      );
      recovered = fallbacks.length === before;
      if (!recovered) await new Promise((r) => setTimeout(r, 100));
    }
    expect(recovered).toBe(true);
  });
});
