// The public listener. createProxyServer wires the request path (pipeline.ts), upgrades (websocket.ts)
// and the hardening that belongs to the socket layer; listening and draining are the caller's.

import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import type pino from "pino";
import { type AssertionSigner, createAssertionSigner } from "./assertion.ts";
import { createUpstreamPool } from "./forward.ts";
import { httpModule } from "./http-module.ts";
import {
  completeExchange,
  handleRequest,
  newExchange,
  newRequestId,
  type ProxyContext,
  type RequestMetrics,
} from "./pipeline.ts";
import { PROBLEMS, problemBody, writeProblemToSocket } from "./problem.ts";
import { RateLimiter } from "./rate-limit.ts";
import type { ProxyRuntime } from "./runtime.ts";
import { handleUpgrade } from "./websocket.ts";

const { createServer, STATUS_CODES } = httpModule;

export interface ProxyServerOptions {
  /** Read once at the start of every request. */
  current: () => ProxyRuntime;
  /** The app, on loopback, e.g. http://127.0.0.1:8000. */
  upstream: URL;
  logger: pino.Logger;
  metrics?: RequestMetrics;
  /** Upstream connections. Default: DEFAULT_UPSTREAM_CONNECTIONS (forward.ts). */
  upstreamConnections?: number;
  /** The process's limiter, kept across policy reloads. Default: local buckets of this server's own. */
  rateLimiter?: RateLimiter;
  /**
   * Signs the identity assertion when a policy asks for one. Default: a signer of this server's own,
   * whose public key nobody serves: pass the one whose `jwks` the admin listener publishes.
   */
  assertionSigner?: AssertionSigner;
}

export interface ProxyServer {
  server: Server;
  /** Closes keep-alive connections that have no request in progress (for draining). */
  closeIdle(): void;
  /**
   * From now on every response closes its connection (`Connection: close`), so keep-alive clients
   * reconnect, and reach pods that are not terminating.
   */
  endKeepAlive(): void;
  /** HTTP requests received and not yet answered. */
  inFlight(): number;
}

// Above the idle timeouts of common load balancers and ingress controllers (60 s), so the proxy never
// closes a connection the balancer is about to reuse.
const KEEP_ALIVE_TIMEOUT_MS = 65_000;
const HEADERS_TIMEOUT_MS = 20_000;
// A whole request, body included; large uploads on slow links are the bound.
const REQUEST_TIMEOUT_MS = 300_000;

export function createProxyServer(options: ProxyServerOptions): ProxyServer {
  const pool = createUpstreamPool(
    options.upstream,
    options.upstreamConnections === undefined ? {} : { connections: options.upstreamConnections },
  );
  const ctx: ProxyContext = {
    current: options.current,
    pool,
    upstream: options.upstream,
    logger: options.logger,
    metrics: options.metrics,
    rateLimiter: options.rateLimiter ?? new RateLimiter(),
    assertionSigner: options.assertionSigner ?? createAssertionSigner(),
    inFlight: 0,
  };
  const server = createServer(
    {
      headersTimeout: HEADERS_TIMEOUT_MS,
      requestTimeout: REQUEST_TIMEOUT_MS,
      keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
      noDelay: true,
      // Node's defaults, stated because they are part of the contract: 16 KiB of headers, Host required,
      // duplicate headers kept apart, the strict parser.
      requireHostHeader: true,
      joinDuplicateHeaders: false,
      insecureHTTPParser: false,
    },
    (req, res) => handle(req, res, false),
  );
  let endingKeepAlive = false;
  function handle(req: IncomingMessage, res: ServerResponse, expectsContinue: boolean): void {
    if (endingKeepAlive) res.shouldKeepAlive = false;
    handleRequest(ctx, req, res, expectsContinue);
  }
  // Without this listener Node answers 100 Continue before the request is authorised.
  server.on("checkContinue", (req, res) => handle(req, res, true));
  server.on("upgrade", (req, socket: Duplex, head: Buffer) => handleUpgrade(ctx, req, socket, head));
  // CONNECT's authority-form target is never a route of the app.
  server.on("connect", (req, socket: Duplex) => {
    socket.on("error", () => socket.destroy());
    const exchange = newExchange(newRequestId(), req.method ?? "", performance.now(), false);
    exchange.reason = "connect-method";
    writeProblemToSocket(socket, PROBLEMS.badTarget, exchange.requestId);
    completeExchange(ctx, exchange, 400, undefined);
  });
  server.on("clientError", (error: NodeJS.ErrnoException, socket: Duplex) =>
    answerClientError(ctx, error, socket),
  );
  server.on("close", () => {
    pool.close().catch(() => undefined);
  });
  return {
    server,
    closeIdle: () => server.closeIdleConnections(),
    // Idle connections are left to their next response: closing one now races a request on the wire.
    endKeepAlive: () => {
      endingKeepAlive = true;
    },
    inFlight: () => ctx.inFlight,
  };
}

/** What Node's parser refused: an HTTP answer when the socket can still take one, never a crash. */
function answerClientError(ctx: ProxyContext, error: NodeJS.ErrnoException, socket: Duplex): void {
  const response = (socket as { _httpMessage?: { headersSent?: boolean } })._httpMessage;
  if (error.code === "ECONNRESET" || !socket.writable || response?.headersSent === true) {
    socket.destroy();
    return;
  }
  const status =
    error.code === "HPE_HEADER_OVERFLOW" ? 431 : error.code === "ERR_HTTP_REQUEST_TIMEOUT" ? 408 : 400;
  const exchange = newExchange(newRequestId(), "", performance.now(), false);
  exchange.reason = error.code ?? "parse-error";
  const body = problemBody(
    { ...PROBLEMS.badRequest, status, title: STATUS_CODES[status] ?? "Bad Request" },
    exchange.requestId,
  );
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\n` +
      "Content-Type: application/problem+json\r\n" +
      `Content-Length: ${Buffer.byteLength(body)}\r\n` +
      `X-Request-Id: ${exchange.requestId}\r\n` +
      "Connection: close\r\n\r\n" +
      body,
    () => socket.destroy(),
  );
  completeExchange(ctx, exchange, status, undefined);
}
