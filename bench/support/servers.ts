// The servers the proxy benchmarks load, as request handlers: a tiny upstream, two bare node:http +
// undici pass-throughs (Pool.stream and Pool.dispatch) and the proxy with the example policy.

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { Pool } from "undici";
import { parse, stringify } from "yaml";
import { freePort } from "../../examples/free-port.ts";
import { DEFAULT_SIDECAR_RESOURCES } from "../../operator/config.ts";
import { sidecarRuntimeEnv } from "../../operator/sidecar.ts";
import type { CompiledPolicy } from "../../policy/compile.ts";
import type { AccessPolicyDocument } from "../../policy/schema.ts";
import type { KeySetRegistry } from "../../proxy/authn/key-set.ts";
import { DEFAULT_UPSTREAM_CONNECTIONS } from "../../proxy/forward.ts";
import type { ProxyRuntime } from "../../proxy/runtime.ts";
import type { ProxyServer } from "../../proxy/server.ts";

export type Handler = (req: IncomingMessage, res: ServerResponse) => void;

/**
 * Listens on a free loopback port, keep-alive above wrk's run (so no server closes a connection the
 * load generator still uses); resolves to the port.
 */
export async function listenOnLoopback(server: Server): Promise<number> {
  server.keepAliveTimeout = 65_000;
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return (server.address() as AddressInfo).port;
}

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

/** An edit of the example policy's document, made before it is validated and compiled. */
export type PolicyPatch = (document: AccessPolicyDocument) => void;

/** The example policy (examples/fastapi/policy.yaml) trusting `issuer`, edited by `patch`, compiled. */
export async function examplePolicy(issuer: string, patch?: PolicyPatch): Promise<CompiledPolicy> {
  // Loaded here, not above: a pass-through's process never holds the proxy's modules.
  const [{ compilePolicy }, { validatePolicyObject }] = await Promise.all([
    import("../../policy/compile.ts"),
    import("../../policy/validate.ts"),
  ]);
  const document = parse(
    readFileSync(new URL("../../examples/fastapi/policy.yaml", import.meta.url), "utf8"),
  ) as AccessPolicyDocument;
  document.spec.authentication.issuers[0]!.issuer = issuer;
  patch?.(document);
  const { policy, problems } = validatePolicyObject(document, Date.now());
  if (!policy) throw new Error(JSON.stringify(problems));
  return compilePolicy(policy);
}

/** The example policy (see examplePolicy) with a ready bearer verifier; `keySets` may be shared. */
export async function exampleRuntime(
  issuer: string,
  options: { patch?: PolicyPatch; keySets?: KeySetRegistry } = {},
): Promise<ProxyRuntime> {
  const [{ KeySetRegistry }, { createBearerVerifier }] = await Promise.all([
    import("../../proxy/authn/key-set.ts"),
    import("../../proxy/authn/verify-bearer.ts"),
  ]);
  const policy = await examplePolicy(issuer, options.patch);
  const keySets = options.keySets ?? new KeySetRegistry();
  const runtime = { policy, verifier: createBearerVerifier(policy, { keySets }) };
  await runtime.verifier.ready();
  return runtime;
}

/**
 * createProxyServer with the example policy (RS256 bearer tokens from `issuer`, anyRole rules, header
 * hygiene, identity headers, metrics, the JSON access log to stdout). `level` "warn" turns the access
 * log off, as --log-level=warn would. `patch` edits the policy; `current` serves runtimes of the
 * caller's own instead (read per request, so the caller can swap them between rounds).
 */
export async function examplePortcullis(
  upstream: string,
  issuer: string,
  level: "info" | "warn",
  options: { patch?: PolicyPatch; current?: () => ProxyRuntime } = {},
): Promise<ProxyServer> {
  const [{ createLogger }, { createProxyMetrics }, { createProxyServer }] = await Promise.all([
    import("../../proxy/access-log.ts"),
    import("../../proxy/metrics.ts"),
    import("../../proxy/server.ts"),
  ]);
  let { current } = options;
  if (current === undefined) {
    const runtime = await exampleRuntime(issuer, { patch: options.patch });
    current = () => runtime;
  }
  return createProxyServer({
    current,
    upstream: new URL(upstream),
    logger: createLogger({ format: "json", level }),
    metrics: createProxyMetrics(),
  });
}

/**
 * Runtime settings as the benchmarks take them on their command lines: node flags and `NAME=value`
 * environment variables in one string, e.g. "MALLOC_ARENA_MAX=2 --max-semi-space-size=4".
 */
export interface RuntimeSettings {
  flags: string[];
  env: Record<string, string>;
}

export function parseRuntimeSettings(words: string): RuntimeSettings {
  const settings: RuntimeSettings = { flags: [], env: {} };
  for (const word of words.split(" ").filter(Boolean)) {
    const assignment = /^([A-Z_]+)=(.*)$/s.exec(word);
    if (assignment) settings.env[assignment[1]!] = assignment[2]!;
    else settings.flags.push(word);
  }
  return settings;
}

/** What the operator sets for a sidecar with the default memory limit, in that form. */
export function deployedSettings(): string {
  return sidecarRuntimeEnv(DEFAULT_SIDECAR_RESOURCES.limits.memory)
    .map(({ name, value }) => (name === "NODE_OPTIONS" ? value : `${name}=${value}`))
    .join(" ");
}

/** `npm run build`'s output in a directory of its own, inside the repository (so it resolves node_modules). */
export interface CompiledProxy {
  dir: string;
  remove(): void;
}

export function compileProxy(): CompiledProxy {
  const root = new URL("../..", import.meta.url).pathname;
  const dir = mkdtempSync(`${root}.build-bench-`);
  execFileSync(
    process.execPath,
    ["node_modules/typescript/bin/tsc", "-p", "tsconfig.build.json", "--outDir", dir],
    {
      cwd: root,
    },
  );
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * The sidecar as deployed: the compiled proxy/main.js, run without type stripping, with the example
 * policy and the given runtime settings (see parseRuntimeSettings); resolves once it is ready.
 */
export async function startCompiledSidecar(
  built: CompiledProxy,
  upstream: string,
  issuer: string,
  settings: string,
): Promise<{ process: ChildProcess; port: number }> {
  const document = parse(
    readFileSync(new URL("../../examples/fastapi/policy.yaml", import.meta.url), "utf8"),
  );
  document.spec.authentication.issuers[0].issuer = issuer;
  const [port, admin] = [await freePort(), await freePort()];
  const policyFile = `${built.dir}/policy-${port}.yaml`;
  writeFileSync(policyFile, stringify(document));
  const { flags, env } = parseRuntimeSettings(settings);
  const child = spawn(
    process.execPath,
    [
      ...flags,
      `${built.dir}/proxy/main.js`,
      ...["--policy", policyFile, "--upstream", upstream],
      ...["--listen", `127.0.0.1:${port}`, "--admin", `127.0.0.1:${admin}`],
    ],
    // The access log goes where a container's stdout would: written, never read here.
    { stdio: ["ignore", openSync("/dev/null", "w"), "inherit"], env: { ...process.env, ...env } },
  );
  // Ready once the issuer's keys are loaded and the upstream answers.
  for (let attempt = 0; ; attempt++) {
    const ready = await fetch(`http://127.0.0.1:${admin}/readyz`).then(
      (r) => r.ok,
      () => false,
    );
    if (ready) break;
    if (attempt > 100 || child.exitCode !== null) throw new Error("the sidecar did not become ready");
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return { process: child, port };
}
