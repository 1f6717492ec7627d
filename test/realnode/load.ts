// A bounded, open-loop load for the real node's "no request lost" scenarios: requests go out at a
// fixed rate whatever the responses do (a closed loop would slow down exactly when something breaks),
// over keep-alive connections as a service client's would, and every answer is counted.
// Like Go's net/http and browsers, a GET whose connection failed before any response (reset, refused,
// or closed by the server as the request went out) is retried once on a new connection: counted as
// `retried`, and lost only if the retry fails too. An HTTP error status is never retried.
import { Agent, request } from "undici";

export interface LoadRequest {
  path: string;
  headers?: Record<string, string>;
  /** The statuses that count as served correctly. */
  expect: readonly number[];
}

export interface LoadReport {
  sent: number;
  /** Answered with an expected status. */
  ok: number;
  /** Connection-level failures retried once, transparently. */
  retried: number;
  /** status (or error code) -> count, for everything not ok. */
  failures: Record<string, number>;
  /** The first few failures, with when they happened (ms since the start) and what was asked. */
  samples: string[];
  seconds: number;
}

export interface RunningLoad {
  /** Stops sending, waits for the answers still outstanding, and reports. */
  stop(): Promise<LoadReport>;
  /** The report so far (requests still in flight not counted). */
  peek(): LoadReport;
}

/** Failures where the request never got an answer from the server it reached, if it reached one. */
export const CONNECTION_FAILURES: ReadonlySet<string> = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "EPIPE",
  "UND_ERR_SOCKET",
  "UND_ERR_CONNECT_TIMEOUT",
]);

function errorCode(error: unknown): string {
  return error instanceof Error && "code" in error ? String(error.code) : String(error);
}

export function startLoad(options: {
  /** http://<ClusterIP>:<port> */
  origin: string;
  ratePerSecond: number;
  /** The i-th request. */
  next: (i: number) => LoadRequest;
  /** Hard bound: the load stops by itself after this long. */
  maxSeconds: number;
  connections?: number;
}): RunningLoad {
  const agent = new Agent({
    connections: options.connections ?? 16,
    keepAliveTimeout: 4_000,
    connect: { timeout: 5_000 },
  });
  const started = Date.now();
  const report: LoadReport = { sent: 0, ok: 0, retried: 0, failures: {}, samples: [], seconds: 0 };
  const inflight = new Set<Promise<void>>();
  const fail = (what: string, req: LoadRequest) => {
    report.failures[what] = (report.failures[what] ?? 0) + 1;
    if (report.samples.length < 20) report.samples.push(`+${Date.now() - started} ms ${req.path}: ${what}`);
  };
  const send = (i: number) => {
    const req = options.next(i);
    report.sent++;
    const attempt = () =>
      request(`${options.origin}${req.path}`, {
        dispatcher: agent,
        headers: req.headers ?? {},
        headersTimeout: 30_000,
        bodyTimeout: 30_000,
      });
    const done = attempt()
      .catch((error: unknown) => {
        if (!CONNECTION_FAILURES.has(errorCode(error))) throw error;
        report.retried++;
        return attempt();
      })
      .then(async (response) => {
        await response.body.dump();
        if (req.expect.includes(response.statusCode)) report.ok++;
        else fail(String(response.statusCode), req);
      })
      .catch((error: unknown) => fail(errorCode(error), req))
      .finally(() => inflight.delete(done));
    inflight.add(done);
  };
  // Ticks of 10 ms, each sending what the rate owes by now: steady even when a tick runs late.
  let owed = 0;
  let i = 0;
  const timer = setInterval(() => {
    const elapsed = (Date.now() - started) / 1000;
    if (elapsed > options.maxSeconds) {
      clearInterval(timer);
      return;
    }
    owed = Math.floor(elapsed * options.ratePerSecond);
    while (i < owed) send(i++);
  }, 10);
  const snapshot = (): LoadReport => ({
    ...report,
    failures: { ...report.failures },
    samples: [...report.samples],
    seconds: (Date.now() - started) / 1000,
  });
  return {
    peek: snapshot,
    async stop() {
      clearInterval(timer);
      report.seconds = (Date.now() - started) / 1000;
      await Promise.all(inflight);
      await agent.close();
      return { ...snapshot(), seconds: report.seconds };
    },
  };
}
