// The work queue alone (pure, fake clock and timers): dedup, one worker per key, re-run of a key
// added while it runs, per-key exponential backoff, the global retry bucket, bounded concurrency.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { TokenBucket, WorkQueue } from "../operator/queue.ts";

/** A handler whose runs the test releases one by one. */
function gatedHandler() {
  const runs: { key: string; release: (error?: Error) => void }[] = [];
  const handler = (key: string) =>
    new Promise<void>((resolve, reject) => {
      runs.push({ key, release: (error) => (error ? reject(error) : resolve()) });
    });
  return { runs, handler };
}

const settle = () => vi.advanceTimersByTimeAsync(0);

describe("WorkQueue", () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("runs a key added several times while waiting once", async () => {
    const seen: string[] = [];
    const queue = new WorkQueue(async (key) => {
      seen.push(key);
    });
    queue.add("a");
    queue.add("b");
    queue.add("a");
    expect(queue.depth()).toBe(2);
    queue.start();
    await queue.idle();
    expect(seen).toEqual(["a", "b"]);
    expect(queue.depth()).toBe(0);
  });

  it("never runs one key twice at once, and runs it again when added during a run", async () => {
    const { runs, handler } = gatedHandler();
    const queue = new WorkQueue(handler, { concurrency: 4 });
    queue.start();
    queue.add("a");
    await settle();
    queue.add("a");
    queue.add("a");
    await settle();
    expect(runs.map((r) => r.key)).toEqual(["a"]);
    runs[0]?.release();
    await settle();
    expect(runs.map((r) => r.key)).toEqual(["a", "a"]);
    runs[1]?.release();
    await queue.idle();
    expect(runs).toHaveLength(2);
  });

  it("keeps at most `concurrency` keys running", async () => {
    const { runs, handler } = gatedHandler();
    const queue = new WorkQueue(handler, { concurrency: 2 });
    queue.start();
    for (const key of ["a", "b", "c", "d"]) queue.add(key);
    await settle();
    expect(runs.map((r) => r.key)).toEqual(["a", "b"]);
    expect(queue.active()).toBe(2);
    expect(queue.depth()).toBe(2);
    runs[1]?.release();
    await settle();
    expect(runs.map((r) => r.key)).toEqual(["a", "b", "c"]);
  });

  it("retries a failing key with exponential backoff and forgets the count on success", async () => {
    let calls = 0;
    const delays: number[] = [];
    const queue = new WorkQueue(
      async () => {
        calls += 1;
        if (calls <= 3) throw new Error("conflict");
      },
      { baseDelayMs: 10, maxDelayMs: 1_000, onRetry: (_key, _error, delayMs) => delays.push(delayMs) },
    );
    queue.start();
    queue.add("a");
    await settle();
    expect(calls).toBe(1);
    expect(queue.depth()).toBe(1);
    await vi.advanceTimersByTimeAsync(9);
    expect(calls).toBe(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(calls).toBe(2);
    await vi.advanceTimersByTimeAsync(20);
    expect(calls).toBe(3);
    await vi.advanceTimersByTimeAsync(40);
    expect(calls).toBe(4);
    expect(delays).toEqual([10, 20, 40]);
    expect(queue.failures("a")).toBe(0);
  });

  it("caps the backoff at maxDelayMs", async () => {
    const delays: number[] = [];
    const queue = new WorkQueue(
      async () => {
        throw new Error("down");
      },
      { baseDelayMs: 5, maxDelayMs: 50, onRetry: (_key, _error, delayMs) => delays.push(delayMs) },
    );
    queue.start();
    queue.add("a");
    await vi.advanceTimersByTimeAsync(500);
    expect(delays.slice(0, 6)).toEqual([5, 10, 20, 40, 50, 50]);
    await queue.shutdown();
  });

  it("runs a failed key at once when an event arrived during the failed run", async () => {
    const { runs, handler } = gatedHandler();
    const queue = new WorkQueue(handler, { baseDelayMs: 60_000 });
    queue.start();
    queue.add("a");
    await settle();
    queue.add("a");
    runs[0]?.release(new Error("conflict"));
    await settle();
    expect(runs).toHaveLength(2);
  });

  it("an immediate add overrides a pending backoff", async () => {
    let calls = 0;
    const queue = new WorkQueue(
      async () => {
        calls += 1;
        if (calls === 1) throw new Error("conflict");
      },
      { baseDelayMs: 60_000 },
    );
    queue.start();
    queue.add("a");
    await settle();
    expect(calls).toBe(1);
    queue.add("a");
    await settle();
    expect(calls).toBe(2);
    expect(queue.depth()).toBe(0);
  });

  it("requeues a key after the delay its handler asked for", async () => {
    let calls = 0;
    const queue = new WorkQueue(async () => {
      calls += 1;
      return { requeueAfterMs: 1_000 };
    });
    queue.start();
    queue.add("a");
    await settle();
    expect(calls).toBe(1);
    await vi.advanceTimersByTimeAsync(999);
    expect(calls).toBe(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(calls).toBe(2);
    await queue.shutdown();
  });

  it("holds keys until start, and drops waiting keys on shutdown after running ones finish", async () => {
    const { runs, handler } = gatedHandler();
    const queue = new WorkQueue(handler, { concurrency: 1 });
    queue.add("a");
    queue.add("b");
    await settle();
    expect(runs).toHaveLength(0);
    queue.start();
    await settle();
    expect(runs.map((r) => r.key)).toEqual(["a"]);
    let down = false;
    const stopping = queue.shutdown().then(() => {
      down = true;
    });
    await settle();
    expect(down).toBe(false);
    runs[0]?.release();
    await stopping;
    expect(runs.map((r) => r.key)).toEqual(["a"]);
    queue.add("c");
    await settle();
    expect(runs).toHaveLength(1);
    expect(queue.depth()).toBe(0);
  });

  it("spaces retries by the global bucket once its burst is spent", async () => {
    const delays: number[] = [];
    const queue = new WorkQueue(
      async () => {
        throw new Error("down");
      },
      {
        baseDelayMs: 1,
        retriesPerSecond: 10,
        retryBurst: 2,
        concurrency: 4,
        onRetry: (_key, _error, delayMs) => delays.push(delayMs),
      },
    );
    queue.start();
    for (const key of ["a", "b", "c", "d"]) queue.add(key);
    await settle();
    // Two tokens in the bucket; then one every 100 ms.
    expect(delays).toEqual([1, 1, 100, 200]);
    await queue.shutdown();
  });
});

describe("TokenBucket", () => {
  it("grants the burst at once, then one token per 1/rate, refilling over time", () => {
    let now = 0;
    const bucket = new TokenBucket(5, 2, () => now);
    expect([bucket.reserve(), bucket.reserve(), bucket.reserve(), bucket.reserve()]).toEqual([
      0, 0, 200, 400,
    ]);
    now = 10_000;
    expect(bucket.reserve()).toBe(0);
  });
});
