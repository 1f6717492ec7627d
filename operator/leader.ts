// Leader election on a coordination.k8s.io/v1 Lease, the way client-go's leaderelection does it:
// the holder renews every retry period with an optimistic-concurrency update (resourceVersion);
// a candidate takes the lease once it has seen the same renewal for a whole lease duration (its own
// clock, never the holder's timestamps); a leader that cannot renew within the renew deadline stops
// leading; a clean stop hands the lease back so a standby takes over at once.
import { setTimeout as sleep } from "node:timers/promises";
import { isApiError, type KubeClient, type KubeObject, resourcePath } from "./kube-client.ts";

export interface LeaderElectionOptions {
  namespace: string;
  name: string;
  /** Unique per replica (pod name plus a random suffix). */
  identity: string;
  leaseDurationMs?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
  onStartedLeading: () => void;
  /** Awaited on stop() before the lease is released: finish writing first. */
  onStoppedLeading: () => void | Promise<void>;
  onError?: (error: unknown) => void;
  now?: () => number;
}

interface LeaseSpec {
  holderIdentity?: string;
  leaseDurationSeconds?: number;
  acquireTime?: string;
  renewTime?: string;
  leaseTransitions?: number;
}

interface Lease extends KubeObject {
  spec?: LeaseSpec;
}

const LEASE_API = "coordination.k8s.io/v1";

/** MicroTime as the API server writes it: RFC 3339 with six fractional digits. */
export const microTime = (ms: number): string => new Date(ms).toISOString().replace(/\.(\d{3})Z$/, ".$1000Z");

export class LeaderElector {
  readonly #client: KubeClient;
  readonly #options: Required<Omit<LeaderElectionOptions, "onError">> &
    Pick<LeaderElectionOptions, "onError">;
  readonly #path: string;
  #leading = false;
  #abort: AbortController | undefined;
  #loop: Promise<void> | undefined;
  /** The last lease seen, and when (our clock) its holder/renewTime last changed. */
  #observed: { record: string; at: number } | undefined;
  #lease: Lease | undefined;

  constructor(client: KubeClient, options: LeaderElectionOptions) {
    this.#client = client;
    this.#options = {
      leaseDurationMs: 15_000,
      renewDeadlineMs: 10_000,
      retryPeriodMs: 2_000,
      now: Date.now,
      ...options,
    };
    const { leaseDurationMs, renewDeadlineMs, retryPeriodMs } = this.#options;
    if (!(leaseDurationMs > renewDeadlineMs && renewDeadlineMs > retryPeriodMs)) {
      throw new Error("leader election needs leaseDuration > renewDeadline > retryPeriod");
    }
    this.#path = resourcePath(LEASE_API, "leases", options.namespace, options.name);
  }

  isLeader(): boolean {
    return this.#leading;
  }

  /** Whether the election loop runs (as leader or standby). */
  isRunning(): boolean {
    return this.#loop !== undefined;
  }

  start(): void {
    if (this.#loop) return;
    this.#abort = new AbortController();
    this.#loop = this.#run(this.#abort.signal);
  }

  /** Stops campaigning; a leader stops leading and releases the lease. */
  async stop(): Promise<void> {
    this.#abort?.abort();
    await this.#loop;
    this.#loop = undefined;
    if (this.#leading) {
      await this.#setLeading(false);
      await this.#release();
    }
  }

  async #run(signal: AbortSignal): Promise<void> {
    const { retryPeriodMs, renewDeadlineMs, now } = this.#options;
    let lastRenewal = 0;
    while (!signal.aborted) {
      let renewed = false;
      try {
        // A hung request must not outlive the renew deadline.
        const attempt = AbortSignal.any([signal, AbortSignal.timeout(renewDeadlineMs)]);
        renewed = await this.#tryAcquireOrRenew(attempt);
      } catch (error) {
        if (signal.aborted) return;
        this.#options.onError?.(error);
      }
      if (signal.aborted) return;
      if (renewed) {
        lastRenewal = now();
        if (!this.#leading) void this.#setLeading(true);
      } else if (this.#leading && (this.#heldByOther() || now() - lastRenewal >= renewDeadlineMs)) {
        // Another replica may take the lease once it expires: stop writing well before that.
        await this.#setLeading(false);
      }
      // Jitter spreads candidates out; a leader renews on the plain period.
      const jitter = this.#leading ? 0 : Math.random() * retryPeriodMs * 0.2;
      try {
        await sleep(retryPeriodMs + jitter, undefined, { signal });
      } catch {
        return;
      }
    }
  }

  async #setLeading(leading: boolean): Promise<void> {
    this.#leading = leading;
    try {
      if (leading) this.#options.onStartedLeading();
      else await this.#options.onStoppedLeading();
    } catch (error) {
      this.#options.onError?.(error);
    }
  }

  /** True when we hold the lease after this attempt. */
  async #tryAcquireOrRenew(signal: AbortSignal): Promise<boolean> {
    const { identity, leaseDurationMs, now } = this.#options;
    const timestamp = microTime(now());
    let lease: Lease;
    try {
      lease = await this.#client.get<Lease>(this.#path, undefined, signal);
    } catch (error) {
      if (!isApiError(error, 404)) throw error;
      const created = await this.#client.request<Lease>(
        "POST",
        resourcePath(LEASE_API, "leases", this.#options.namespace),
        {
          body: {
            apiVersion: LEASE_API,
            kind: "Lease",
            metadata: { name: this.#options.name, namespace: this.#options.namespace },
            spec: {
              holderIdentity: identity,
              leaseDurationSeconds: Math.ceil(leaseDurationMs / 1000),
              acquireTime: timestamp,
              renewTime: timestamp,
              leaseTransitions: 0,
            },
          },
          signal,
        },
      );
      this.#observe(created);
      return true;
    }

    this.#observe(lease);
    const spec = lease.spec ?? {};
    const holder = spec.holderIdentity ?? "";
    // Expiry by our own clock: the holder's renewTime is only compared for change.
    const expired =
      this.#observed !== undefined && now() - this.#observed.at >= (spec.leaseDurationSeconds ?? 0) * 1000;
    if (holder !== "" && holder !== identity && !expired) return false;

    const takingOver = holder !== identity;
    const updated = await this.#client.request<Lease>("PUT", this.#path, {
      body: {
        ...lease,
        spec: {
          ...spec,
          holderIdentity: identity,
          leaseDurationSeconds: Math.ceil(leaseDurationMs / 1000),
          renewTime: timestamp,
          acquireTime: takingOver ? timestamp : spec.acquireTime,
          leaseTransitions: (spec.leaseTransitions ?? 0) + (takingOver && holder !== "" ? 1 : 0),
        },
      },
      signal,
    });
    this.#observe(updated);
    return true;
  }

  #heldByOther(): boolean {
    const holder = this.#lease?.spec?.holderIdentity ?? "";
    return holder !== "" && holder !== this.#options.identity;
  }

  #observe(lease: Lease): void {
    this.#lease = lease;
    const spec = lease.spec ?? {};
    const record = JSON.stringify([spec.holderIdentity, spec.renewTime, spec.leaseDurationSeconds]);
    if (this.#observed?.record !== record) this.#observed = { record, at: this.#options.now() };
  }

  /** Hands the lease back (empty holder) so a standby need not wait for it to expire. */
  async #release(): Promise<void> {
    const lease = this.#lease;
    if (!lease || lease.spec?.holderIdentity !== this.#options.identity) return;
    try {
      await this.#client.request("PUT", this.#path, {
        body: {
          ...lease,
          spec: {
            ...lease.spec,
            holderIdentity: "",
            leaseDurationSeconds: 1,
            renewTime: microTime(Date.now()),
          },
        },
      });
    } catch (error) {
      // Someone else holds it already, or the API is down: the lease expires on its own.
      this.#options.onError?.(error);
    }
  }
}
