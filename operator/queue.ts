// A keyed work queue with client-go's workqueue semantics: a key waits at most once, one worker
// handles a key at a time (a key added while it is handled runs again afterwards), failures come
// back after a per-key exponential backoff, and retries together respect a global token bucket.

/** What a handler may ask for besides success: run this key again later (a periodic check). */
export type HandlerResult = undefined | { requeueAfterMs: number };

export type Handler = (key: string) => Promise<HandlerResult> | Promise<void>;

export interface WorkQueueOptions {
  /** Workers: keys handled at the same time. */
  concurrency?: number;
  /** First retry delay of a failing key; doubles per failure. */
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** The global bucket that retries draw from: a sustained rate and a burst. */
  retriesPerSecond?: number;
  retryBurst?: number;
  /** Told about each failure (the key will be retried after `delayMs`). */
  onRetry?: (key: string, error: unknown, delayMs: number) => void;
  onProcessed?: (key: string, outcome: "success" | "error", durationMs: number) => void;
  now?: () => number;
}

export class WorkQueue {
  readonly #handler: Handler;
  readonly #concurrency: number;
  readonly #baseDelayMs: number;
  readonly #maxDelayMs: number;
  readonly #bucket: TokenBucket;
  readonly #onRetry: WorkQueueOptions["onRetry"];
  readonly #onProcessed: WorkQueueOptions["onProcessed"];
  readonly #now: () => number;

  /** Keys ready to run, in order; `#queued` mirrors it for dedup. */
  readonly #ready: string[] = [];
  readonly #queued = new Set<string>();
  readonly #processing = new Set<string>();
  /** Keys added while being processed: run again when the current run ends. */
  readonly #dirty = new Set<string>();
  readonly #delayed = new Map<string, { at: number; timer: NodeJS.Timeout }>();
  readonly #failures = new Map<string, number>();
  readonly #inFlight = new Set<Promise<void>>();
  #running = false;
  #shutDown = false;

  constructor(handler: Handler, options: WorkQueueOptions = {}) {
    this.#handler = handler;
    this.#concurrency = Math.max(1, options.concurrency ?? 4);
    this.#baseDelayMs = options.baseDelayMs ?? 5;
    this.#maxDelayMs = options.maxDelayMs ?? 300_000;
    this.#now = options.now ?? Date.now;
    this.#bucket = new TokenBucket(options.retriesPerSecond ?? 10, options.retryBurst ?? 100, this.#now);
    this.#onRetry = options.onRetry;
    this.#onProcessed = options.onProcessed;
  }

  /** Starts the workers; keys added before start wait for it. */
  start(): void {
    if (this.#shutDown || this.#running) return;
    this.#running = true;
    this.#dispatch();
  }

  add(key: string): void {
    if (this.#shutDown) return;
    const delayed = this.#delayed.get(key);
    if (delayed) {
      clearTimeout(delayed.timer);
      this.#delayed.delete(key);
    }
    if (this.#processing.has(key)) {
      this.#dirty.add(key);
      return;
    }
    if (this.#queued.has(key)) return;
    this.#queued.add(key);
    this.#ready.push(key);
    this.#dispatch();
  }

  /** Adds the key after `delayMs`, unless it is added sooner; an earlier pending add wins. */
  addAfter(key: string, delayMs: number): void {
    if (this.#shutDown) return;
    if (delayMs <= 0) {
      this.add(key);
      return;
    }
    if (this.#queued.has(key)) return;
    const at = this.#now() + delayMs;
    const pending = this.#delayed.get(key);
    if (pending && pending.at <= at) return;
    if (pending) clearTimeout(pending.timer);
    const timer = setTimeout(() => {
      this.#delayed.delete(key);
      this.add(key);
    }, delayMs);
    timer.unref();
    this.#delayed.set(key, { at, timer });
  }

  /** Forgets a key's failure count (its next failure backs off from the start). */
  forget(key: string): void {
    this.#failures.delete(key);
  }

  /** Keys waiting to run now or after a delay (not the ones being handled). */
  depth(): number {
    return this.#ready.length + this.#delayed.size;
  }

  /** Keys being handled right now. */
  active(): number {
    return this.#processing.size;
  }

  /** Failures in a row for a key. */
  failures(key: string): number {
    return this.#failures.get(key) ?? 0;
  }

  /** Stops taking keys, drops waiting ones, and resolves when running handlers have finished. */
  async shutdown(): Promise<void> {
    this.#shutDown = true;
    for (const { timer } of this.#delayed.values()) clearTimeout(timer);
    this.#delayed.clear();
    this.#ready.length = 0;
    this.#queued.clear();
    this.#dirty.clear();
    while (this.#inFlight.size > 0) await Promise.allSettled([...this.#inFlight]);
  }

  /** Resolves once nothing is ready or running (delayed retries aside): tests and drains. */
  async idle(): Promise<void> {
    // A finishing run dispatches the next keys before its promise settles: the loop sees them.
    while (this.#inFlight.size > 0) await Promise.allSettled([...this.#inFlight]);
  }

  #dispatch(): void {
    if (!this.#running || this.#shutDown) return;
    while (this.#processing.size < this.#concurrency && this.#ready.length > 0) {
      const key = this.#ready.shift() as string;
      this.#queued.delete(key);
      this.#processing.add(key);
      const run = this.#run(key);
      this.#inFlight.add(run);
      void run.finally(() => this.#inFlight.delete(run));
    }
  }

  async #run(key: string): Promise<void> {
    const started = this.#now();
    let outcome: "success" | "error" = "success";
    let result: HandlerResult | undefined;
    let failure: unknown;
    try {
      result = (await this.#handler(key)) ?? undefined;
    } catch (error) {
      outcome = "error";
      failure = error;
    }
    this.#processing.delete(key);
    this.#onProcessed?.(key, outcome, this.#now() - started);
    if (this.#shutDown) return;

    if (outcome === "error") {
      const failures = (this.#failures.get(key) ?? 0) + 1;
      this.#failures.set(key, failures);
      const backoff = Math.min(this.#maxDelayMs, this.#baseDelayMs * 2 ** Math.min(failures - 1, 40));
      const delayMs = Math.max(backoff, this.#bucket.reserve());
      this.#onRetry?.(key, failure, delayMs);
      // New information (an event during the run) is worth an immediate try.
      if (this.#dirty.delete(key)) this.add(key);
      else this.addAfter(key, delayMs);
    } else {
      this.#failures.delete(key);
      if (this.#dirty.delete(key)) this.add(key);
      else if (result && result.requeueAfterMs > 0) this.addAfter(key, result.requeueAfterMs);
    }
    this.#dispatch();
  }
}

/** golang.org/x/time/rate's reservation model: take a token now, wait for it if the bucket is empty. */
export class TokenBucket {
  readonly #rate: number;
  readonly #burst: number;
  readonly #now: () => number;
  #tokens: number;
  #last: number;

  constructor(perSecond: number, burst: number, now: () => number = Date.now) {
    this.#rate = perSecond;
    this.#burst = Math.max(1, burst);
    this.#now = now;
    this.#tokens = this.#burst;
    this.#last = now();
  }

  /** Takes one token; returns how many ms the caller must wait before using it. */
  reserve(): number {
    const now = this.#now();
    this.#tokens = Math.min(this.#burst, this.#tokens + ((now - this.#last) / 1000) * this.#rate);
    this.#last = now;
    this.#tokens -= 1;
    return this.#tokens >= 0 ? 0 : Math.ceil((-this.#tokens / this.#rate) * 1000);
  }
}
