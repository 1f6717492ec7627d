// The admin listener, on its own port so probes and scrapes never share the public listener's
// policy: /healthz (the process serves), /readyz (policy loaded, keys warm, not draining),
// /metrics (Prometheus text), the identity assertion's public keys when configured, and /prestop
// (the app's preStop hook: held while keep-alive clients are moved off a terminating pod).

import type { IncomingMessage, Server, ServerResponse } from "node:http";
import { httpModule } from "./http-module.ts";
import type { ProxyMetrics } from "./metrics.ts";

const { createServer } = httpModule;

/** `note`: a degradation worth showing that does not (or no longer) make the sidecar unready. */
export type Readiness = { ready: true; note?: string } | { ready: false; reason: string };

export interface AdminOptions {
  ready: () => Readiness;
  metrics: ProxyMetrics;
  /** The JWKS the app uses to check the sidecar's identity assertion; served at ASSERTION_KEYS_PATH. */
  publicKeys?: () => { keys: readonly object[] };
  /** The app container's preStop hook (PRESTOP_PATH): resolves when the app may be sent SIGTERM. */
  preStop?: () => Promise<void>;
}

export const ASSERTION_KEYS_PATH = "/jwks.json";
export const PRESTOP_PATH = "/prestop";

export function createAdminServer(options: AdminOptions): Server {
  const routes = new Map<string, (res: ServerResponse) => void | Promise<void>>([
    ["/healthz", (res) => sendJson(res, 200, { status: "ok" })],
    [
      "/readyz",
      (res) => {
        const readiness = options.ready();
        if (readiness.ready)
          sendJson(res, 200, { status: "ready", ...(readiness.note ? { note: readiness.note } : {}) });
        else sendJson(res, 503, { status: "not ready", reason: readiness.reason });
      },
    ],
    [
      "/metrics",
      async (res) => {
        const text = await options.metrics.register.metrics();
        send(res, 200, options.metrics.register.contentType, text);
      },
    ],
  ]);
  const { publicKeys } = options;
  if (publicKeys) routes.set(ASSERTION_KEYS_PATH, (res) => sendJson(res, 200, publicKeys()));
  const { preStop } = options;
  if (preStop)
    routes.set(PRESTOP_PATH, async (res) => {
      await preStop();
      sendJson(res, 200, { status: "ok" });
    });

  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    // Probes and scrapers send no query worth reading; the path alone picks the route.
    const path = (req.url ?? "").split("?", 1)[0] ?? "";
    const route = routes.get(path);
    if (!route) return sendJson(res, 404, { status: "not found" });
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.setHeader("allow", "GET, HEAD");
      return sendJson(res, 405, { status: "method not allowed" });
    }
    Promise.resolve()
      .then(() => route(res))
      .catch(() => {
        if (!res.headersSent) sendJson(res, 500, { status: "error" });
        else res.destroy();
      });
  });
  return server;
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  send(res, status, "application/json", JSON.stringify(body));
}

function send(res: ServerResponse, status: number, contentType: string, body: string): void {
  res.writeHead(status, {
    "content-type": contentType,
    "content-length": Buffer.byteLength(body),
    "cache-control": "no-store",
  });
  res.end(res.req.method === "HEAD" ? undefined : body);
}
