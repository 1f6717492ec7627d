// Forwarding to the app over loopback: one undici Pool, requests dispatched with a handler that writes
// the response straight into the client's ServerResponse. No stream.pipeline(), no intermediate
// Readable: measured on Node 24 the dispatch handler beats Pool.stream() (see bench/proxy.ts), and
// backpressure stays explicit: a full client socket pauses the upstream socket (controller.pause) and
// undici pauses the client's request stream when the upstream socket is full.

import type { IncomingMessage, ServerResponse } from "node:http";
import { availableParallelism } from "node:os";
import { type Dispatcher, Pool } from "undici";
import { type ParsedHeaders, responseHeaders } from "./headers.ts";
import { PROBLEMS, type Problem, sendProblem } from "./problem.ts";

export interface UpstreamPoolOptions {
  /** Default: DEFAULT_UPSTREAM_CONNECTIONS. */
  connections?: number;
}

/**
 * Upstream connections, opened only as concurrency needs them. Not "2x cores": with 4 (2 cores here)
 * the pool, not the CPU, capped throughput at 32 client connections (bench/proxy.ts: 0.49x of the
 * pass-through against 0.7-0.8x with 64, the pass-through measured with the same pool). The app's own
 * concurrency limit (uvicorn --limit-concurrency) stays the place to bound load.
 */
export const DEFAULT_UPSTREAM_CONNECTIONS = Math.max(64, 8 * availableParallelism());

export function createUpstreamPool(upstream: URL, options: UpstreamPoolOptions = {}): Pool {
  return new Pool(upstream.origin, {
    connections: options.connections ?? DEFAULT_UPSTREAM_CONNECTIONS,
    pipelining: 1,
    // Below uvicorn's 5 s keep-alive, so the proxy closes an idle connection before the app does.
    keepAliveTimeout: 4_000,
    keepAliveMaxTimeout: 4_000,
    connectTimeout: 5_000,
  });
}

export interface ForwardRequest {
  method: string;
  /** Origin-form, exactly as received: rawPath + ("?" + query). */
  path: string;
  headers: string[];
  /** The client's request when it has a body to stream, else null. */
  body: IncomingMessage | null;
  headersTimeoutMs: number;
  requestId: string;
}

/** How a forwarded exchange ended, for the access log. */
export interface ForwardOutcome {
  status: number;
  /** Time to the upstream's response headers; undefined when none arrived. */
  upstreamMs: number | undefined;
  /** undefined when the response came from the app; otherwise why the proxy answered or gave up. */
  failure:
    | "upstream-refused"
    | "upstream-timeout"
    | "upstream-error"
    | "client-aborted"
    | "bad-request"
    | undefined;
}

/** Why an upstream error becomes which answer (only while no response head was sent). */
function problemFor(error: Error): { problem: Problem; failure: NonNullable<ForwardOutcome["failure"]> } {
  const code = (error as { code?: unknown }).code;
  if (code === "UND_ERR_HEADERS_TIMEOUT")
    return { problem: PROBLEMS.gatewayTimeout, failure: "upstream-timeout" };
  if (code === "UND_ERR_INVALID_ARG") return { problem: PROBLEMS.badRequest, failure: "bad-request" };
  if (code === "ECONNREFUSED" || code === "UND_ERR_CONNECT_TIMEOUT") {
    return { problem: PROBLEMS.badGateway, failure: "upstream-refused" };
  }
  return { problem: PROBLEMS.badGateway, failure: "upstream-error" };
}

/** One forwarded exchange: undici's DispatchHandler writing into the client's response. */
class ResponseRelay implements Dispatcher.DispatchHandler {
  readonly res: ServerResponse;
  readonly requestId: string;
  readonly started: number;
  readonly done: (outcome: ForwardOutcome) => void;
  controller: Dispatcher.DispatchController | null = null;
  upstreamMs: number | undefined = undefined;
  /** The upstream exchange is over (end or error): a later client close aborts nothing. */
  settled = false;
  failure: ForwardOutcome["failure"] = undefined;
  reported = false;

  constructor(res: ServerResponse, requestId: string, done: (outcome: ForwardOutcome) => void) {
    this.res = res;
    this.requestId = requestId;
    this.done = done;
    this.started = performance.now();
    res.once("close", this.onClientClose);
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
    if (this.res.destroyed) controller.abort(new Error("client closed the connection"));
  }

  onResponseStart(
    _controller: Dispatcher.DispatchController,
    statusCode: number,
    headers: ParsedHeaders,
    statusMessage?: string,
  ): void {
    // Informational answers (103 Early Hints) are not relayed; the final one follows.
    if (statusCode < 200) return;
    this.upstreamMs = performance.now() - this.started;
    const sent = responseHeaders(headers, this.requestId);
    if (statusMessage) this.res.writeHead(statusCode, statusMessage, sent);
    else this.res.writeHead(statusCode, sent);
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (!this.res.write(chunk)) {
      controller.pause();
      this.res.once("drain", this.resumeUpstream);
    }
  }

  onResponseEnd(): void {
    this.settled = true;
    this.res.end();
  }

  onResponseError(_controller: Dispatcher.DispatchController | null, error: Error): void {
    this.settled = true;
    const { res } = this;
    if (this.failure === "client-aborted" || res.destroyed) return;
    if (res.headersSent) {
      // Mid-body: the client must see a broken response, not a short one that looks complete.
      this.failure = "upstream-error";
      res.destroy();
      return;
    }
    const { problem, failure } = problemFor(error);
    this.failure = failure;
    sendProblem(res, problem, this.requestId, true);
  }

  readonly resumeUpstream = (): void => {
    this.controller?.resume();
  };

  readonly onClientClose = (): void => {
    if (!this.settled) {
      this.failure = "client-aborted";
      this.controller?.abort(new Error("client closed the connection"));
    }
    if (this.reported) return;
    this.reported = true;
    // 499 (nginx's "client closed request") when the client left before any response head.
    const status = this.res.headersSent ? this.res.statusCode : 499;
    this.done({ status, upstreamMs: this.upstreamMs, failure: this.failure });
  };
}

/**
 * Sends the request upstream and relays the answer into `res`; `done` runs once, when `res` closes
 * (finished or not), with what the access log needs.
 */
export function forward(
  pool: Dispatcher,
  res: ServerResponse,
  request: ForwardRequest,
  done: (outcome: ForwardOutcome) => void,
): void {
  const relay = new ResponseRelay(res, request.requestId, done);
  pool.dispatch(
    {
      method: request.method as Dispatcher.HttpMethod,
      path: request.path,
      headers: request.headers,
      body: request.body,
      headersTimeout: request.headersTimeoutMs,
      // Streams may idle (server-sent events); the client's own timeouts and aborts end them.
      bodyTimeout: 0,
    },
    relay,
  );
}
