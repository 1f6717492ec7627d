// A bounded, open-loop load for the real node's "no request lost" scenarios: requests go out at a
// fixed rate whatever the responses do (a closed loop would slow down exactly when something breaks),
// over keep-alive connections as a service client's would, and every answer is counted.
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
  const report: LoadReport = { sent: 0, ok: 0, failures: {}, samples: [], seconds: 0 };
  const inflight = new Set<Promise<void>>();
  const fail = (what: string, req: LoadRequest) => {
    report.failures[what] = (report.failures[what] ?? 0) + 1;
    if (report.samples.length < 20) report.samples.push(`+${Date.now() - started} ms ${req.path}: ${what}`);
  };
  const send = (i: number) => {
    const req = options.next(i);
    report.sent++;
    const done = request(`${options.origin}${req.path}`, {
      dispatcher: agent,
      headers: req.headers ?? {},
      headersTimeout: 30_000,
      bodyTimeout: 30_000,
    })
      .then(async (response) => {
        await response.body.dump();
        if (req.expect.includes(response.statusCode)) report.ok++;
        else fail(String(response.statusCode), req);
      })
      .catch((error: unknown) => {
        const code = error instanceof Error && "code" in error ? String(error.code) : String(error);
        fail(code, req);
      })
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
