// The operator's settings (flags, each also a PORTCULLIS_* variable; flags win) and the fixed names it
// writes into the cluster. The names are API: changing one strands what older versions wrote.

import { createHash, randomUUID } from "node:crypto";
import { isIP } from "node:net";
import { hostname } from "node:os";
import { parseArgs } from "node:util";

/** The one server-side apply field manager. Never `kubectl...`: Flux takes over those fields. */
export const FIELD_MANAGER = "portcullis";
/** On every AccessPolicy: deletion waits until the operator has released what it added. */
export const FINALIZER = "portcullis.dev/cleanup";

/** On a Deployment or Service metadata: the AccessPolicy whose changes it carries. */
export const POLICY_ANNOTATION = "portcullis.dev/policy";
/** On a pod template: hash of the sidecar settings (a change rolls pods; a rule change does not). */
export const SIDECAR_HASH_ANNOTATION = "portcullis.dev/sidecar-hash";
/** On a Service: JSON `{"<port>/<protocol>": <original targetPort>}` for the ports we retargeted. */
export const ORIGINAL_TARGET_PORTS_ANNOTATION = "portcullis.dev/original-target-ports";
/** On the operator's ConfigMaps: the AccessPolicy it belongs to (the informer's label selector). */
export const POLICY_LABEL = "portcullis.dev/policy";
export const MANAGED_BY_LABEL = "app.kubernetes.io/managed-by";
export const MANAGED_BY = "portcullis";

export const SIDECAR_NAME = "portcullis";
export const POLICY_VOLUME = "portcullis-policy";
export const POLICY_DIR = "/etc/portcullis";
export const POLICY_KEY = "policy.yaml";
/** Container port names are IANA service names: at most 15 characters ("portcullis-admin" is 16). */
export const LISTENER_PORT_NAME = "portcullis";
export const ADMIN_PORT_NAME = "portcullis-adm";
/** The sidecar's admin path the app container's preStop hook calls (proxy/admin.ts PRESTOP_PATH). */
export const PRESTOP_PATH = "/prestop";

export const SIDECAR_MODES = ["auto", "native", "container"] as const;
export type SidecarMode = (typeof SIDECAR_MODES)[number];
export const SIDECAR_LOG_LEVELS = ["debug", "info", "warn", "error"] as const;
export type SidecarLogLevel = (typeof SIDECAR_LOG_LEVELS)[number];
export const LOG_LEVELS = ["trace", "debug", "info", "warn", "error", "fatal", "silent"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
export const LOG_FORMATS = ["json", "ecs"] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

export interface ResourceQuantities {
  requests: Record<string, string>;
  limits: Record<string, string>;
}

/**
 * The sidecars' Redis URL: the value itself, or a key of a Secret in each app namespace (the URL may
 * hold a password, which then never appears in a pod spec; a namespace without the Secret runs its
 * sidecars on local buckets).
 */
export type SidecarRedisUrl = { url: string } | { secret: { name: string; key: string } };

export interface OperatorConfig {
  /** The sidecar image, unless a policy sets spec.sidecar.image. */
  proxyImage: string;
  /** auto: native sidecar (init container, restartPolicy Always) on Kubernetes >= 1.29, else a container. */
  sidecarMode: SidecarMode;
  /** Defaults per resource name; a policy's spec.sidecar.resources overrides them key by key. */
  sidecarResources: ResourceQuantities;
  /** runAsUser of the sidecar (runAsNonRoot needs a numeric user when the image names none). */
  sidecarUser: number;
  /** PORTCULLIS_LOG_LEVEL of the sidecar, unless a policy sets spec.sidecar.logLevel. */
  sidecarLogLevel: SidecarLogLevel;
  /** The sidecar drains for terminationGracePeriodSeconds minus this, so the kubelet never kills it mid-drain. */
  drainMarginSeconds: number;
  /** PORTCULLIS_REDIS_URL of the sidecar: where `store: redis` rate limits are shared. Unset: not passed. */
  sidecarRedisUrl?: SidecarRedisUrl;
  /** Namespaces to watch; empty: all. */
  namespaces: string[];
  /** /healthz, /readyz, /metrics of the operator. */
  admin: { host: string; port: number };
  leaderElection: {
    enabled: boolean;
    leaseName: string;
    leaseNamespace: string;
    /** Unique per replica: the Lease's holderIdentity. */
    identity: string;
    leaseDurationSeconds: number;
  };
  /** Reconciles running at once (distinct keys). */
  workers: number;
  logLevel: LogLevel;
  logFormat: LogFormat;
}

export const DEFAULT_PROXY_IMAGE = "ghcr.io/portcullis-dev/portcullis:0.1.0";
export const DEFAULT_SIDECAR_RESOURCES: ResourceQuantities = {
  requests: { cpu: "50m", memory: "64Mi" },
  limits: { memory: "128Mi" },
};
/** 65532: the distroless `nonroot` user. */
export const DEFAULT_SIDECAR_USER = 65532;
export const DEFAULT_DRAIN_MARGIN_SECONDS = 5;
export const DEFAULT_LEASE_NAME = "portcullis-operator";
export const DEFAULT_LEASE_NAMESPACE = "portcullis-system";

export const USAGE = `usage: portcullis-operator [options]

  --proxy-image <ref>            sidecar image (default ${DEFAULT_PROXY_IMAGE})      env PORTCULLIS_PROXY_IMAGE
  --sidecar-mode <mode>          auto|native|container (default auto: native on >= 1.29)
                                                                             env PORTCULLIS_SIDECAR_MODE
  --sidecar-requests <list>      e.g. cpu=50m,memory=64Mi (default)         env PORTCULLIS_SIDECAR_REQUESTS
  --sidecar-limits <list>        e.g. memory=128Mi (default)                env PORTCULLIS_SIDECAR_LIMITS
  --sidecar-user <uid>           sidecar runAsUser (default ${DEFAULT_SIDECAR_USER})         env PORTCULLIS_SIDECAR_USER
  --sidecar-log-level <level>    debug|info|warn|error (default info)       env PORTCULLIS_SIDECAR_LOG_LEVEL
  --drain-margin-seconds <n>     drain = grace period - n (default ${DEFAULT_DRAIN_MARGIN_SECONDS})       env PORTCULLIS_DRAIN_MARGIN_SECONDS
  --sidecar-redis-url <url>      redis[s]://host:port for store: redis rate limits (default none)
                                                                             env PORTCULLIS_SIDECAR_REDIS_URL
  --sidecar-redis-url-secret <secret>/<key>
                                 the same URL from a Secret in each app namespace (default none)
                                                                             env PORTCULLIS_SIDECAR_REDIS_URL_SECRET
  --namespaces <list>            namespaces to watch, comma-separated (default all)
                                                                             env PORTCULLIS_NAMESPACES
  --admin <host:port>            /healthz /readyz /metrics (default 0.0.0.0:8081) env PORTCULLIS_ADMIN
  --leader-elect <bool>          true|false (default true)                  env PORTCULLIS_LEADER_ELECT
  --lease-name <name>            (default ${DEFAULT_LEASE_NAME})            env PORTCULLIS_LEASE_NAME
  --lease-namespace <ns>         (default $POD_NAMESPACE, else ${DEFAULT_LEASE_NAMESPACE})
                                                                             env PORTCULLIS_LEASE_NAMESPACE
  --identity <id>                lease holder identity (default <hostname>_<random>)
                                                                             env PORTCULLIS_IDENTITY
  --lease-duration-seconds <n>   (default 15)                               env PORTCULLIS_LEASE_DURATION_SECONDS
  --workers <n>                  concurrent reconciles (default 4)          env PORTCULLIS_WORKERS
  --log-level <level>            trace|debug|info|warn|error|fatal|silent (default info)
                                                                             env PORTCULLIS_LOG_LEVEL
  --log-format json|ecs          (default json)                             env PORTCULLIS_LOG_FORMAT
  -h, --help                     show this help
`;

const OPTIONS = {
  "proxy-image": "PORTCULLIS_PROXY_IMAGE",
  "sidecar-mode": "PORTCULLIS_SIDECAR_MODE",
  "sidecar-requests": "PORTCULLIS_SIDECAR_REQUESTS",
  "sidecar-limits": "PORTCULLIS_SIDECAR_LIMITS",
  "sidecar-user": "PORTCULLIS_SIDECAR_USER",
  "sidecar-log-level": "PORTCULLIS_SIDECAR_LOG_LEVEL",
  "drain-margin-seconds": "PORTCULLIS_DRAIN_MARGIN_SECONDS",
  "sidecar-redis-url": "PORTCULLIS_SIDECAR_REDIS_URL",
  "sidecar-redis-url-secret": "PORTCULLIS_SIDECAR_REDIS_URL_SECRET",
  namespaces: "PORTCULLIS_NAMESPACES",
  admin: "PORTCULLIS_ADMIN",
  "leader-elect": "PORTCULLIS_LEADER_ELECT",
  "lease-name": "PORTCULLIS_LEASE_NAME",
  "lease-namespace": "PORTCULLIS_LEASE_NAMESPACE",
  identity: "PORTCULLIS_IDENTITY",
  "lease-duration-seconds": "PORTCULLIS_LEASE_DURATION_SECONDS",
  workers: "PORTCULLIS_WORKERS",
  "log-level": "PORTCULLIS_LOG_LEVEL",
  "log-format": "PORTCULLIS_LOG_FORMAT",
} as const;
type OptionName = keyof typeof OPTIONS;

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;
/** A Secret's data key (Kubernetes' IsConfigMapKey). */
const SECRET_KEY = /^[-._a-zA-Z0-9]{1,253}$/;
const QUANTITY = /^[+]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[numkMGTPE])?$/;
const RESOURCE_NAME = /^([a-z0-9.-]+\/)?[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$/;

/** `--help` is neither a config nor an error: the caller prints `help` and exits 0. */
export function readOperatorConfig(
  argv: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
): OperatorConfig | { error: string } | { help: string } {
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
    const fromEnv = env[OPTIONS[name]];
    return fromEnv === undefined || fromEnv === "" ? undefined : fromEnv;
  };
  const source = (name: OptionName) => (typeof values[name] === "string" ? `--${name}` : OPTIONS[name]);
  const fail = (name: OptionName, message: string) => ({ error: `${source(name)}: ${message}` });

  const config: OperatorConfig = {
    proxyImage: DEFAULT_PROXY_IMAGE,
    sidecarMode: "auto",
    sidecarResources: structuredClone(DEFAULT_SIDECAR_RESOURCES),
    sidecarUser: DEFAULT_SIDECAR_USER,
    sidecarLogLevel: "info",
    drainMarginSeconds: DEFAULT_DRAIN_MARGIN_SECONDS,
    namespaces: [],
    admin: { host: "0.0.0.0", port: 8081 },
    leaderElection: {
      enabled: true,
      leaseName: DEFAULT_LEASE_NAME,
      leaseNamespace: env.POD_NAMESPACE || DEFAULT_LEASE_NAMESPACE,
      identity: `${hostname()}_${randomUUID().slice(0, 8)}`,
      leaseDurationSeconds: 15,
    },
    workers: 4,
    logLevel: "info",
    logFormat: "json",
  };

  const image = raw("proxy-image");
  if (image !== undefined) {
    if (!/^[^\s]{1,512}$/.test(image)) return fail("proxy-image", `not an image reference: ${quote(image)}`);
    config.proxyImage = image;
  }

  const mode = raw("sidecar-mode");
  if (mode !== undefined) {
    if (!isOneOf(SIDECAR_MODES, mode)) return fail("sidecar-mode", expected(SIDECAR_MODES, mode));
    config.sidecarMode = mode;
  }

  for (const [name, key] of [
    ["sidecar-requests", "requests"],
    ["sidecar-limits", "limits"],
  ] as const) {
    const text = raw(name);
    if (text === undefined) continue;
    const list = parseQuantities(text);
    if ("error" in list) return fail(name, list.error);
    config.sidecarResources[key] = list.quantities;
  }

  const user = raw("sidecar-user");
  if (user !== undefined) {
    const uid = parseInteger(user, 1, 2_147_483_647);
    if (uid === undefined)
      return fail("sidecar-user", `expected a non-root uid (1-2147483647), got ${quote(user)}`);
    config.sidecarUser = uid;
  }

  const sidecarLevel = raw("sidecar-log-level");
  if (sidecarLevel !== undefined) {
    if (!isOneOf(SIDECAR_LOG_LEVELS, sidecarLevel))
      return fail("sidecar-log-level", expected(SIDECAR_LOG_LEVELS, sidecarLevel));
    config.sidecarLogLevel = sidecarLevel;
  }

  const margin = raw("drain-margin-seconds");
  if (margin !== undefined) {
    const seconds = parseInteger(margin, 0, 3600);
    if (seconds === undefined)
      return fail("drain-margin-seconds", `expected 0-3600 seconds, got ${quote(margin)}`);
    config.drainMarginSeconds = seconds;
  }

  const redisUrl = raw("sidecar-redis-url");
  if (redisUrl !== undefined) {
    // Never quoted back: the URL may carry a password.
    if (!isRedisUrl(redisUrl)) {
      return fail("sidecar-redis-url", "expected redis://<host>:<port>[/<db>] or rediss://...");
    }
    config.sidecarRedisUrl = { url: redisUrl };
  }
  const redisSecret = raw("sidecar-redis-url-secret");
  if (redisSecret !== undefined) {
    const [name = "", key = "", ...rest] = redisSecret.split("/");
    if (rest.length > 0 || !DNS_SUBDOMAIN.test(name) || !SECRET_KEY.test(key)) {
      return fail("sidecar-redis-url-secret", `expected <secret>/<key>, got ${quote(redisSecret)}`);
    }
    if (redisUrl !== undefined) {
      return fail(
        "sidecar-redis-url-secret",
        "give --sidecar-redis-url or --sidecar-redis-url-secret, not both",
      );
    }
    config.sidecarRedisUrl = { secret: { name, key } };
  }

  const namespaces = raw("namespaces");
  if (namespaces !== undefined) {
    const list = splitList(namespaces);
    const bad = list.find((ns) => !DNS_LABEL.test(ns));
    if (bad !== undefined) return fail("namespaces", `${quote(bad)} is not a namespace name`);
    config.namespaces = [...new Set(list)].sort();
  }

  const admin = raw("admin");
  if (admin !== undefined) {
    const address = parseHostPort(admin);
    if ("error" in address) return fail("admin", address.error);
    config.admin = address;
  }

  const elect = raw("leader-elect");
  if (elect !== undefined) {
    if (elect !== "true" && elect !== "false")
      return fail("leader-elect", `expected true or false, got ${quote(elect)}`);
    config.leaderElection.enabled = elect === "true";
  }
  for (const [name, key] of [
    ["lease-name", "leaseName"],
    ["lease-namespace", "leaseNamespace"],
  ] as const) {
    const text = raw(name);
    if (text === undefined) continue;
    const pattern = key === "leaseName" ? DNS_SUBDOMAIN : DNS_LABEL;
    if (!pattern.test(text)) return fail(name, `${quote(text)} is not a valid name`);
    config.leaderElection[key] = text;
  }
  const identity = raw("identity");
  if (identity !== undefined) {
    if (identity.length > 253 || /\s/.test(identity))
      return fail("identity", `not a usable identity: ${quote(identity)}`);
    config.leaderElection.identity = identity;
  }
  const lease = raw("lease-duration-seconds");
  if (lease !== undefined) {
    const seconds = parseInteger(lease, 2, 3600);
    if (seconds === undefined)
      return fail("lease-duration-seconds", `expected 2-3600 seconds, got ${quote(lease)}`);
    config.leaderElection.leaseDurationSeconds = seconds;
  }

  const workers = raw("workers");
  if (workers !== undefined) {
    const count = parseInteger(workers, 1, 256);
    if (count === undefined) return fail("workers", `expected 1-256, got ${quote(workers)}`);
    config.workers = count;
  }

  const level = raw("log-level");
  if (level !== undefined) {
    if (!isOneOf(LOG_LEVELS, level)) return fail("log-level", expected(LOG_LEVELS, level));
    config.logLevel = level;
  }
  const format = raw("log-format");
  if (format !== undefined) {
    if (!isOneOf(LOG_FORMATS, format)) return fail("log-format", expected(LOG_FORMATS, format));
    config.logFormat = format;
  }
  return config;
}

/** What the proxy's --redis-url accepts (proxy/config.ts; the operator does not import the proxy). */
export function isRedisUrl(text: string): boolean {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return false;
  }
  return (
    (url.protocol === "redis:" || url.protocol === "rediss:") &&
    url.hostname !== "" &&
    /^(\/\d{0,5})?$/.test(url.pathname)
  );
}

/** `cpu=50m,memory=64Mi` -> `{ cpu: "50m", memory: "64Mi" }`; an empty list clears the defaults. */
export function parseQuantities(text: string): { quantities: Record<string, string> } | { error: string } {
  const quantities: Record<string, string> = {};
  for (const item of splitList(text)) {
    const eq = item.indexOf("=");
    const name = item.slice(0, eq).trim();
    const value = item.slice(eq + 1).trim();
    if (eq < 0 || !RESOURCE_NAME.test(name) || !QUANTITY.test(value)) {
      return { error: `expected <resource>=<quantity>[,...] (e.g. cpu=50m,memory=64Mi), got ${quote(item)}` };
    }
    quantities[name] = value;
  }
  return { quantities: Object.fromEntries(Object.entries(quantities).sort(([a], [b]) => compare(a, b))) };
}

/** `host:port`, `[v6]:port`, or a bare port (all interfaces). */
export function parseHostPort(text: string): { host: string; port: number } | { error: string } {
  const bare = /^\d{1,5}$/.test(text);
  const match = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(bare ? `:${text}` : text);
  if (!match) return { error: `expected <host>:<port>, got ${quote(text)}` };
  const [, v6, name, portText] = match;
  const port = Number(portText);
  if (port > 65535) return { error: `port ${port} is out of range (0-65535)` };
  if (v6 !== undefined) {
    if (isIP(v6) !== 6) return { error: `${quote(v6)} is not an IPv6 address` };
    return { host: v6, port };
  }
  const host = name === undefined || name === "" ? "0.0.0.0" : name;
  if (isIP(host) === 0 && !/^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$/.test(host)) {
    return { error: `${quote(host)} is not a host name or IP address` };
  }
  return { host, port };
}

/** Code-point order: the same on every machine, unlike localeCompare. */
export const compare = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

function splitList(text: string): string[] {
  return text
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
}

function parseInteger(text: string, min: number, max: number): number | undefined {
  if (!/^\d{1,10}$/.test(text.trim())) return undefined;
  const n = Number(text.trim());
  return n >= min && n <= max ? n : undefined;
}

function isOneOf<T extends string>(choices: readonly T[], value: string): value is T {
  return (choices as readonly string[]).includes(value);
}

const quote = (s: string) => JSON.stringify(s.length > 80 ? `${s.slice(0, 77)}...` : s);
const expected = (choices: readonly string[], got: string) =>
  `expected one of ${choices.join(", ")}, got ${quote(got)}`;

/** The ConfigMap holding a policy's document: `portcullis-<policy>`, shortened with a hash past 253 chars. */
export function configMapName(policyName: string): string {
  return prefixedName(policyName);
}

/** The NetworkPolicy fencing a protected Deployment's pods (spec.networkPolicy). */
export function networkPolicyName(deploymentName: string): string {
  return prefixedName(deploymentName);
}

/** `portcullis-<name>`, cut to an object name's 253 characters with a digest when longer. */
function prefixedName(policyName: string): string {
  const name = `portcullis-${policyName}`;
  if (name.length <= 253) return name;
  const digest = createHash("sha256").update(policyName).digest("hex").slice(0, 10);
  return `${name.slice(0, 242).replace(/[-.]+$/, "")}-${digest}`;
}
