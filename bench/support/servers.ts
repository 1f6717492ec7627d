// The servers the proxy benchmarks load, as request handlers: a tiny upstream, two bare node:http +
// undici pass-throughs (Pool.stream and Pool.dispatch) and the proxy with the example policy.

import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { Pool } from "undici";
import { parse } from "yaml";
import { DEFAULT_UPSTREAM_CONNECTIONS } from "../../proxy/forward.ts";
import type { ProxyServer } from "../../proxy/server.ts";

export type Handler = (req: IncomingMessage, res: ServerResponse) => void;

const UPSTREAM_BODY = Buffer.from('{"orders":[{"id":1,"item":"espresso beans"}]}');

/** The tiny upstream: a fixed JSON body. */
export const upstreamHandler: Handler = (_req, res) => {
  res.writeHead(200, ["content-type", "application/json", "content-length", String(UPSTREAM_BODY.length)]);
  res.end(UPSTREAM_BODY);
};

const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "transfer-encoding",
  "te",
  "trailer",
  "upgrade",
  "expect",
]);

export function passThroughPool(upstream: string): Pool {
  // The proxy's own default, so both sides queue (or not) alike.
  return new Pool(upstream, { connections: DEFAULT_UPSTREAM_CONNECTIONS, pipelining: 1 });
}

/** The minimum a pass-through must do: drop hop-by-hop headers both ways, stream both bodies. */
function requestHeaders(req: IncomingMessage): string[] {
  const out: string[] = [];
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    if (!HOP_BY_HOP.has(raw[i]!.toLowerCase())) out.push(raw[i]!, raw[i + 1]!);
  }
  return out;
}

function responseHeaders(raw: readonly (Buffer | string)[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toString("latin1");
    if (!HOP_BY_HOP.has(name.toLowerCase())) out.push(name, raw[i + 1]!.toString("latin1"));
  }
  return out;
}

function hasBody(req: IncomingMessage): boolean {
  const length = req.headers["content-length"];
  return (length !== undefined && length !== "0") || req.headers["transfer-encoding"] !== undefined;
}

/** node:http + undici Pool.stream(), the pass-through shape FIELD-NOTES measured. */
export function streamPassThrough(pool: Pool): Handler {
  return (req, res) => {
    pool
      .stream(
        {
          method: req.method as "GET",
          path: req.url ?? "/",
          headers: requestHeaders(req),
          body: hasBody(req) ? req : null,
          responseHeaders: "raw",
        },
        ({ statusCode, headers }) => {
          res.writeHead(statusCode, responseHeaders(headers as unknown as Buffer[]));
          return res;
        },
      )
      .catch(() => {
        if (!res.headersSent) res.writeHead(502).end();
        else res.destroy();
      });
  };
}

/** node:http + undici Pool.dispatch() writing into res, the shape forward.ts uses. */
export function dispatchPassThrough(pool: Pool): Handler {
  return (req, res) => {
    let upstreamController: { abort(error: Error): void; resume(): void } | undefined;
    let settled = false;
    // A client that leaves must release the upstream connection (a paused one would be stuck).
    res.once("close", () => {
      if (!settled) upstreamController?.abort(new Error("client closed"));
    });
    pool.dispatch(
      {
        method: req.method as "GET",
        path: req.url ?? "/",
        headers: requestHeaders(req),
        body: hasBody(req) ? req : null,
      },
      {
        onRequestStart(controller) {
          upstreamController = controller;
          if (res.destroyed) controller.abort(new Error("client closed"));
        },
        onResponseStart(controller, statusCode) {
          res.writeHead(statusCode, responseHeaders(controller.rawHeaders as Buffer[]));
        },
        onResponseData(controller, chunk) {
          if (!res.write(chunk)) {
            controller.pause();
            res.once("drain", () => controller.resume());
          }
        },
        onResponseEnd() {
          settled = true;
          res.end();
        },
        onResponseError() {
          settled = true;
          if (!res.headersSent) res.writeHead(502).end();
          else res.destroy();
        },
      },
    );
  };
}

/**
 * createProxyServer with the example policy (RS256 bearer tokens from `issuer`, anyRole rules, header
 * hygiene, identity headers, metrics, the JSON access log to stdout). `level` "warn" turns the access
 * log off, as --log-level=warn would.
 */
export async function examplePortcullis(
  upstream: string,
  issuer: string,
  level: "info" | "warn",
): Promise<ProxyServer> {
  // Loaded here, not above: a pass-through's process never holds the proxy's modules.
  const [{ compilePolicy }, { validatePolicyObject }, { KeySetRegistry }, { createBearerVerifier }] =
    await Promise.all([
      import("../../policy/compile.ts"),
      import("../../policy/validate.ts"),
      import("../../proxy/authn/key-set.ts"),
      import("../../proxy/authn/verify-bearer.ts"),
    ]);
  const [{ createLogger }, { createProxyMetrics }, { createProxyServer }] = await Promise.all([
    import("../../proxy/access-log.ts"),
    import("../../proxy/metrics.ts"),
    import("../../proxy/server.ts"),
  ]);
  const document = parse(
    readFileSync(new URL("../../examples/fastapi/policy.yaml", import.meta.url), "utf8"),
  );
  document.spec.authentication.issuers[0].issuer = issuer;
  const { policy: valid, problems } = validatePolicyObject(document);
  if (!valid) throw new Error(JSON.stringify(problems));
  const policy = compilePolicy(valid);
  const runtime = { policy, verifier: createBearerVerifier(policy, { keySets: new KeySetRegistry() }) };
  await runtime.verifier.ready();
  return createProxyServer({
    current: () => runtime,
    upstream: new URL(upstream),
    logger: createLogger({ format: "json", level }),
    metrics: createProxyMetrics(),
  });
}

/** The load generator, from apt (`wrk`); the benchmarks that need it skip themselves without it. */
export function hasWrk(): boolean {
  try {
    execFileSync("wrk", ["--version"], { stdio: "ignore" });
    return true;
  } catch (error) {
    // wrk --version exits 1 after printing its version.
    return (error as { status?: number }).status === 1;
  }
}
