// The operator's admin listener: liveness, readiness and metrics for the kubelet and Prometheus.
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import type { Registry } from "prom-client";

export interface AdminState {
  /** Every informer listed at least once. */
  synced: () => boolean;
  /** The election loop runs: this replica leads or stands by, ready to take over. */
  electing: () => boolean;
}

export interface AdminServer {
  /** The port actually bound (when 0 was asked for). */
  port: number;
  close(): Promise<void>;
}

export async function startAdminServer(
  host: string,
  port: number,
  registry: Registry,
  state: AdminState,
): Promise<AdminServer> {
  const server = createServer((req, res) => {
    const path = (req.url ?? "/").split("?", 1)[0];
    const reply = (status: number, body: string, type = "text/plain; charset=utf-8") => {
      res.writeHead(status, { "content-type": type, "cache-control": "no-store" });
      res.end(req.method === "HEAD" ? undefined : body);
    };
    if (req.method !== "GET" && req.method !== "HEAD") return reply(405, "method not allowed\n");
    switch (path) {
      case "/healthz":
        return reply(200, "ok\n");
      case "/readyz": {
        const synced = state.synced();
        const electing = state.electing();
        if (synced && electing) return reply(200, "ok\n");
        return reply(503, `${synced ? "" : "caches not synced\n"}${electing ? "" : "not electing\n"}`);
      }
      case "/metrics":
        registry.metrics().then(
          (text) => reply(200, text, registry.contentType),
          () => reply(500, "metrics unavailable\n"),
        );
        return;
      default:
        return reply(404, "not found\n");
    }
  });
  await listen(server, host, port);
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function listen(server: Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
}
