// The operator's Prometheus metrics, on a registry of its own (two operators in one test process
// must not share counters, and prom-client's global registry would make them).
import { Counter, Gauge, Histogram, Registry } from "prom-client";

export interface OperatorMetrics {
  registry: Registry;
  reconciles: Counter<"result">;
  reconcileDuration: Histogram;
  queueDepth: Gauge;
  retries: Counter;
  apiRequests: Counter<"verb" | "code">;
  watchRestarts: Counter<"reason">;
  leader: Gauge;
}

/** `queueDepth` is read at each scrape. */
export function createOperatorMetrics(queueDepth: () => number): OperatorMetrics {
  const registry = new Registry();
  return {
    registry,
    reconciles: new Counter({
      name: "portcullis_operator_reconciles_total",
      help: "Reconciles of AccessPolicies, by result (success, error).",
      labelNames: ["result"],
      registers: [registry],
    }),
    reconcileDuration: new Histogram({
      name: "portcullis_operator_reconcile_duration_seconds",
      help: "Time one reconcile of one AccessPolicy took.",
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    }),
    queueDepth: new Gauge({
      name: "portcullis_operator_queue_depth",
      help: "AccessPolicies waiting to be reconciled (now or after a backoff).",
      registers: [registry],
      collect() {
        this.set(queueDepth());
      },
    }),
    retries: new Counter({
      name: "portcullis_operator_retries_total",
      help: "Reconciles that failed and were scheduled again with backoff.",
      registers: [registry],
    }),
    apiRequests: new Counter({
      name: "portcullis_operator_api_requests_total",
      help: "Requests to the Kubernetes API, by verb and HTTP status (0: no response).",
      labelNames: ["verb", "code"],
      registers: [registry],
    }),
    watchRestarts: new Counter({
      name: "portcullis_operator_watch_restarts_total",
      help: "Watch streams restarted, by reason (closed, expired: relisted after 410, error: backed off).",
      labelNames: ["reason"],
      registers: [registry],
    }),
    leader: new Gauge({
      name: "portcullis_operator_leader",
      help: "1 while this replica holds the leader lease.",
      registers: [registry],
    }),
  };
}
