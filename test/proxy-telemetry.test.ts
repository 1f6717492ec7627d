// The logger (JSON and ECS, redaction, no stacks) and the metrics registry, in process.
import { mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { Counter, Histogram, Registry } from "prom-client";
import { describe, expect, it, vi } from "vitest";
import {
  type AccessLine,
  type BufferSink,
  batchedDestination,
  createLogger,
  LineBatch,
  writeAccessLine,
} from "../proxy/access-log.ts";
import { createProxyMetrics, DURATION_BUCKETS } from "../proxy/metrics.ts";

function capture(): { stream: Writable; lines: () => Record<string, unknown>[] } {
  let text = "";
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      text += chunk.toString("utf8");
      done();
    },
  });
  return {
    stream,
    lines: () =>
      text
        .trim()
        .split("\n")
        .filter(Boolean)
        .map((line) => JSON.parse(line) as Record<string, unknown>),
  };
}

describe("createLogger", () => {
  it("writes JSON lines with a level label and an ISO time", () => {
    const out = capture();
    const logger = createLogger({ format: "json", level: "info", destination: out.stream });
    logger.info({ rule: "read-orders", status: 200 }, "request");
    logger.debug("not at info");
    const [line, ...rest] = out.lines();
    expect(rest).toHaveLength(0);
    expect(line).toMatchObject({ level: "info", msg: "request", rule: "read-orders", status: 200 });
    expect(Number.isNaN(Date.parse(String(line?.time)))).toBe(false);
  });

  it.each(["json", "ecs"] as const)("redacts credentials and never writes a stack (%s)", (format) => {
    const out = capture();
    const logger = createLogger({ format, level: "info", destination: out.stream });
    logger.info(
      {
        req: {
          headers: { authorization: "Bearer secret-token", cookie: "session=secret-cookie", accept: "*/*" },
        },
        headers: { "proxy-authorization": "Basic secret-basic" },
        token: "secret-raw",
      },
      "request",
    );
    logger.error({ err: new TypeError("boom") }, "failed");
    const text = JSON.stringify(out.lines());
    expect(text).not.toMatch(/secret/);
    expect(text).toContain("*/*");
    expect(text).toContain("boom");
    expect(text).not.toMatch(/\bat .*\.ts:\d+/);
    const failed = out.lines()[1] ?? {};
    expect(failed[format === "ecs" ? "error" : "err"]).toEqual({ type: "TypeError", message: "boom" });
  });

  it("writes ECS with access-log fields under ECS names", () => {
    const out = capture();
    const logger = createLogger({ format: "ecs", level: "info", destination: out.stream });
    logger.info(
      { requestId: "r1", method: "GET", path: "/orders", status: 200, latencyMs: 1.5, rule: "read-orders" },
      "request",
    );
    expect(out.lines()[0]).toMatchObject({
      "log.level": "info",
      message: "request",
      "http.request.id": "r1",
      "http.request.method": "GET",
      "url.path": "/orders",
      "http.response.status_code": 200,
      "event.duration": 1_500_000,
      "portcullis.rule": "read-orders",
    });
    expect(out.lines()[0]).toHaveProperty("ecs.version");
    expect(out.lines()[0]).toHaveProperty("@timestamp");
  });
});

/** Two access lines: every field with characters JSON must escape, and the fewest fields. */
const lines: AccessLine[] = [
  {
    requestId: "r1",
    method: "GET",
    path: '/o"x\\\u2028\u00e9\ud800\n',
    rule: "read-orders",
    decision: "allow",
    reason: "role",
    subject: "svc\u0000",
    clientId: "reader",
    roles: ["a", 'b"'],
    rateLimit: "per-client",
    wouldStatus: 403,
    explanation: {
      rule: "read-orders",
      template: "/o/{x}",
      requires: { anyRole: ['b"'] },
      mode: "DryRun",
      decision: "deny",
      status: 403,
      reason: "missing-roles",
      roles: ["a"],
      missing: ['b"'],
      why: 'rule read-orders \u2028 "x"',
    },
    status: 200,
    latencyMs: 1.234,
    upstreamMs: 0.5,
    failure: "upstream-error",
  },
  {
    requestId: "r2",
    method: "",
    path: undefined,
    rule: "(none)",
    decision: "invalid",
    reason: "parse-error",
    subject: undefined,
    clientId: undefined,
    roles: undefined,
    rateLimit: undefined,
    wouldStatus: undefined,
    explanation: undefined,
    status: 400,
    latencyMs: 0.001,
    upstreamMs: undefined,
    failure: undefined,
  },
];

describe("writeAccessLine", () => {
  it.each(["json", "ecs"] as const)("writes the fields pino's logger.info would (%s)", (format) => {
    const out = capture();
    const logger = createLogger({ format, level: "info", destination: out.stream });
    for (const line of lines) {
      logger.info(line, "request");
      writeAccessLine(logger, line);
    }
    const time = format === "json" ? "time" : "@timestamp";
    const written = out.lines();
    expect(written).toHaveLength(4);
    for (const line of written) {
      expect(Number.isNaN(Date.parse(String(line[time])))).toBe(false);
      delete line[time];
    }
    expect(written[1]).toEqual(written[0]);
    expect(written[3]).toEqual(written[2]);
    expect(Object.keys(written[1] ?? {})).toEqual(Object.keys(written[0] ?? {}));
  });

  it("serialises an identity once per roles array, yet never gives one identity's fields to another", () => {
    const out = capture();
    const logger = createLogger({ format: "json", level: "info", destination: out.stream });
    const shared = ["reader"];
    const first = { ...lines[0]!, subject: "alice", clientId: "app", roles: shared };
    // Another identity with the very same roles array (as a shared empty or frozen array could be).
    const second = { ...first, subject: 'bob"', clientId: undefined };
    for (const line of [first, first, second, first]) writeAccessLine(logger, line);
    expect(out.lines().map((line) => [line.subject, line.clientId, line.roles])).toEqual([
      ["alice", "app", ["reader"]],
      ["alice", "app", ["reader"]],
      ['bob"', undefined, ["reader"]],
      ["alice", "app", ["reader"]],
    ]);
  });

  it("quotes every value, however many distinct ones arrive", () => {
    const out = capture();
    const logger = createLogger({ format: "json", level: "info", destination: out.stream });
    const reasons = Array.from({ length: 1_000 }, (_, i) => `reason "${i}"\\`);
    for (const reason of reasons) writeAccessLine(logger, { ...lines[1]!, reason, method: `M${reason}` });
    expect(out.lines().map((line) => [line.reason, line.method])).toEqual(
      reasons.map((reason) => [reason, `M${reason}`]),
    );
  });

  it("writes nothing below the logger's level", () => {
    const out = capture();
    writeAccessLine(createLogger({ format: "json", level: "warn", destination: out.stream }), lines[0]!);
    expect(out.lines()).toHaveLength(0);
  });
});

describe("LineBatch", () => {
  /** A LineBatch over a sink that records each write (a copy: the batch may not reuse a written buffer). */
  function recorded() {
    const writes: string[] = [];
    const sink: BufferSink = {
      write: (data) => writes.push(Buffer.from(data).toString("utf8")) > 0,
      flush: (callback) => callback(),
      flushSync: () => undefined,
      end: () => undefined,
    };
    const batch = new LineBatch(sink);
    const logger = createLogger({ format: "json", level: "info", destination: batch });
    return { batch, logger, writes };
  }

  it("holds lines until about 32 KiB are pending, then writes them at once, in order with pino's own", () => {
    const { batch, logger, writes } = recorded();
    try {
      writeAccessLine(logger, lines[0]!);
      logger.warn("between two access lines");
      writeAccessLine(logger, lines[1]!);
      expect(writes).toEqual([]);
      for (let i = 0; writes.length === 0; i++) {
        expect(i).toBeLessThan(1_000);
        writeAccessLine(logger, { ...lines[0]!, requestId: `filler-${i}` });
      }
      expect(Buffer.byteLength(writes[0]!)).toBeGreaterThanOrEqual(32 * 1024);
      const [first, second, third] = writes[0]!
        .split("\n")
        .filter(Boolean)
        .map((line) => JSON.parse(line));
      expect([first.requestId, second.msg, third.requestId]).toEqual([
        lines[0]!.requestId,
        "between two access lines",
        lines[1]!.requestId,
      ]);
    } finally {
      batch.end();
    }
  });

  it("builds deferred lines when the event loop turn ends, or at once when a line is written or on flush", async () => {
    const { batch, logger, writes } = recorded();
    try {
      let built = 0;
      const deferred = { render: () => `${++built}\n` };
      batch.defer(deferred);
      batch.defer(deferred);
      expect(built).toBe(0);
      await new Promise((resolve) => setImmediate(resolve));
      expect(built).toBe(2);
      // A line written meanwhile comes after them; so does a flush.
      batch.defer(deferred);
      logger.warn("an event");
      batch.defer(deferred);
      batch.flushSync();
      expect(
        writes
          .join("")
          .split("\n")
          .filter(Boolean)
          .map((line) => line.slice(0, 10)),
      ).toEqual(["1", "2", "3", '{"level":"', "4"]);
      // Access lines of a createLogger logger take this path; the time stamp is taken when written.
      const before = Date.now();
      writeAccessLine(logger, lines[1]!);
      batch.flushSync();
      const line = JSON.parse(writes.join("").trim().split("\n").at(-1)!);
      expect(line.requestId).toBe(lines[1]!.requestId);
      expect(Date.parse(line.time)).toBeGreaterThanOrEqual(before);
    } finally {
      batch.end();
    }
  });

  it("loses only a deferred line that cannot be built, never the process or the other lines", () => {
    const { batch, writes } = recorded();
    try {
      batch.defer({ render: () => "first\n" });
      batch.defer({
        render: () => {
          throw new Error("a bug");
        },
      });
      batch.defer({ render: () => "third\n" });
      batch.flushSync();
      expect(writes).toEqual(["first\nthird\n"]);
    } finally {
      batch.end();
    }
  });

  it("writes a line too long for its buffer on its own, after what was pending", () => {
    const { batch, writes } = recorded();
    try {
      batch.write("short\n");
      const long = `${"\u00e9".repeat(40_000)}\n`;
      batch.write(long);
      batch.write("after\n");
      batch.flushSync();
      expect(writes).toEqual(["short\n", long, "after\n"]);
    } finally {
      batch.end();
    }
  });

  it("writes a quiet logger's lines to its file within the flush interval, and at once on flush", async () => {
    const dir = mkdtempSync(join(tmpdir(), "portcullis-log-"));
    const file = join(dir, "out.log");
    const batch = batchedDestination(openSync(file, "w"));
    const logger = createLogger({ format: "json", level: "info", destination: batch });
    const written = () => readFileSync(file, "utf8");
    try {
      writeAccessLine(logger, lines[0]!);
      expect(written()).toBe("");
      await vi.waitFor(() => expect(written()).toContain(lines[0]!.requestId), { timeout: 2_000 });
      writeAccessLine(logger, lines[1]!);
      // flush(cb) calls back once the write has reached the file, not merely when it was started.
      await new Promise<void>((resolve, reject) =>
        logger.flush((error) => (error ? reject(error) : resolve())),
      );
      expect(written()).toContain(lines[1]!.requestId);
    } finally {
      batch.end();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("createProxyMetrics", () => {
  it("keeps separate registries and counts requests, fetches, reloads and key ages", async () => {
    const a = createProxyMetrics();
    const b = createProxyMetrics();
    a.requestCompleted({
      rule: "read-orders",
      decision: "allow",
      status: 200,
      seconds: 0.002,
      upstreamSeconds: 0.001,
    });
    a.requestCompleted({ rule: "read-orders", decision: "unauthenticated", status: 401, seconds: 0.0001 });
    a.jwksFetch("https://idp", "ok");
    a.reload("error");
    let ages: [string, number][] = [
      ["https://idp", 12],
      ["https://cold", Number.POSITIVE_INFINITY],
    ];
    a.observeKeySetAges(() => ages);
    a.observeInFlight(() => 3);
    a.policyLoaded({ name: "orders-api", generation: 4, hash: "abc" });

    const text = await a.register.metrics();
    expect(text).toContain('portcullis_requests_total{rule="read-orders",decision="allow",status="200"} 1');
    expect(text).toContain(
      'portcullis_requests_total{rule="read-orders",decision="unauthenticated",status="401"} 1',
    );
    expect(text).toContain('portcullis_upstream_duration_seconds_count{rule="read-orders"} 1');
    expect(text).toContain('portcullis_request_duration_seconds_count{rule="read-orders"} 2');
    expect(text).toContain('portcullis_jwks_fetches_total{issuer="https://idp",outcome="ok"} 1');
    expect(text).toContain('portcullis_jwks_age_seconds{issuer="https://idp"} 12');
    expect(text).not.toContain('issuer="https://cold"');
    expect(text).toContain('portcullis_policy_reloads_total{outcome="error"} 1');
    expect(text).toContain('portcullis_policy_info{name="orders-api",generation="4",hash="abc"} 1');
    expect(text).toContain("portcullis_requests_in_flight 3");
    expect(text).toContain("portcullis_process_resident_memory_bytes");

    ages = [];
    expect(await a.register.metrics()).not.toContain("portcullis_jwks_age_seconds{");
    expect(await b.register.metrics()).not.toContain("portcullis_requests_total{");
  });

  it("exposes request counts and duration histograms exactly as prom-client's own metrics would", async () => {
    const metrics = createProxyMetrics();
    const reference = new Registry();
    const requests = new Counter({
      name: "portcullis_requests_total",
      help: "Requests answered, by matched rule, decision and status code.",
      labelNames: ["rule", "decision", "status"] as const,
      registers: [reference],
    });
    const histogram = (name: string, help: string) =>
      new Histogram({
        name,
        help,
        labelNames: ["rule"] as const,
        buckets: DURATION_BUCKETS,
        registers: [reference],
      });
    const duration = histogram(
      "portcullis_request_duration_seconds",
      "Time from request arrival to the end of the response, by matched rule.",
    );
    const upstream = histogram(
      "portcullis_upstream_duration_seconds",
      "Time the upstream took to send response headers, by matched rule.",
    );
    const rules = ["read-orders", "(none)", "write-orders"];
    const decisions = ["allow", "deny", "unauthenticated"];
    const statuses = [200, 401, 403, 502];
    // Values on every bucket bound, between bounds, above the last one, and sums that round.
    const values = [...DURATION_BUCKETS, 0, 0.0001, 0.1 + 0.2, 0.007, 3, 31, 1e-9, 0.0049999];
    for (let i = 0; i < 500; i++) {
      const rule = rules[(i * 7) % rules.length] as string;
      const decision = decisions[(i * 5) % decisions.length] as string;
      const status = statuses[(i * 3) % statuses.length] as number;
      const seconds = values[i % values.length] as number;
      const upstreamSeconds = i % 4 === 0 ? undefined : (values[(i * 11) % values.length] as number);
      metrics.requestCompleted({ rule, decision, status, seconds, upstreamSeconds });
      requests.inc({ rule, decision, status });
      duration.observe({ rule }, seconds);
      if (upstreamSeconds !== undefined) upstream.observe({ rule }, upstreamSeconds);
    }
    const families = (text: string) =>
      text
        .split("\n\n")
        .map((family) => family.trim())
        .filter((family) =>
          /^# HELP portcullis_(requests_total|request_duration|upstream_duration)/.test(family),
        );
    const expected = families(await reference.metrics());
    expect(expected).toHaveLength(3);
    expect(expected.join("\n")).toContain(
      'portcullis_request_duration_seconds_bucket{le="0.0005",rule="(none)"}',
    );
    expect(families(await metrics.register.metrics())).toEqual(expected);
    // Twice: a scrape does not disturb the counts.
    expect(families(await metrics.register.metrics())).toEqual(expected);
    const json = async (registry: Registry, name: string) =>
      (await registry.getMetricsAsJSON()).find((metric) => metric.name === name);
    for (const name of ["portcullis_request_duration_seconds", "portcullis_upstream_duration_seconds"]) {
      expect(await json(metrics.register, name)).toEqual(await json(reference, name));
    }
  });
});
