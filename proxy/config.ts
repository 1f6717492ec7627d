// The proxy's command line: flags, each also a PORTCULLIS_* variable (flags win). Values that the
// policy supplies (listener port, admin port, log level) stay undefined here and are resolved by
// main.ts once the policy is loaded, so one policy file is enough to run the sidecar.

import { isIP } from "node:net";
import { parseArgs } from "node:util";

export const LOG_FORMATS = ["json", "ecs"] as const;
export const LOG_LEVELS = ["trace", "debug", "info", "warn", "error", "fatal", "silent"] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface HostPort {
  host: string;
  /** 0 asks the OS for a free port (tests read the bound port from the "listening" log line). */
  port: number;
}

export interface ProxyConfig {
  policyFile: string;
  /** http://<loopback>:<port>, nothing else. */
  upstream: URL;
  /** Undefined: 0.0.0.0 on the policy's spec.listener.port. */
  listen?: HostPort;
  /** Undefined: 0.0.0.0 on the policy's spec.sidecar.adminPort. */
  admin?: HostPort;
  logFormat: LogFormat;
  /** Undefined: the policy's spec.sidecar.logLevel, else info. */
  logLevel?: LogLevel;
  /** How long SIGTERM waits for in-flight requests before exiting anyway. */
  drainSeconds: number;
  /** How long the admin /prestop hook holds the app's shutdown while keep-alive clients move away. */
  preStopSeconds: number;
  /** Where `store: redis` rate limits keep their buckets; undefined: those limits use local buckets. */
  redisUrl?: string;
}

export const DEFAULT_DRAIN_SECONDS = 25;
/** Long enough for kube-proxy (or a mesh-less LB) on every node to forget a terminating pod. */
export const DEFAULT_PRESTOP_SECONDS = 5;
/** Where a policy's listener and admin ports are bound when no address is given. */
export const DEFAULT_BIND_HOST = "0.0.0.0";

export const USAGE = `usage: portcullis-proxy --policy <file> --upstream <url> [options]

  --policy <file>          AccessPolicy YAML (a mounted ConfigMap file); reloaded when it changes
                           env PORTCULLIS_POLICY
  --upstream <url>         the app on loopback: http://127.0.0.1:<port>
                           env PORTCULLIS_UPSTREAM
  --listen <host:port>     public listener (default 0.0.0.0:<spec.listener.port>)
                           env PORTCULLIS_LISTEN
  --admin <host:port>      /healthz, /readyz, /metrics (default 0.0.0.0:<spec.sidecar.adminPort>)
                           env PORTCULLIS_ADMIN
  --log-format json|ecs    access and event log format (default json)
                           env PORTCULLIS_LOG_FORMAT
  --log-level <level>      trace|debug|info|warn|error|fatal|silent (default spec.sidecar.logLevel, info)
                           env PORTCULLIS_LOG_LEVEL
  --drain-seconds <n>      on SIGTERM, wait this long for in-flight requests (default ${DEFAULT_DRAIN_SECONDS})
                           env PORTCULLIS_DRAIN_SECONDS
  --prestop-seconds <n>    GET /prestop on the admin port (the app container's preStop hook) holds this
                           long while keep-alive connections are closed (default ${DEFAULT_PRESTOP_SECONDS})
                           env PORTCULLIS_PRESTOP_SECONDS
  --redis-url <url>        redis[s]://[user:password@]host:port[/db] for \`store: redis\` rate limits
                           (default none: those limits count per sidecar)
                           env PORTCULLIS_REDIS_URL
  -h, --help               show this help
`;

const OPTIONS = {
  policy: { type: "string", env: "PORTCULLIS_POLICY" },
  upstream: { type: "string", env: "PORTCULLIS_UPSTREAM" },
  listen: { type: "string", env: "PORTCULLIS_LISTEN" },
  admin: { type: "string", env: "PORTCULLIS_ADMIN" },
  "log-format": { type: "string", env: "PORTCULLIS_LOG_FORMAT" },
  "log-level": { type: "string", env: "PORTCULLIS_LOG_LEVEL" },
  "drain-seconds": { type: "string", env: "PORTCULLIS_DRAIN_SECONDS" },
  "prestop-seconds": { type: "string", env: "PORTCULLIS_PRESTOP_SECONDS" },
  "redis-url": { type: "string", env: "PORTCULLIS_REDIS_URL" },
} as const;
type OptionName = keyof typeof OPTIONS;

/** `--help` is neither a config nor an error: the caller prints `help` and exits 0. */
export function readProxyConfig(
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
): ProxyConfig | { error: string } | { help: string } {
  let values: Partial<Record<OptionName | "help", string | boolean>>;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      options: {
        ...Object.fromEntries(Object.keys(OPTIONS).map((name) => [name, { type: "string" as const }])),
        help: { type: "boolean", short: "h" },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    return { error: e instanceof Error ? e.message : String(e) };
  }
  if (values.help === true) return { help: USAGE };

  const raw = (name: OptionName): string | undefined => {
    const flag = values[name];
    if (typeof flag === "string") return flag;
    const fromEnv = env[OPTIONS[name].env];
    return fromEnv === undefined || fromEnv === "" ? undefined : fromEnv;
  };
  const source = (name: OptionName) =>
    typeof values[name] === "string" ? `--${name}` : `${OPTIONS[name].env}`;

  const policyFile = raw("policy");
  if (policyFile === undefined) return { error: "--policy <file> (or PORTCULLIS_POLICY) is required" };

  const upstreamText = raw("upstream");
  if (upstreamText === undefined) {
    return { error: "--upstream <url> (or PORTCULLIS_UPSTREAM) is required, e.g. http://127.0.0.1:8000" };
  }
  const upstream = parseUpstream(upstreamText);
  if ("error" in upstream) return { error: `${source("upstream")}: ${upstream.error}` };

  const config: ProxyConfig = {
    policyFile,
    upstream: upstream.url,
    logFormat: "json",
    drainSeconds: DEFAULT_DRAIN_SECONDS,
    preStopSeconds: DEFAULT_PRESTOP_SECONDS,
  };

  for (const name of ["listen", "admin"] as const) {
    const text = raw(name);
    if (text === undefined) continue;
    const address = parseHostPort(text);
    if ("error" in address) return { error: `${source(name)}: ${address.error}` };
    config[name] = address;
  }

  const format = raw("log-format");
  if (format !== undefined) {
    if (!isOneOf(LOG_FORMATS, format)) {
      return { error: `${source("log-format")}: expected json or ecs, got ${JSON.stringify(format)}` };
    }
    config.logFormat = format;
  }

  const level = raw("log-level");
  if (level !== undefined) {
    if (!isOneOf(LOG_LEVELS, level)) {
      return {
        error: `${source("log-level")}: expected one of ${LOG_LEVELS.join(", ")}, got ${JSON.stringify(level)}`,
      };
    }
    config.logLevel = level;
  }

  for (const [flag, key] of [
    ["drain-seconds", "drainSeconds"],
    ["prestop-seconds", "preStopSeconds"],
  ] as const) {
    const text = raw(flag);
    if (text === undefined) continue;
    const seconds = Number(text);
    if (!/^\d+(\.\d+)?$/.test(text.trim()) || !Number.isFinite(seconds) || seconds > 3600) {
      return {
        error: `${source(flag)}: expected a number of seconds from 0 to 3600, got ${JSON.stringify(text)}`,
      };
    }
    config[key] = seconds;
  }

  const redis = raw("redis-url");
  if (redis !== undefined) {
    const problem = redisUrlProblem(redis);
    if (problem !== undefined) return { error: `${source("redis-url")}: ${problem}` };
    config.redisUrl = redis;
  }
  return config;
}

/**
 * Why `text` is not a Redis URL node-redis can use, or undefined. Never quotes the text: it may carry
 * a password.
 */
export function redisUrlProblem(text: string): string | undefined {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return "not a URL; expected redis://<host>:<port> or rediss://<host>:<port>";
  }
  if (url.protocol !== "redis:" && url.protocol !== "rediss:") {
    return `expected redis:// or rediss://, got ${url.protocol}//`;
  }
  if (url.hostname === "") return "the URL names no host";
  if (!/^(\/\d{0,5})?$/.test(url.pathname)) return "the path, when given, is a database number (/0)";
  return undefined;
}

/** The URL without credentials, for log lines. */
export function redactedUrl(text: string): string {
  const url = new URL(text);
  url.username = "";
  url.password = "";
  return url.href;
}

function isOneOf<T extends string>(choices: readonly T[], value: string): value is T {
  return (choices as readonly string[]).includes(value);
}

/** `host:port`, `[v6]:port`, or a bare port (all interfaces). */
export function parseHostPort(text: string): HostPort | { error: string } {
  const bare = /^\d{1,5}$/.test(text);
  const match = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(bare ? `:${text}` : text);
  if (!match) return { error: `expected <host>:<port>, got ${JSON.stringify(text)}` };
  const [, v6, name, portText] = match;
  const port = Number(portText);
  if (port > 65535) return { error: `port ${port} is out of range (0-65535)` };
  if (v6 !== undefined) {
    if (isIP(v6) !== 6) return { error: `${JSON.stringify(v6)} is not an IPv6 address` };
    return { host: v6, port };
  }
  const host = name === undefined || name === "" ? DEFAULT_BIND_HOST : name;
  if (isIP(host) === 0 && !/^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$/.test(host)) {
    return { error: `${JSON.stringify(host)} is not a host name or IP address` };
  }
  return { host, port };
}

// The sidecar forwards to its own pod only: anything off loopback would make it an open relay
// and put the identity headers on the network.
export function parseUpstream(text: string): { url: URL } | { error: string } {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return { error: `${JSON.stringify(text)} is not a URL; expected http://127.0.0.1:<port>` };
  }
  if (url.protocol !== "http:") {
    return { error: `the upstream must be plain http on loopback (got ${url.protocol}//)` };
  }
  if (url.username !== "" || url.password !== "")
    return { error: "the upstream URL must not carry credentials" };
  if (!isLoopback(url.hostname)) {
    return {
      error: `the upstream must be on loopback (127.0.0.0/8, [::1] or localhost), got ${JSON.stringify(url.hostname)}`,
    };
  }
  // URL drops a default :80, so look for the port in the text itself.
  if (!/^http:\/\/(\[[^\]]*\]|[^/?#@]*):\d+\/?$/i.test(text.trim())) {
    return { error: "the upstream URL is an origin with an explicit port, e.g. http://127.0.0.1:8000" };
  }
  return { url };
}

function isLoopback(hostname: string): boolean {
  if (hostname === "localhost" || hostname === "[::1]") return true;
  return isIP(hostname) === 4 && hostname.startsWith("127.");
}
