#!/usr/bin/env node
// `portcullis-proxy`: flags -> logger -> metrics -> policy -> listeners, and the SIGTERM drain.
//
// Exit codes: 0 after a clean drain; 1 when the first policy load fails, a listener cannot bind, or
// the drain deadline passed with requests still in flight (they are cut: that is worth a non-zero
// exit); 2 on a usage error. A second SIGTERM/SIGINT during the drain exits 1 at once.
//
// Readiness: /readyz answers 200 once every issuer's keys have loaded for the first time, until the
// drain begins. After that, a key set going cold (a reload adding an unreachable issuer) is reported in
// the body and in portcullis_jwks_age_seconds but does not flip readiness: every replica would flip at
// once and Kubernetes would drop all endpoints, turning one issuer's trouble into a full outage.
//
// The app's reachability is part of readiness (see upstream-probe.ts); liveness (/healthz) is not, so
// the kubelet never restarts the sidecar because the app is slow to start.
//
// Rate limits and the identity assertion's signing key belong to the process, not to a policy: one
// RateLimiter (buckets survive hot reloads; `store: redis` limits share Redis when --redis-url is set and
// fall back to local buckets while it is unreachable) and one Ed25519 key, generated here and published
// on the admin listener's /jwks.json.
//
// Errors that escape every handler are logged (type and message, never a stack) and counted; the
// process keeps serving. Bad input is handled on the request path; what escapes is a bug in one
// callback, and killing every in-flight request of the pod for it would make any such bug a DoS.

import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import type pino from "pino";
import type { CompiledPolicy } from "../policy/compile.ts";
import { formatProblem, PolicyError } from "../policy/problems.ts";
import { createLogger, serializeError } from "./access-log.ts";
import { createAdminServer, type Readiness } from "./admin.ts";
import { createAssertionSigner } from "./assertion.ts";
import { KeySetRegistry } from "./authn/key-set.ts";
import {
  DEFAULT_BIND_HOST,
  type HostPort,
  type ProxyConfig,
  readProxyConfig,
  redactedUrl,
} from "./config.ts";
import { createProxyMetrics } from "./metrics.ts";
import { openPolicySource } from "./policy-source.ts";
import { RateLimiter } from "./rate-limit.ts";
import type { RedisBucketStore } from "./redis-buckets.ts";
import { createProxyServer } from "./server.ts";
import { probeUpstream } from "./upstream-probe.ts";

const DRAIN_POLL_MS = 50;
/** While Redis is unreachable every limited request falls back: say so at most this often. */
const FALLBACK_LOG_INTERVAL_MS = 60_000;

export async function main(argv: readonly string[], env: NodeJS.ProcessEnv): Promise<void> {
  const config = readProxyConfig(argv, env);
  if ("help" in config) {
    process.stdout.write(config.help);
    return;
  }
  if ("error" in config) {
    process.stderr.write(`portcullis-proxy: ${config.error}\n(see portcullis-proxy --help)\n`);
    process.exitCode = 2;
    return;
  }
  await run(config);
}

async function run(config: ProxyConfig): Promise<void> {
  const logger = createLogger({ format: config.logFormat, level: config.logLevel ?? "info" });
  const exit = (code: number) => {
    // Asynchronous stdout: flush the last lines first, but never let a stuck pipe keep us alive.
    setTimeout(() => process.exit(code), 2_000);
    logger.flush(() => process.exit(code));
  };
  const metrics = createProxyMetrics();
  let draining = false;

  process.on("uncaughtException", (error) => {
    metrics.uncaughtError("exception");
    logger.error({ err: serializeError(error) }, "uncaught exception (kept serving)");
  });
  process.on("unhandledRejection", (reason) => {
    metrics.uncaughtError("rejection");
    logger.error({ err: serializeError(reason) }, "unhandled promise rejection (kept serving)");
  });

  const keySets = new KeySetRegistry({
    onFetch: (issuer, outcome, detail) => {
      metrics.jwksFetch(issuer, outcome, detail);
      if (outcome === "error") logger.warn({ issuer, detail }, "JWKS fetch failed");
    },
  });
  metrics.observeKeySetAges(() => keySets.keySets().map((set) => [set.issuer, set.ageSeconds()] as const));

  // Connects while the policy loads; serving starts on local buckets if Redis does not answer soon.
  // The Redis client is loaded only when asked for: it adds ~15 MiB of private memory to every sidecar.
  const { redisUrl } = config;
  const redis =
    redisUrl === undefined
      ? undefined
      : import("./redis-buckets.ts").then(({ connectRedisBuckets }) => connectRedisBuckets(redisUrl));
  const warnUnsharedLimits = unsharedLimitsWarning(logger, redisUrl !== undefined);

  let listenPort: number | undefined;
  let source: Awaited<ReturnType<typeof openPolicySource>>;
  try {
    source = await openPolicySource({
      file: config.policyFile,
      logger,
      metrics,
      keySets,
      onPolicy: (policy) => {
        // The policy's own log level applies unless a flag or variable set one.
        if (config.logLevel === undefined) logger.level = policy.spec.sidecar.logLevel ?? "info";
        if (
          listenPort !== undefined &&
          config.listen === undefined &&
          policy.spec.listener.port !== listenPort
        ) {
          logger.warn(
            { listening: listenPort, policy: policy.spec.listener.port },
            "spec.listener.port changed; it takes effect when the sidecar restarts",
          );
        }
        warnUnsharedLimits(policy);
      },
    });
  } catch (error) {
    if (!(error instanceof PolicyError)) throw error;
    // The sidecar must not run without a policy: say everything that is wrong, on stderr and in the log.
    for (const problem of error.problems)
      process.stderr.write(`${config.policyFile}: ${formatProblem(problem)}\n`);
    logger.fatal({ problems: error.problems.map(formatProblem) }, "no valid policy; exiting");
    exit(1);
    return;
  }
  const spec = source.current().policy.spec;
  const listen: HostPort = config.listen ?? { host: DEFAULT_BIND_HOST, port: spec.listener.port };
  const adminAt: HostPort = config.admin ?? { host: DEFAULT_BIND_HOST, port: spec.sidecar.adminPort };

  let warmOnce = false;
  const upstream = probeUpstream(config.upstream);
  const readiness = (): Readiness => {
    if (draining) return { ready: false, reason: "draining" };
    if (!upstream.reachable())
      return { ready: false, reason: `upstream ${config.upstream.host} not accepting connections` };
    if (source.keysWarm()) return { ready: true };
    if (warmOnce) return { ready: true, note: `signing keys unavailable for ${coldIssuers().join(", ")}` };
    return { ready: false, reason: `waiting for signing keys of ${coldIssuers().join(", ")}` };
  };
  const coldIssuers = () => keySets.keySets().flatMap((set) => (set.isReady() ? [] : [set.issuer]));

  const shared = await redis;
  if (config.redisUrl !== undefined) {
    logger.info({ redis: redactedUrl(config.redisUrl) }, "store: redis rate limits share buckets in Redis");
  }
  const rateLimiter = new RateLimiter({
    ...(shared === undefined ? {} : { shared }),
    onFallback: fallbackWarning(logger),
  });
  const assertionSigner = createAssertionSigner();
  const proxy = createProxyServer({
    current: source.current,
    upstream: config.upstream,
    logger,
    metrics,
    rateLimiter,
    assertionSigner,
  });
  // The pod is terminating and Services are forgetting it: the app keeps serving while every keep-alive
  // client is told to reconnect (to other pods); then the kubelet sends the app SIGTERM, and us after it.
  let preStopping: Promise<void> | undefined;
  const preStop = () => {
    preStopping ??= (async () => {
      logger.info({ holdSeconds: config.preStopSeconds }, "pod terminating: ending keep-alive connections");
      proxy.endKeepAlive();
      // Each busy connection closes after its next response; the ones quiet all along go at the end.
      await sleep(config.preStopSeconds * 1000);
      proxy.closeIdle();
    })();
    return preStopping;
  };
  const admin = createAdminServer({
    ready: readiness,
    metrics,
    publicKeys: () => assertionSigner.jwks,
    preStop,
  });
  metrics.observeInFlight(() => proxy.inFlight());
  let bound: { listen: string; admin: string };
  try {
    bound = { listen: await listenOn(proxy.server, listen), admin: await listenOn(admin, adminAt) };
  } catch (error) {
    logger.fatal({ err: serializeError(error) }, "cannot listen");
    exit(1);
    return;
  }
  listenPort = (proxy.server.address() as AddressInfo).port;
  logger.info({ ...bound, upstream: config.upstream.origin }, "listening");

  void waitForKeys(source, () => draining).then((warm) => {
    if (!warm) return;
    warmOnce = true;
    logger.info({ ...bound, issuers: [...source.current().policy.issuers.keys()] }, "ready");
  });

  const drain = async (signal: string) => {
    if (draining) {
      logger.warn({ signal, inFlight: proxy.inFlight() }, "second signal during drain; exiting now");
      exit(1);
      return;
    }
    draining = true;
    logger.info({ signal, inFlight: proxy.inFlight(), drainSeconds: config.drainSeconds }, "draining");
    proxy.server.close();
    const deadline = Date.now() + config.drainSeconds * 1000;
    // Keep-alive connections turn idle as their last response ends: close them as they do.
    while (proxy.inFlight() > 0 && Date.now() < deadline) {
      proxy.closeIdle();
      await sleep(DRAIN_POLL_MS);
    }
    proxy.closeIdle();
    const stuck = proxy.inFlight();
    source.close();
    keySets.close();
    await closeQuietly(shared);
    admin.close();
    admin.closeAllConnections();
    if (stuck > 0) {
      logger.warn({ inFlight: stuck }, "drain deadline passed with requests in flight; exiting");
      exit(1);
    } else {
      logger.info("drained; exiting");
      exit(0);
    }
  };
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    process.on(signal, () => {
      drain(signal).catch((error: unknown) => {
        logger.error({ err: serializeError(error) }, "drain failed");
        exit(1);
      });
    });
  }
}

/** Warns once per process when a policy has `store: redis` limits and no Redis is configured. */
function unsharedLimitsWarning(
  logger: pino.Logger,
  redisConfigured: boolean,
): (policy: CompiledPolicy) => void {
  let warned = redisConfigured;
  return (policy) => {
    if (warned) return;
    const limits = policy.spec.rateLimits.filter((limit) => limit.store === "redis").map((l) => l.name);
    if (limits.length === 0) return;
    warned = true;
    logger.warn(
      { limits },
      "rate limits with store: redis, but no --redis-url (PORTCULLIS_REDIS_URL): they count per sidecar",
    );
  };
}

/** The limiter's fallback hook: one warning per interval, not one per request. */
function fallbackWarning(logger: pino.Logger): (limit: string, error: unknown) => void {
  let lastMs = Number.NEGATIVE_INFINITY;
  return (limit, error) => {
    const now = Date.now();
    if (now - lastMs < FALLBACK_LOG_INTERVAL_MS) return;
    lastMs = now;
    logger.warn(
      { limit, err: serializeError(error) },
      "Redis unreachable; store: redis rate limits count on this sidecar's local buckets meanwhile",
    );
  };
}

async function closeQuietly(store: RedisBucketStore | undefined): Promise<void> {
  await store?.close().catch(() => undefined);
}

/** Resolves true once the runtime in force has every issuer's keys; false if draining began first. */
async function waitForKeys(
  source: { keysWarm(): boolean; keysReady(): Promise<void> },
  draining: () => boolean,
): Promise<boolean> {
  // keysReady() follows the runtime of the moment; a reload meanwhile means waiting for the new one.
  while (!source.keysWarm()) {
    if (draining()) return false;
    await Promise.race([source.keysReady(), sleep(1000)]);
  }
  return !draining();
}

async function listenOn(server: Server, at: HostPort): Promise<string> {
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(at.port, at.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  return address.family === "IPv6"
    ? `[${address.address}]:${address.port}`
    : `${address.address}:${address.port}`;
}

if (import.meta.main) {
  main(process.argv.slice(2), process.env).catch((error: unknown) => {
    process.stderr.write(`portcullis-proxy: ${serializeError(error).message}\n`);
    process.exit(1);
  });
}
