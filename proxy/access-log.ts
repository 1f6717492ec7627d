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

export function createLogger(options: LoggerOptions): pino.Logger {
  const destination = options.destination ?? pino.destination({ dest: 1, sync: false });
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
          // pino runs this before its serializers: reduce the error here, under ECS's name.
          return err === undefined ? rest : { ...rest, error: serializeError(err) };
        },
      },
    },
    destination,
  );
}

/** `{ type, message, code }` of anything thrown; never the stack. */
export function serializeError(value: unknown): { type: string; message: string; code?: string } {
  if (value instanceof Error) {
    const code = (value as NodeJS.ErrnoException).code;
    return { type: value.name, message: value.message, ...(typeof code === "string" ? { code } : {}) };
  }
  return { type: typeof value, message: String(value) };
}
