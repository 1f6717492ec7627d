// The proxy's one logger: access lines and events, as pino JSON or as ECS (Elastic Common Schema).
// Credentials are redacted by path in case a caller ever logs raw headers, and errors are reduced to
// type and message: no stack trace ever reaches a log line. The access line (one per request) is not
// built by pino but by writeAccessLine, from fixed fields that hold no header map and no token.

import { ecsFormat } from "@elastic/ecs-pino-format";
import pino from "pino";
import type { Explanation } from "../policy/decision.ts";
import type { LogFormat, LogLevel } from "./config.ts";

export interface LoggerOptions {
  format: LogFormat;
  level: LogLevel;
  /** Default: stdout, batched (flush with `logger.flush()` before exiting). */
  destination?: pino.DestinationStream;
}

const SECRET_HEADERS = ["authorization", "proxy-authorization", "cookie", "set-cookie", "x-auth-assertion"];

/** Every place a header map might be logged; fast-redact needs explicit paths. */
export const REDACTED_PATHS = [
  "authorization",
  "token",
  ...["headers", "req.headers", "res.headers", "request.headers", "response.headers"].flatMap((base) =>
    SECRET_HEADERS.map((name) => `${base}["${name}"]`),
  ),
];

/** Lines are batched into writes of about BATCH_BYTES, and never wait longer than FLUSH_MS. */
const BATCH_BYTES = 32 * 1024;
const FLUSH_MS = 250;

/** Room for a batch plus a long line; a line that would not fit is written on its own. */
const BUFFER_BYTES = 2 * BATCH_BYTES;
/** Deferred lines of one event loop turn beyond this are built at once (memory stays bounded). */
const MAX_DEFERRED = 256;

/** A line whose text LineBatch.defer builds later. */
export interface DeferredLine {
  render(): string;
}

/** sonic-boom in contentMode "buffer" (its typings declare string writes only). */
export interface BufferSink {
  write(data: Buffer): boolean;
  flush(callback: (error?: Error) => void): void;
  flushSync(): void;
  end(): void;
}

/**
 * Batches lines into one write of about BATCH_BYTES, and writes what is pending every FLUSH_MS so a
 * quiet sidecar's lines still appear. One write(2) per access line costs more than everything else
 * the proxy does for a request. Each line is encoded into a buffer at once: the string dies young,
 * and a batch waiting for its write holds no heap objects that GC would copy and promote. sonic-boom's
 * own batching (minLength) keeps a pending string and measures its byte length on every line, which
 * flattens it: ~4 us more per access line (bench/access-log.ts).
 */
export class LineBatch implements pino.DestinationStream {
  readonly #sink: BufferSink;
  #buffer = Buffer.allocUnsafeSlow(BUFFER_BYTES);
  #used = 0;
  readonly #timer: NodeJS.Timeout;
  readonly #deferred: DeferredLine[] = [];
  readonly #writeDeferred = (): void => this.#takeDeferred();

  constructor(sink: BufferSink) {
    this.#sink = sink;
    this.#timer = setInterval(() => this.#push(), FLUSH_MS).unref();
  }

  /**
   * Takes a line whose text is built at the end of this event loop turn, together with the others
   * deferred in it: building and encoding the lines of a turn in one run cost the loaded proxy half
   * of what one at a time did (in-process A/B, access log on against off: 0.89-0.92x of the
   * throughput at once, 0.94-0.98x deferred). Order is kept: any line written meanwhile waits for them.
   */
  defer(line: DeferredLine): void {
    if (this.#deferred.push(line) === 1) setImmediate(this.#writeDeferred);
    else if (this.#deferred.length >= MAX_DEFERRED) this.#takeDeferred();
  }

  #takeDeferred(): void {
    const lines = this.#deferred;
    for (let i = 0; i < lines.length; i++) {
      let text: string;
      try {
        text = lines[i]!.render();
      } catch {
        // This runs from setImmediate: a line that cannot be built is lost, never the process.
        continue;
      }
      this.#append(text);
    }
    lines.length = 0;
  }

  write(line: string): void {
    if (this.#deferred.length > 0) this.#takeDeferred();
    this.#append(line);
  }

  #append(line: string): void {
    // UTF-8 takes at most 3 bytes per UTF-16 code unit.
    if (this.#used + line.length * 3 > BUFFER_BYTES) {
      this.#push();
      if (line.length * 3 > BUFFER_BYTES) {
        this.#sink.write(Buffer.from(line, "utf8"));
        return;
      }
    }
    this.#used += this.#buffer.write(line, this.#used, "utf8");
    if (this.#used >= BATCH_BYTES) this.#push();
  }

  #push(): void {
    if (this.#used === 0) return;
    // The sink keeps the buffer until its write completes: the next lines go into a new one.
    const full = this.#buffer.subarray(0, this.#used);
    this.#buffer = Buffer.allocUnsafeSlow(BUFFER_BYTES);
    this.#used = 0;
    this.#sink.write(full);
  }

  /** pino's logger.flush(cb): everything pending is written, then cb. */
  flush(callback: (error?: Error) => void): void {
    this.#takeDeferred();
    this.#push();
    this.#sink.flush(callback);
  }

  flushSync(): void {
    this.#takeDeferred();
    this.#push();
    try {
      this.#sink.flushSync();
    } catch {
      // Destroyed or not open yet: nothing can be written, and exiting must not throw.
    }
  }

  end(): void {
    clearInterval(this.#timer);
    this.#takeDeferred();
    this.#push();
    this.#sink.end();
  }
}

/**
 * Lines to a file descriptor (stdout in the sidecar), batched, each batch written synchronously, as
 * pino's own default destination writes. Asynchronous writes (a hop to libuv's thread pool and back per
 * batch) were slower in an A/B run of the loaded proxy here (9.2k against 11.4k req/s), and buffer
 * without bound when the log reader stalls; a synchronous write makes a stalled reader slow the proxy
 * down instead, as nginx's access log does, and the sidecar's memory stays flat.
 */
export function batchedDestination(fd: number): LineBatch {
  // maxWrite: one batch, one write.
  const sink = pino.destination({ dest: fd, sync: true, maxWrite: BUFFER_BYTES, contentMode: "buffer" });
  // A closed stdout (EPIPE) must not become an uncaught exception that is then logged to stdout.
  sink.on("error", () => undefined);
  const batch = new LineBatch(sink as unknown as BufferSink);
  // pino flushes the sink synchronously on exit; what is still pending here must reach it first.
  process.once("exit", () => batch.flushSync());
  return batch;
}

export function createLogger(options: LoggerOptions): pino.Logger {
  const destination = options.destination ?? batchedDestination(1);
  const common: pino.LoggerOptions = {
    level: options.level,
    base: { service: "portcullis-proxy" },
    redact: { paths: REDACTED_PATHS, censor: "[redacted]" },
    serializers: { err: serializeError },
  };
  if (options.format === "json") {
    const logger = pino(
      {
        ...common,
        timestamp: pino.stdTimeFunctions.isoTime,
        formatters: { level: (label) => ({ level: label }) },
      },
      destination,
    );
    accessWriters.set(logger, {
      destination,
      open: JSON_OPEN,
      names: JSON_NAMES,
      close: JSON_CLOSE,
      duration: (ms) => ms,
      identities: new WeakMap(),
    });
    return logger;
  }
  const ecs = ecsFormat({ apmIntegration: false, convertErr: false, serviceName: "portcullis-proxy" });
  const ecsLog = ecs.formatters?.log;
  const logger = pino(
    {
      ...ecs,
      ...common,
      base: {},
      formatters: {
        ...ecs.formatters,
        log(object) {
          const formatted = ecsLog ? ecsLog(object) : object;
          const { err, ...rest } = formatted;
          const fields = toEcsFields(rest);
          // pino runs this before its serializers: reduce the error here, under ECS's name.
          return err === undefined ? fields : { ...fields, error: serializeError(err) };
        },
      },
    },
    destination,
  );
  accessWriters.set(logger, ecsAccessWriter(ecs, destination));
  return logger;
}

// The access line's fields (pipeline.ts completeExchange) under their ECS names; the proxy's own
// under `portcullis.*`. Fields of other lines pass through unchanged.
const ECS_NAMES: Readonly<Record<string, string>> = {
  requestId: "http.request.id",
  method: "http.request.method",
  path: "url.path",
  status: "http.response.status_code",
  subject: "user.id",
  rule: "portcullis.rule",
  decision: "portcullis.decision",
  reason: "portcullis.reason",
  clientId: "portcullis.client_id",
  roles: "portcullis.roles",
  upstreamMs: "portcullis.upstream_ms",
  failure: "portcullis.failure",
  rateLimit: "portcullis.rate_limit",
  wouldStatus: "portcullis.would_status",
  explanation: "portcullis.explanation",
};

function toEcsFields(object: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(object)) {
    if (key === "latencyMs" && typeof value === "number") out["event.duration"] = Math.round(value * 1e6);
    else out[ECS_NAMES[key] ?? key] = value;
  }
  return out;
}

/** `{ type, message, code }` of anything thrown; never the stack. */
export function serializeError(value: unknown): { type: string; message: string; code?: string } {
  if (value instanceof Error) {
    const code = (value as NodeJS.ErrnoException).code;
    return { type: value.name, message: value.message, ...(typeof code === "string" ? { code } : {}) };
  }
  return { type: typeof value, message: String(value) };
}

// ---- the access line ---------------------------------------------------------------------------

/** One request's access line (pipeline.ts completeExchange); undefined fields are left out. */
export interface AccessLine {
  requestId: string;
  method: string;
  path: string | undefined;
  rule: string;
  decision: string;
  reason: string;
  subject: string | undefined;
  clientId: string | undefined;
  roles: readonly string[] | undefined;
  rateLimit: string | undefined;
  /** Dry run: the status the policy would have answered with (decision would_deny). */
  wouldStatus: number | undefined;
  /** Why the policy refused, or would have refused, the request (policy/decision.ts). */
  explanation: Explanation | undefined;
  status: number;
  latencyMs: number;
  upstreamMs: number | undefined;
  failure: string | undefined;
}

/** How a createLogger logger writes access lines: the same destination, field names of its format. */
interface AccessWriter {
  destination: pino.DestinationStream;
  /** `{"level":"info","time":"` or its ECS counterpart; the ISO time follows. */
  open: string;
  names: Readonly<Record<keyof AccessLine, string>>;
  /** From the message key to the end of the line. */
  close: string;
  /** JSON's latencyMs is in milliseconds, ECS's event.duration in nanoseconds. */
  duration: (latencyMs: number) => number;
  /** Each verified identity's subject, clientId and roles fields, keyed by its roles array. */
  identities: WeakMap<readonly string[], IdentityFields>;
}

interface IdentityFields {
  subject: string | undefined;
  clientId: string | undefined;
  text: string;
}

const accessWriters = new WeakMap<pino.Logger, AccessWriter>();

const JSON_OPEN = '{"level":"info","time":"';
const JSON_CLOSE = ',"msg":"request"}\n';
const JSON_NAMES: Readonly<Record<keyof AccessLine, string>> = {
  requestId: '","service":"portcullis-proxy","requestId":',
  method: ',"method":',
  path: ',"path":',
  rule: ',"rule":',
  decision: ',"decision":',
  reason: ',"reason":',
  subject: ',"subject":',
  clientId: ',"clientId":',
  roles: ',"roles":',
  rateLimit: ',"rateLimit":',
  wouldStatus: ',"wouldStatus":',
  explanation: ',"explanation":',
  status: ',"status":',
  latencyMs: ',"latencyMs":',
  upstreamMs: ',"upstreamMs":',
  failure: ',"failure":',
};

/**
 * ECS: the static fields (ecs.version, service.name, event.dataset) are whatever ecs-pino-format adds
 * to a line, read once from a line it formats, so this path never drifts from pino's.
 */
function ecsAccessWriter(ecs: pino.LoggerOptions, destination: pino.DestinationStream): AccessWriter {
  let probe = "";
  pino({ ...ecs, base: {} }, { write: (line: string) => (probe = line) }).info("");
  const fields = JSON.parse(probe) as Record<string, unknown>;
  let statics = "";
  for (const [key, value] of Object.entries(fields)) {
    if (key === "log.level" || key === "@timestamp" || key === "message") continue;
    statics += `,${JSON.stringify(key)}:${JSON.stringify(value)}`;
  }
  const names = {} as Record<keyof AccessLine, string>;
  for (const key of Object.keys(JSON_NAMES) as (keyof AccessLine)[]) {
    names[key] = `,${JSON.stringify(key === "latencyMs" ? "event.duration" : (ECS_NAMES[key] ?? key))}:`;
  }
  names.requestId = `"${statics}${names.requestId}`;
  return {
    destination,
    open: '{"log.level":"info","@timestamp":"',
    names,
    close: ',"message":"request"}\n',
    duration: (ms) => Math.round(ms * 1e6),
    identities: new WeakMap(),
  };
}

// Access lines within one millisecond share the time stamp's string.
let stampedAt = 0;
let stamp = "";

function isoTime(epochMs: number): string {
  if (epochMs !== stampedAt) {
    stampedAt = epochMs;
    stamp = new Date(epochMs).toISOString();
  }
  return stamp;
}

// The fields drawn from a small set (methods, rule names, decisions, reasons, limits, failures), quoted
// once. Bounded, so that whatever reaches it, the memory does not grow with traffic.
const QUOTED_MAX = 512;
const quotedValues = new Map<string, string>();

function quoted(value: string): string {
  let text = quotedValues.get(value);
  if (text === undefined) {
    text = JSON.stringify(value);
    if (quotedValues.size < QUOTED_MAX) quotedValues.set(value, text);
  }
  return text;
}

/**
 * Subject, client id and roles, serialised once per verified token: a cached token's Identity hands
 * every request the same roles array, and the same subject and client id strings.
 */
function identityFields(writer: AccessWriter, line: AccessLine): string {
  const { names } = writer;
  const { subject, clientId, roles } = line;
  const cached = roles === undefined ? undefined : writer.identities.get(roles);
  if (cached !== undefined && cached.subject === subject && cached.clientId === clientId) return cached.text;
  let text = "";
  if (subject !== undefined) text += names.subject + JSON.stringify(subject);
  if (clientId !== undefined) text += names.clientId + JSON.stringify(clientId);
  if (roles !== undefined) {
    text += names.roles + JSON.stringify(roles);
    writer.identities.set(roles, { subject, clientId, text });
  }
  return text;
}

/**
 * Writes the request's access line at level info: one string built from the fields, about a third of
 * what pino's generic serialisation costs per line (the free-form values, path and request id, go
 * through JSON.stringify on every line). Into a LineBatch (createLogger's default destination) the line
 * is deferred to the end of the event loop turn, its time stamp taken now. Loggers createLogger did not
 * make get the same fields through logger.info.
 */
export function writeAccessLine(logger: pino.Logger, line: AccessLine): void {
  if (!logger.isLevelEnabled("info")) return;
  const writer = accessWriters.get(logger);
  if (writer === undefined) {
    logger.info(line, "request");
    return;
  }
  const { destination } = writer;
  if (destination instanceof LineBatch) destination.defer(new PendingAccessLine(writer, line, Date.now()));
  else destination.write(renderAccessLine(writer, line, Date.now()));
}

class PendingAccessLine implements DeferredLine {
  readonly #writer: AccessWriter;
  readonly #line: AccessLine;
  readonly #time: number;

  constructor(writer: AccessWriter, line: AccessLine, time: number) {
    this.#writer = writer;
    this.#line = line;
    this.#time = time;
  }

  render(): string {
    return renderAccessLine(this.#writer, this.#line, this.#time);
  }
}

function renderAccessLine(writer: AccessWriter, line: AccessLine, time: number): string {
  const { names } = writer;
  let text = writer.open + isoTime(time) + names.requestId + JSON.stringify(line.requestId);
  text += names.method + quoted(line.method);
  if (line.path !== undefined) text += names.path + JSON.stringify(line.path);
  text += names.rule + quoted(line.rule);
  text += names.decision + quoted(line.decision);
  text += names.reason + quoted(line.reason);
  text += identityFields(writer, line);
  if (line.rateLimit !== undefined) text += names.rateLimit + quoted(line.rateLimit);
  if (line.wouldStatus !== undefined) text += names.wouldStatus + line.wouldStatus;
  if (line.explanation !== undefined) text += names.explanation + JSON.stringify(line.explanation);
  text += names.status + line.status;
  text += names.latencyMs + writer.duration(line.latencyMs);
  if (line.upstreamMs !== undefined) text += names.upstreamMs + line.upstreamMs;
  if (line.failure !== undefined) text += names.failure + quoted(line.failure);
  return text + writer.close;
}
