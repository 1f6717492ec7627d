// The proxy's one logger: access lines and events, as pino JSON or as ECS (Elastic Common Schema).
// Credentials are redacted by path in case a caller ever logs raw headers, and errors are reduced to
// type and message: no stack trace ever reaches a log line.

import { ecsFormat } from "@elastic/ecs-pino-format";
import pino from "pino";
import type { LogFormat, LogLevel } from "./config.ts";

export interface LoggerOptions {
  format: LogFormat;
  level: LogLevel;
  /** Default: stdout, written asynchronously (flush with `logger.flush()` before exiting). */
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
const BATCH_BYTES = 8 * 1024;
const FLUSH_MS = 250;

function stdout(): pino.DestinationStream {
  // One write(2) per access line costs more than everything else the proxy does for a request
  // (bench/proxy.ts): batch them, and flush on a short timer so a quiet sidecar's lines still appear.
  const stream = pino.destination({ dest: 1, sync: false, minLength: BATCH_BYTES, periodicFlush: FLUSH_MS });
  // A closed stdout (EPIPE) must not become an uncaught exception that is then logged to stdout.
  stream.on("error", () => undefined);
  return stream;
}

export function createLogger(options: LoggerOptions): pino.Logger {
  const destination = options.destination ?? stdout();
  const common: pino.LoggerOptions = {
    level: options.level,
    base: { service: "portcullis-proxy" },
    redact: { paths: REDACTED_PATHS, censor: "[redacted]" },
    serializers: { err: serializeError },
  };
  if (options.format === "json") {
    return pino(
      {
        ...common,
        timestamp: pino.stdTimeFunctions.isoTime,
        formatters: { level: (label) => ({ level: label }) },
      },
      destination,
    );
  }
  const ecs = ecsFormat({ apmIntegration: false, convertErr: false, serviceName: "portcullis-proxy" });
  const ecsLog = ecs.formatters?.log;
  return pino(
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
}

// The access line's fields (pipeline.ts logExchange) under their ECS names; the proxy's own
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
