// Error answers: RFC 9457 problem+json bodies, with RFC 6750 `WWW-Authenticate` challenges on 401/403.
// Details are fixed sentences: never a verifier reason, key id, token, stack or policy content (such as
// the roles a route needs).

import type { ServerResponse } from "node:http";
import type { Duplex } from "node:stream";

export interface Problem {
  readonly status: number;
  /** A stable URI naming the kind of problem. */
  readonly type: string;
  readonly title: string;
  readonly detail: string;
  readonly wwwAuthenticate?: string;
  /** Sent as `Retry-After` (RFC 9110 section 10.2.3): the seconds until a retry can succeed (429). */
  readonly retryAfterSeconds?: number;
}

const TYPE_BASE = "https://portcullis.dev/problems/";

function problem(status: number, slug: string, title: string, detail: string, challenge?: string): Problem {
  return {
    status,
    type: TYPE_BASE + slug,
    title,
    detail,
    ...(challenge === undefined ? {} : { wwwAuthenticate: challenge }),
  };
}

export const PROBLEMS = {
  badTarget: problem(400, "bad-request-target", "Bad Request", "The request target is not accepted."),
  badRequest: problem(400, "bad-request", "Bad Request", "The request is malformed."),
  badUpgrade: problem(400, "bad-upgrade", "Bad Request", "Only WebSocket upgrades are accepted."),
  invalidRequest: problem(
    400,
    "invalid-request",
    "Bad Request",
    "The request must carry exactly one bearer token, in the Authorization header.",
    'Bearer error="invalid_request"',
  ),
  missingToken: problem(401, "missing-token", "Unauthorized", "A bearer token is required.", "Bearer"),
  invalidToken: problem(
    401,
    "invalid-token",
    "Unauthorized",
    "The bearer token is invalid or expired.",
    'Bearer error="invalid_token"',
  ),
  forbidden: problem(403, "forbidden", "Forbidden", "This route is not accessible."),
  insufficientScope: problem(
    403,
    "insufficient-scope",
    "Forbidden",
    "The token does not grant access to this route.",
    'Bearer error="insufficient_scope"',
  ),
  tooManyRequests: problem(429, "too-many-requests", "Too Many Requests", "The rate limit was exceeded."),
  internal: problem(500, "internal-error", "Internal Server Error", "The request could not be handled."),
  badGateway: problem(502, "bad-gateway", "Bad Gateway", "The application did not answer."),
  gatewayTimeout: problem(
    504,
    "gateway-timeout",
    "Gateway Timeout",
    "The application did not answer in time.",
  ),
} as const satisfies Record<string, Problem>;

export function problemBody(p: Problem, requestId: string): string {
  return JSON.stringify({ type: p.type, title: p.title, status: p.status, detail: p.detail, requestId });
}

/**
 * Answers with the problem. `closeConnection` when the request body was not read (so the socket is not
 * kept alive only to drain an upload the proxy refused).
 */
export function sendProblem(
  res: ServerResponse,
  p: Problem,
  requestId: string,
  closeConnection: boolean,
): void {
  const body = problemBody(p, requestId);
  const headers: string[] = [
    "content-type",
    "application/problem+json",
    "content-length",
    String(Buffer.byteLength(body)),
    "cache-control",
    "no-store",
    "x-request-id",
    requestId,
  ];
  if (p.wwwAuthenticate !== undefined) headers.push("www-authenticate", p.wwwAuthenticate);
  if (p.retryAfterSeconds !== undefined) headers.push("retry-after", String(p.retryAfterSeconds));
  if (closeConnection) headers.push("connection", "close");
  res.writeHead(p.status, headers);
  res.end(body);
}

/** The same answer written on a raw socket (a refused upgrade), which is then closed. */
export function writeProblemToSocket(socket: Duplex, p: Problem, requestId: string): void {
  const body = problemBody(p, requestId);
  const challenge = p.wwwAuthenticate === undefined ? "" : `WWW-Authenticate: ${p.wwwAuthenticate}\r\n`;
  const retry = p.retryAfterSeconds === undefined ? "" : `Retry-After: ${p.retryAfterSeconds}\r\n`;
  const head =
    `HTTP/1.1 ${p.status} ${p.title}\r\n` +
    "Content-Type: application/problem+json\r\n" +
    `Content-Length: ${Buffer.byteLength(body)}\r\n` +
    "Cache-Control: no-store\r\n" +
    `X-Request-Id: ${requestId}\r\n` +
    challenge +
    retry +
    "Connection: close\r\n\r\n";
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  // Destroyed once flushed, whatever the peer does next.
  socket.end(head + body, () => socket.destroy());
}
