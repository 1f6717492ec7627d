// The proxy's Prometheus metrics, in a registry of their own (never prom-client's global one, so
// tests and benchmarks can build several). Label values come from the policy (rule names, issuers)
// or from small closed sets, never from request input: cardinality stays bounded.

import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";

export interface RequestCompleted {
  /** The matched rule's name, or a fixed word when none matched (the request path chooses it). */
  rule: string;
  decision: string;
  status: number;
  seconds: number;
  upstreamSeconds?: number;
}

export type ReloadOutcome = "success" | "error";

export interface PolicyLoaded {
  name: string;
  /** metadata.generation when the file carries it, else the proxy's own load counter. */
  generation: number;
  /** First hex digits of the file's SHA-256: tells two loads of the same generation apart. */
  hash: string;
}

export interface ProxyMetrics {
  register: Registry;
  requestCompleted(event: RequestCompleted): void;
  jwksFetch(issuer: string, outcome: string): void;
  reload(outcome: ReloadOutcome): void;
  policyLoaded(policy: PolicyLoaded): void;
  /** Read on every scrape: seconds since each issuer's keys were last fetched successfully. */
  observeKeySetAges(ages: () => Iterable<readonly [issuer: string, ageSeconds: number]>): void;
  /** Read on every scrape: requests received and not yet answered. */
  observeInFlight(count: () => number): void;
  uncaughtError(kind: "exception" | "rejection"): void;
}

const PREFIX = "portcullis_";
// Sidecar latencies: sub-millisecond rejections up to slow uploads.
const DURATION_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export function createProxyMetrics(): ProxyMetrics {
  const register = new Registry();
  collectDefaultMetrics({ register, prefix: PREFIX });

  const requests = new Counter({
    name: `${PREFIX}requests_total`,
    help: "Requests answered, by matched rule, decision and status code.",
    labelNames: ["rule", "decision", "status"] as const,
    registers: [register],
  });
  const duration = new Histogram({
    name: `${PREFIX}request_duration_seconds`,
    help: "Time from request arrival to the end of the response, by matched rule.",
    labelNames: ["rule"] as const,
    buckets: DURATION_BUCKETS,
    registers: [register],
  });
  const upstreamDuration = new Histogram({
    name: `${PREFIX}upstream_duration_seconds`,
    help: "Time the upstream took to send response headers, by matched rule.",
    labelNames: ["rule"] as const,
    buckets: DURATION_BUCKETS,
    registers: [register],
  });
  const jwksFetches = new Counter({
    name: `${PREFIX}jwks_fetches_total`,
    help: "JWKS (and discovery) fetches, by issuer and outcome.",
    labelNames: ["issuer", "outcome"] as const,
    registers: [register],
  });
  let keySetAges: () => Iterable<readonly [string, number]> = () => [];
  new Gauge({
    name: `${PREFIX}jwks_age_seconds`,
    help: "Seconds since the issuer's keys were last fetched successfully.",
    labelNames: ["issuer"] as const,
    registers: [register],
    collect() {
      // Issuers dropped by a reload must vanish from the output, not keep their last age.
      this.reset();
      for (const [issuer, age] of keySetAges()) {
        if (Number.isFinite(age)) this.set({ issuer }, age);
      }
    },
  });
  let inFlight: () => number = () => 0;
  new Gauge({
    name: `${PREFIX}requests_in_flight`,
    help: "Requests received and not yet answered.",
    registers: [register],
    collect() {
      this.set(inFlight());
    },
  });
  const reloads = new Counter({
    name: `${PREFIX}policy_reloads_total`,
    help: "Policy file loads after startup, by outcome (error: the last good policy stays in force).",
    labelNames: ["outcome"] as const,
    registers: [register],
  });
  const policyInfo = new Gauge({
    name: `${PREFIX}policy_info`,
    help: "The policy in force (always 1).",
    labelNames: ["name", "generation", "hash"] as const,
    registers: [register],
  });
  const lastLoad = new Gauge({
    name: `${PREFIX}policy_last_load_timestamp_seconds`,
    help: "When the policy in force was loaded (Unix time).",
    registers: [register],
  });
  const uncaught = new Counter({
    name: `${PREFIX}uncaught_errors_total`,
    help: "Errors that escaped every handler (logged, process kept serving).",
    labelNames: ["kind"] as const,
    registers: [register],
  });
  for (const outcome of ["success", "error"] as const) reloads.inc({ outcome }, 0);

  return {
    register,
    requestCompleted(event) {
      requests.inc({ rule: event.rule, decision: event.decision, status: event.status });
      duration.observe({ rule: event.rule }, event.seconds);
      if (event.upstreamSeconds !== undefined) {
        upstreamDuration.observe({ rule: event.rule }, event.upstreamSeconds);
      }
    },
    jwksFetch(issuer, outcome) {
      jwksFetches.inc({ issuer, outcome });
    },
    reload(outcome) {
      reloads.inc({ outcome });
    },
    policyLoaded(policy) {
      policyInfo.reset();
      policyInfo.set({ name: policy.name, generation: policy.generation, hash: policy.hash }, 1);
      lastLoad.set(Date.now() / 1000);
    },
    observeKeySetAges(ages) {
      keySetAges = ages;
    },
    observeInFlight(count) {
      inFlight = count;
    },
    uncaughtError(kind) {
      uncaught.inc({ kind });
    },
  };
}
