// A small JSON client for the Kubernetes API on undici, authenticated by a client-node KubeConfig.
// client-node's generated clients build a new connection pool per request and turn timestamps into
// Date objects on lists but not on watch events; the operator wants objects exactly as served
// (what desired() reads and what server-side apply compares) and one pool of kept-alive connections.
import type { RequestOptions as HttpsRequestOptions } from "node:https";
import type { Readable } from "node:stream";
import type { KubeConfig } from "@kubernetes/client-node";
import { Agent, request } from "undici";

/** Any object as the API server serves it. */
export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata?: {
    name?: string;
    namespace?: string;
    uid?: string;
    resourceVersion?: string;
    generation?: number;
    creationTimestamp?: string;
    deletionTimestamp?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    finalizers?: string[];
    ownerReferences?: { apiVersion: string; kind: string; name: string; uid: string; controller?: boolean }[];
    managedFields?: { manager?: string; operation?: string; subresource?: string; fieldsV1?: unknown }[];
    [field: string]: unknown;
  };
  [field: string]: unknown;
}

export interface KubeList<T> {
  metadata?: { resourceVersion?: string; continue?: string };
  items: T[];
}

/** A Status the API server answered with, or a transport failure (status 0). */
export class ApiError extends Error {
  readonly status: number;
  readonly reason: string;
  constructor(status: number, reason: string, message: string) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.reason = reason;
  }
}

export const isApiError = (error: unknown, status?: number): error is ApiError =>
  error instanceof ApiError && (status === undefined || error.status === status);

export type Query = Record<string, string | number | boolean | undefined>;

export interface RequestOptions {
  query?: Query;
  /** Serialised as JSON (valid YAML too, so it serves apply-patch+yaml). */
  body?: unknown;
  contentType?: string;
  signal?: AbortSignal;
}

/** One finished request, for metrics and for tests that count writes. */
export interface ApiCall {
  method: string;
  path: string;
  status: number;
}

export interface KubeClientOptions {
  onResponse?: (call: ApiCall) => void;
  /** Per request (not per watch stream). */
  timeoutMs?: number;
}

export const WRITE_METHODS: ReadonlySet<string> = new Set(["POST", "PUT", "PATCH", "DELETE"]);

interface Connection {
  agent: Agent;
  tlsKey: string;
}

export class KubeClient {
  readonly server: string;
  readonly #kubeConfig: KubeConfig;
  readonly #onResponse: ((call: ApiCall) => void) | undefined;
  readonly #timeoutMs: number;
  #connection: Connection | undefined;
  #closed = false;

  constructor(kubeConfig: KubeConfig, options: KubeClientOptions = {}) {
    const cluster = kubeConfig.getCurrentCluster();
    if (!cluster) throw new Error("the kubeconfig has no current cluster");
    this.server = cluster.server.replace(/\/+$/, "");
    this.#kubeConfig = kubeConfig;
    this.#onResponse = options.onResponse;
    this.#timeoutMs = options.timeoutMs ?? 30_000;
  }

  async request<T>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    const { agent, headers } = await this.#prepare();
    if (options.body !== undefined) headers["content-type"] = options.contentType ?? "application/json";
    let status = 0;
    try {
      const response = await request(this.#url(path, options.query), {
        method: method as "GET",
        headers,
        body: options.body === undefined ? undefined : JSON.stringify(options.body),
        dispatcher: agent,
        signal: options.signal,
        headersTimeout: this.#timeoutMs,
        bodyTimeout: this.#timeoutMs,
      });
      status = response.statusCode;
      const text = await response.body.text();
      if (status >= 200 && status < 300) return (text === "" ? undefined : JSON.parse(text)) as T;
      throw statusError(status, text);
    } catch (error) {
      if (error instanceof ApiError) throw error;
      throw new ApiError(0, "Transport", `${method} ${path}: ${describeError(error)}`);
    } finally {
      this.#onResponse?.({ method, path, status });
    }
  }

  get<T>(path: string, query?: Query, signal?: AbortSignal): Promise<T> {
    return this.request<T>("GET", path, { query, signal });
  }

  /**
   * Opens a streaming GET (a watch) and returns its body once the server answered 200.
   * `idleTimeoutMs` ends the stream when nothing arrives for that long (a half-dead connection).
   */
  async stream(path: string, query: Query, idleTimeoutMs: number, signal?: AbortSignal): Promise<Readable> {
    const { agent, headers } = await this.#prepare();
    let status = 0;
    try {
      const response = await request(this.#url(path, query), {
        method: "GET",
        headers,
        dispatcher: agent,
        signal,
        headersTimeout: this.#timeoutMs,
        bodyTimeout: idleTimeoutMs,
      });
      status = response.statusCode;
      if (status === 200) return response.body;
      throw statusError(status, await response.body.text());
    } catch (error) {
      if (error instanceof ApiError) throw error;
      throw new ApiError(0, "Transport", `GET ${path}: ${describeError(error)}`);
    } finally {
      this.#onResponse?.({ method: "WATCH", path, status });
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    const connection = this.#connection;
    this.#connection = undefined;
    await connection?.agent.close();
  }

  #url(path: string, query: Query | undefined): string {
    const url = new URL(this.server + path);
    for (const [name, value] of Object.entries(query ?? {})) {
      if (value !== undefined) url.searchParams.set(name, String(value));
    }
    return url.toString();
  }

  // Credentials are read per request (service-account tokens rotate); the TLS pool is reused
  // until the client certificate or CA changes.
  async #prepare(): Promise<{ agent: Agent; headers: Record<string, string> }> {
    if (this.#closed) throw new ApiError(0, "Closed", "the client is closed");
    const options: HttpsRequestOptions = {};
    await this.#kubeConfig.applyToHTTPSOptions(options);
    const headers: Record<string, string> = { accept: "application/json" };
    for (const [name, value] of Object.entries(options.headers ?? {})) {
      if (value !== undefined) headers[name.toLowerCase()] = String(value);
    }
    if (options.auth) headers.authorization = `Basic ${Buffer.from(options.auth).toString("base64")}`;
    const tls = {
      ca: tlsMaterial(options.ca),
      cert: tlsMaterial(options.cert),
      key: tlsMaterial(options.key),
      rejectUnauthorized: options.rejectUnauthorized,
      servername: options.servername,
    };
    const tlsKey = JSON.stringify(tls);
    if (this.#connection?.tlsKey !== tlsKey) {
      const previous = this.#connection;
      this.#connection = {
        tlsKey,
        agent: new Agent({
          connect: { ...tls, keepAlive: true, keepAliveInitialDelay: 30_000 },
          keepAliveTimeout: 30_000,
        }),
      };
      void previous?.agent.close();
    }
    return { agent: this.#connection.agent, headers };
  }
}

function tlsMaterial(value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (Buffer.isBuffer(value)) return value.toString("utf8");
  return String(value);
}

function statusError(status: number, text: string): ApiError {
  let reason = "Unknown";
  let message = `HTTP ${status}`;
  try {
    const parsed = JSON.parse(text) as { reason?: unknown; message?: unknown };
    if (typeof parsed.reason === "string") reason = parsed.reason;
    if (typeof parsed.message === "string") message = parsed.message;
  } catch {
    // A non-Status body (a proxy's HTML page): the status code says enough.
  }
  return new ApiError(status, reason, message);
}

function describeError(error: unknown): string {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return typeof code === "string" ? `${code}: ${error.message}` : error.message;
  }
  return String(error);
}

/** `/api/v1` or `/apis/<group>/<version>` for an apiVersion such as `apps/v1`. */
export function apiPrefix(apiVersion: string): string {
  return apiVersion.includes("/") ? `/apis/${apiVersion}` : `/api/${apiVersion}`;
}

/** The URL path of a resource collection, or of one object when `name` is given. */
export function resourcePath(
  apiVersion: string,
  plural: string,
  namespace: string | undefined,
  name?: string,
): string {
  const scope = namespace === undefined ? "" : `/namespaces/${encodeURIComponent(namespace)}`;
  const object = name === undefined ? "" : `/${encodeURIComponent(name)}`;
  return `${apiPrefix(apiVersion)}${scope}/${plural}${object}`;
}
