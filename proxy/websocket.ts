// WebSocket upgrades: the same admission as any request (target, rule, token, roles), then a raw TCP
// tunnel to the app: the sanitised request head is written by hand (Upgrade, Connection and
// Sec-WebSocket-* kept, identity headers set), then bytes are piped both ways with stream backpressure.
//
// A tunnel carries a verified identity only while the token is valid: at `exp` both sockets are
// destroyed. Destroying (the client sees close code 1006) rather than sending a 1008 close frame is
// deliberate: the proxy does not parse frames, and injecting a close frame mid-relay could cut a frame
// the app is still sending in half. Only `Upgrade: websocket` is accepted; h2c and others get 400.

import type { IncomingMessage } from "node:http";
import { connect, type Socket } from "node:net";
import type { Duplex } from "node:stream";
import { headerPlan, readInboundHeaders } from "./headers.ts";
import {
  type Admission,
  admit,
  completeExchange,
  type Exchange,
  newExchange,
  newRequestId,
  type ProxyContext,
  parseTarget,
  requestIdFor,
  upstreamHeaders,
  whenAdmitted,
} from "./pipeline.ts";
import { PROBLEMS, type Problem, writeProblemToSocket } from "./problem.ts";

/** setTimeout's ceiling (~24.8 days); longer-lived tokens are re-armed. */
const MAX_TIMER_MS = 2 ** 31 - 1;

function refuseUpgrade(ctx: ProxyContext, socket: Duplex, exchange: Exchange, problem: Problem): void {
  writeProblemToSocket(socket, problem, exchange.requestId);
  completeExchange(ctx, exchange, problem.status, undefined);
}

export function handleUpgrade(ctx: ProxyContext, req: IncomingMessage, socket: Duplex, head: Buffer): void {
  const start = performance.now();
  // A reset before anything is wired up must not become an uncaught 'error'.
  socket.on("error", () => socket.destroy());
  let exchange: Exchange | undefined;
  try {
    const runtime = ctx.current();
    const plan = headerPlan(runtime.policy);
    const inbound = readInboundHeaders(req.rawHeaders, plan, true);
    const upgrading = newExchange(requestIdFor(inbound), req.method ?? "", start, false);
    exchange = upgrading;
    if (inbound.upgrade?.toLowerCase() !== "websocket" || upgrading.method !== "GET") {
      upgrading.reason = "unsupported-upgrade";
      refuseUpgrade(ctx, socket, upgrading, PROBLEMS.badUpgrade);
      return;
    }
    if (inbound.refusal !== undefined) {
      upgrading.reason = inbound.refusal;
      refuseUpgrade(ctx, socket, upgrading, PROBLEMS.badRequest);
      return;
    }
    const target = parseTarget(req.url);
    if (!target.ok) {
      upgrading.reason = target.reason;
      refuseUpgrade(ctx, socket, upgrading, PROBLEMS.badTarget);
      return;
    }
    upgrading.path = target.path;
    const proceed = (decided: Admission): void => {
      if (!decided.admitted) {
        refuseUpgrade(ctx, socket, upgrading, decided.problem);
        return;
      }
      if (socket.destroyed) {
        upgrading.decision = "error";
        upgrading.reason = "client-aborted";
        completeExchange(ctx, upgrading, 499, undefined);
        return;
      }
      const headers = upstreamHeaders(ctx, req, runtime.policy, plan, inbound, upgrading.requestId, decided);
      headers.push("Connection", "Upgrade");
      let requestHead = `GET ${target.query === "" ? target.rawPath : `${target.rawPath}?${target.query}`} HTTP/1.1\r\n`;
      for (let i = 0; i < headers.length; i += 2) requestHead += `${headers[i]}: ${headers[i + 1]}\r\n`;
      requestHead += "\r\n";
      tunnel(ctx, socket, head, requestHead, upgrading, decided.identity?.expiresAt);
    };
    whenAdmitted(admit(ctx, runtime, plan, req, upgrading, target), proceed, (error) =>
      failUpgrade(ctx, socket, upgrading, error),
    );
  } catch (error) {
    exchange ??= newExchange(newRequestId(), req.method ?? "", start, false);
    failUpgrade(ctx, socket, exchange, error);
  }
}

function failUpgrade(ctx: ProxyContext, socket: Duplex, exchange: Exchange, error: unknown): void {
  if (exchange.completed) return;
  ctx.logger.error({ err: error, requestId: exchange.requestId }, "upgrade failed");
  exchange.decision = "error";
  exchange.reason = "internal";
  refuseUpgrade(ctx, socket, exchange, PROBLEMS.internal);
}

/**
 * Connects to the app, sends the request head (and any bytes the client sent after it), then relays.
 * The access line is written when the tunnel closes, with the app's status (101 when it accepted).
 */
function tunnel(
  ctx: ProxyContext,
  client: Duplex,
  head: Buffer,
  requestHead: string,
  exchange: Exchange,
  expiresAt: number | undefined,
): void {
  const upstreamStart = performance.now();
  let upstreamMs: number | undefined;
  let status = 0;
  let expiry: NodeJS.Timeout | undefined;
  const upstream: Socket = connect({
    host: ctx.upstream.hostname,
    port: Number(ctx.upstream.port || 80),
    noDelay: true,
  });

  const close = (): void => {
    if (expiry !== undefined) clearTimeout(expiry);
    upstream.destroy();
    client.destroy();
  };
  upstream.on("error", (error: NodeJS.ErrnoException) => {
    if (status === 0 && !exchange.completed && client.writable) {
      // Nothing came back from the app yet: the client still gets an HTTP answer.
      exchange.decision = "error";
      exchange.reason = error.code === "ECONNREFUSED" ? "upstream-refused" : "upstream-error";
      refuseUpgrade(ctx, client, exchange, PROBLEMS.badGateway);
      return;
    }
    close();
  });
  upstream.once("connect", () => {
    upstream.once("data", (chunk: Buffer) => {
      upstreamMs = performance.now() - upstreamStart;
      // "HTTP/1.1 101 ...": the status is bytes 9-11 of the app's first answer.
      status = Number(chunk.toString("latin1", 9, 12)) || 502;
    });
    upstream.write(requestHead);
    if (head.length > 0) upstream.write(head);
    upstream.pipe(client);
    client.pipe(upstream);
  });
  upstream.once("close", close);
  client.once("close", () => {
    close();
    const failure = exchange.decision === "error" ? exchange.reason : undefined;
    completeExchange(ctx, exchange, status === 0 ? 499 : status, upstreamMs, failure);
  });
  (client as Partial<Socket>).setNoDelay?.(true);
  if (expiresAt !== undefined) {
    const arm = (): void => {
      const remaining = expiresAt * 1000 - Date.now();
      if (remaining <= 0) {
        exchange.reason = "token-expired";
        close();
      } else {
        expiry = setTimeout(arm, Math.min(remaining, MAX_TIMER_MS));
        expiry.unref();
      }
    };
    arm();
  }
}
