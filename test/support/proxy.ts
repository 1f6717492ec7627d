// The proxy under test, in-process, between the real IdP (examples/idp.ts) and the real FastAPI app
// under uvicorn, with its access log collected in memory. Plus a raw HTTP/1.1 client: fetch would
// merge repeated headers, normalise names and refuse absolute-form targets.
import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { connect } from "node:net";
import { Writable } from "node:stream";
import pino from "pino";
import { startUpstream, type Upstream } from "../../examples/fastapi/upstream.ts";
import { type IdentityProvider, type IdpOptions, startIdentityProvider } from "../../examples/idp.ts";
import type { CompiledPolicy } from "../../policy/compile.ts";
import type { AssertionSigner } from "../../proxy/assertion.ts";
import { KeySetRegistry } from "../../proxy/authn/key-set.ts";
import { createBearerVerifier } from "../../proxy/authn/verify-bearer.ts";
import type { RequestMetrics } from "../../proxy/pipeline.ts";
import type { RateLimiter } from "../../proxy/rate-limit.ts";
import type { ProxyRuntime } from "../../proxy/runtime.ts";
import { createProxyServer, type ProxyServer } from "../../proxy/server.ts";
import { examplePolicy } from "./authn.ts";

/** What the app echoes under `identity` (examples/fastapi/app.py). */
export interface EchoedIdentity {
  x_auth: Record<string, string[]>;
  raw_headers: [string, string][];
  forwarded: Record<string, string[]>;
  authorization: string | null;
  path: string;
  raw_path: string;
  query_string: string;
  client: [string, number] | null;
  scheme: string;
}

export interface RunningProxy {
  url: string;
  port: number;
  proxy: ProxyServer;
  runtime: ProxyRuntime;
  /** Every log line written so far, parsed. */
  logs: Record<string, unknown>[];
  /** The raw log text, to search for secrets. */
  logText(): string;
  close(): Promise<void>;
}

/** What main.ts hands createProxyServer beyond the runtime; each defaults as createProxyServer does. */
export interface ProxyParts {
  rateLimiter?: RateLimiter;
  assertionSigner?: AssertionSigner;
  metrics?: RequestMetrics;
  /** The runtime each request reads (e.g. a policy source's); default: the one built for `policy`. */
  current?: () => ProxyRuntime;
}

/** Starts a proxy for `policy` in front of `upstream`, on a free loopback port. */
export async function startProxy(
  policy: CompiledPolicy,
  upstream: URL,
  keySets: KeySetRegistry,
  parts: ProxyParts = {},
): Promise<RunningProxy> {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(...chunk.toString("utf8").split("\n").filter(Boolean));
      done();
    },
  });
  const logger = pino({ level: "info" }, destination);
  const runtime: ProxyRuntime = { policy, verifier: createBearerVerifier(policy, { keySets }) };
  const { current = () => runtime, ...rest } = parts;
  const proxy = createProxyServer({ current, upstream, logger, ...rest });
  proxy.server.listen(0, "127.0.0.1");
  await once(proxy.server, "listening");
  const port = (proxy.server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    proxy,
    runtime,
    get logs() {
      return lines.map((line) => JSON.parse(line) as Record<string, unknown>);
    },
    logText: () => lines.join("\n"),
    async close() {
      const closed = once(proxy.server, "close");
      proxy.server.close();
      proxy.server.closeAllConnections();
      await closed;
      runtime.verifier.close();
    },
  };
}

export interface Stack {
  idp: IdentityProvider;
  app: Upstream;
  keySets: KeySetRegistry;
  policy: CompiledPolicy;
  proxy: RunningProxy;
  /** A fresh token for a DEFAULT_CLIENTS client ("reader", "writer", "admin"). */
  token(client: string): Promise<string>;
  stop(): Promise<void>;
}

/** IdP + FastAPI app + proxy with the example policy. `edit` may adjust the compiled policy. */
export async function startStack(
  options: { idp?: IdpOptions; edit?: (policy: CompiledPolicy) => CompiledPolicy; parts?: ProxyParts } = {},
): Promise<Stack> {
  const [idp, app] = await Promise.all([startIdentityProvider(options.idp), startUpstream()]);
  const keySets = new KeySetRegistry();
  const compiled = examplePolicy(idp);
  const policy = options.edit ? options.edit(compiled) : compiled;
  const proxy = await startProxy(policy, new URL(app.url), keySets, options.parts);
  await proxy.runtime.verifier.ready();
  return {
    idp,
    app,
    keySets,
    policy,
    proxy,
    token: (client) => idp.token(client),
    async stop() {
      await proxy.close();
      keySets.close();
      await Promise.all([app.stop(), idp.stop()]);
    },
  };
}

export interface RawResponse {
  status: number;
  /** Header lines as received: [name, value], names as sent. */
  headers: [string, string][];
  body: string;
  header(name: string): string | undefined;
  json(): Record<string, unknown>;
}

/**
 * Sends `head` (request line and headers, "\n"-separated, without the final blank line) and reads the
 * answer to the end of the connection. Adds `Connection: close` unless the head has a Connection line.
 */
export async function rawRequest(port: number, head: string, body = ""): Promise<RawResponse> {
  const socket = connect(port, "127.0.0.1");
  await once(socket, "connect");
  const lines = head.trim().split("\n");
  if (!lines.some((line) => /^connection:/i.test(line))) lines.push("Connection: close");
  // Not end(): Node treats a half-closed request as aborted (httpAllowHalfOpen is off).
  socket.write(`${lines.join("\r\n")}\r\n\r\n${body}`);
  const chunks: Buffer[] = [];
  socket.on("error", () => undefined);
  for await (const chunk of socket) chunks.push(chunk as Buffer);
  return parseResponse(Buffer.concat(chunks).toString("latin1"));
}

function parseResponse(text: string): RawResponse {
  const end = text.indexOf("\r\n\r\n");
  const [statusLine = "", ...headerLines] = text.slice(0, end).split("\r\n");
  const headers = headerLines.map((line): [string, string] => {
    const colon = line.indexOf(":");
    return [line.slice(0, colon), line.slice(colon + 1).trim()];
  });
  const find = (name: string) => headers.find(([key]) => key.toLowerCase() === name.toLowerCase())?.[1];
  let body = text.slice(end + 4);
  if (find("transfer-encoding")?.toLowerCase() === "chunked") body = dechunk(body);
  return {
    status: Number(statusLine.split(" ")[1]),
    headers,
    body,
    header: find,
    json: () => JSON.parse(body) as Record<string, unknown>,
  };
}

function dechunk(text: string): string {
  let out = "";
  let at = 0;
  for (;;) {
    const lineEnd = text.indexOf("\r\n", at);
    const size = Number.parseInt(text.slice(at, lineEnd), 16);
    if (!(size > 0)) return out;
    out += text.slice(lineEnd + 2, lineEnd + 2 + size);
    at = lineEnd + 2 + size + 2;
  }
}

/** The `identity` the app echoed in a JSON answer. */
export function identityOf(body: Record<string, unknown>): EchoedIdentity {
  return body.identity as EchoedIdentity;
}
