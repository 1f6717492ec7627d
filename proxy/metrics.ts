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
  /** Dry run: the status the policy would have refused the request with. */
  wouldStatus?: number;
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
  /** `detail` (a failure's short code: `timeout`, `http_404`, `tls_untrusted`...) also counts the error by reason. */
  jwksFetch(issuer: string, outcome: string, detail?: string): void;
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
export const DURATION_BUCKETS = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
];

export function createProxyMetrics(): ProxyMetrics {
  const register = new Registry();
  collectDefaultMetrics({ register, prefix: PREFIX });

  // The request-path metrics are counted in plain structures (a Map lookup and a few increments per
  // request); prom-client sees them only when /metrics is scraped.
  const requestCounts = new RequestCounts();
  const durations = new RuleHistograms(DURATION_BUCKETS);
  const upstreamDurations = new RuleHistograms(DURATION_BUCKETS);
  new Counter({
    name: `${PREFIX}requests_total`,
    help: "Requests answered, by matched rule, decision and status code.",
    labelNames: ["rule", "decision", "status"] as const,
    registers: [register],
    collect() {
      this.reset();
      for (const series of requestCounts.series) {
        this.inc({ rule: series.rule, decision: series.decision, status: series.status }, series.count);
      }
    },
  });
  register.registerMetric(
    new CollectedHistogram({
      name: `${PREFIX}request_duration_seconds`,
      help: "Time from request arrival to the end of the response, by matched rule.",
      labelNames: ["rule"] as const,
      buckets: DURATION_BUCKETS,
      source: durations,
    }),
  );
  register.registerMetric(
    new CollectedHistogram({
      name: `${PREFIX}upstream_duration_seconds`,
      help: "Time the upstream took to send response headers, by matched rule.",
      labelNames: ["rule"] as const,
      buckets: DURATION_BUCKETS,
      source: upstreamDurations,
    }),
  );
  const jwksFetches = new Counter({
    name: `${PREFIX}jwks_fetches_total`,
    help: "JWKS (and discovery) fetches, by issuer and outcome.",
    labelNames: ["issuer", "outcome"] as const,
    registers: [register],
  });
  // A separate counter so the fetches' series stay as they were; reasons are KeyFetchError's small set.
  const jwksFetchErrors = new Counter({
    name: `${PREFIX}jwks_fetch_errors_total`,
    help: "Failed JWKS (and discovery) fetches, by issuer and reason (timeout, http_<status>, tls_untrusted...).",
    labelNames: ["issuer", "reason"] as const,
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
  // Counted only for requests a DryRun rule or policy let through: no cost on the enforcing path.
  const wouldDeny = new Counter({
    name: `${PREFIX}dry_run_would_deny_total`,
    help: "Requests forwarded in DryRun that the policy would have refused, by rule and the status it would have answered.",
    labelNames: ["rule", "status"] as const,
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
      requestCounts.add(event.rule, event.decision, event.status);
      durations.observe(event.rule, event.seconds);
      if (event.upstreamSeconds !== undefined) upstreamDurations.observe(event.rule, event.upstreamSeconds);
      if (event.wouldStatus !== undefined) wouldDeny.inc({ rule: event.rule, status: event.wouldStatus });
    },
    jwksFetch(issuer, outcome, detail) {
      jwksFetches.inc({ issuer, outcome });
      if (outcome === "error") jwksFetchErrors.inc({ issuer, reason: detail ?? "unknown" });
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

// ---- request-path aggregation ----------------------------------------------------------------------

interface RequestSeries {
  readonly rule: string;
  readonly decision: string;
  readonly status: number;
  count: number;
}

/** Requests by (rule, decision, status); `series` in first-seen order, as prom-client lists them. */
class RequestCounts {
  readonly series: RequestSeries[] = [];
  // rule -> decision -> status: the label values are the policy's and a closed set, so the strings
  // are the same objects on every request and their hashes are cached.
  readonly #byRule = new Map<string, Map<string, Map<number, RequestSeries>>>();

  add(rule: string, decision: string, status: number): void {
    let byDecision = this.#byRule.get(rule);
    if (byDecision === undefined) {
      byDecision = new Map();
      this.#byRule.set(rule, byDecision);
    }
    let byStatus = byDecision.get(decision);
    if (byStatus === undefined) {
      byStatus = new Map();
      byDecision.set(decision, byStatus);
    }
    let series = byStatus.get(status);
    if (series === undefined) {
      series = { rule, decision, status, count: 0 };
      byStatus.set(status, series);
      this.series.push(series);
    }
    series.count++;
  }
}

interface RuleHistogram {
  readonly rule: string;
  /** Observations per bucket (not cumulative); index i counts values <= bounds[i] and > bounds[i-1]. */
  readonly buckets: Float64Array;
  sum: number;
  count: number;
}

/** Histograms by rule, in first-seen order; bucket placement and summing exactly as prom-client's. */
class RuleHistograms {
  readonly series: RuleHistogram[] = [];
  readonly #bounds: readonly number[];
  readonly #byRule = new Map<string, RuleHistogram>();

  constructor(bounds: readonly number[]) {
    this.#bounds = bounds;
  }

  observe(rule: string, value: number): void {
    // prom-client refuses non-finite values by throwing; the request path never produces them.
    if (!Number.isFinite(value)) return;
    let histogram = this.#byRule.get(rule);
    if (histogram === undefined) {
      histogram = { rule, buckets: new Float64Array(this.#bounds.length), sum: 0, count: 0 };
      this.#byRule.set(rule, histogram);
      this.series.push(histogram);
    }
    const bounds = this.#bounds;
    const { buckets } = histogram;
    for (let i = 0; i < bounds.length; i++) {
      if (value <= (bounds[i] ?? 0)) {
        buckets[i] = (buckets[i] ?? 0) + 1;
        break;
      }
    }
    histogram.sum += value;
    histogram.count++;
  }
}

interface CollectedHistogramConfig {
  name: string;
  help: string;
  labelNames: readonly ["rule"];
  buckets: readonly number[];
  source: RuleHistograms;
}

type HistogramData = Awaited<ReturnType<Histogram<"rule">["get"]>>;

/** One sample as prom-client's Registry formats it: `labels` first, then the series' `sharedLabels`. */
interface Sample {
  labels: Record<string, string | number>;
  sharedLabels: Record<string, string>;
  value: number;
  metricName: string;
  /** null on buckets, undefined on _sum and _count, as prom-client has them (no exemplars here). */
  exemplar: null | undefined;
}

/**
 * A prom-client histogram whose samples are read from a RuleHistograms at scrape time. It yields the
 * same samples, in the same order, as prom-client's own Histogram given the same observations
 * (test/proxy-telemetry.test.ts compares the two). The Registry prefers getForPromString, an
 * undeclared method of prom-client's metrics (prom-client is pinned).
 */
class CollectedHistogram extends Histogram<"rule"> {
  readonly #name: string;
  readonly #help: string;
  readonly #bounds: readonly number[];
  readonly #source: RuleHistograms;

  constructor(config: CollectedHistogramConfig) {
    super({
      name: config.name,
      help: config.help,
      labelNames: config.labelNames,
      buckets: [...config.buckets],
      registers: [],
    });
    this.#name = config.name;
    this.#help = config.help;
    this.#bounds = config.buckets;
    this.#source = config.source;
  }

  override async get(): Promise<HistogramData> {
    const data = this.getForPromString();
    const values = data.values.map(({ labels, sharedLabels, ...rest }) => ({
      ...rest,
      labels: { ...labels, ...sharedLabels },
    }));
    return { ...data, values } as unknown as HistogramData;
  }

  getForPromString(): { name: string; help: string; type: "histogram"; values: Sample[]; aggregator: "sum" } {
    const values: Sample[] = [];
    const bucketName = `${this.#name}_bucket`;
    for (const histogram of this.#source.series) {
      const sharedLabels = { rule: histogram.rule };
      let cumulative = 0;
      for (let i = 0; i < this.#bounds.length; i++) {
        cumulative += histogram.buckets[i] ?? 0;
        values.push({
          labels: { le: this.#bounds[i] ?? 0 },
          sharedLabels,
          value: cumulative,
          metricName: bucketName,
          exemplar: null,
        });
      }
      values.push({
        labels: { le: "+Inf" },
        sharedLabels,
        value: histogram.count,
        metricName: bucketName,
        exemplar: null,
      });
      values.push({
        labels: {},
        sharedLabels,
        value: histogram.sum,
        metricName: `${this.#name}_sum`,
        exemplar: undefined,
      });
      values.push({
        labels: {},
        sharedLabels,
        value: histogram.count,
        metricName: `${this.#name}_count`,
        exemplar: undefined,
      });
    }
    return { name: this.#name, help: this.#help, type: "histogram", values, aggregator: "sum" };
  }
}
