// A resilient list+watch cache. client-node's informer stops for good on any error other than 410
// and timeouts; this one never gives up: each watch restarts with exponential backoff (jittered),
// resumes from the last resourceVersion it saw (bookmarks keep that fresh), and relists when the
// server says the version is gone (410). One stream per namespace when a list is configured.
import { setTimeout as sleep } from "node:timers/promises";
import {
  ApiError,
  isApiError,
  type KubeClient,
  type KubeList,
  type KubeObject,
  resourcePath,
} from "./kube-client.ts";

export type InformerEvent = "add" | "update" | "delete";

/** `old` is the previous object for updates; for deletes `object` is the last one seen. */
export type InformerHandler<T> = (event: InformerEvent, object: T, old: T | undefined) => void;

export interface ResourceType {
  apiVersion: string;
  kind: string;
  plural: string;
}

export interface InformerOptions {
  /** Watched namespaces; undefined watches all of them in one stream. */
  namespaces?: readonly string[];
  labelSelector?: string;
  /** Page size of lists. */
  pageSize?: number;
  /** Server-side watch timeout range; a random value in it spreads reconnects out. */
  watchTimeoutSeconds?: [number, number];
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  /** Told about every restart, with why (for metrics and logs). */
  onRestart?: (resource: string, reason: WatchRestartReason, error?: unknown) => void;
}

export type WatchRestartReason = "expired" | "closed" | "error";

interface WatchEvent {
  type: "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" | "ERROR";
  object: KubeObject & { code?: number; reason?: string; message?: string };
}

const keyOf = (namespace: string | undefined, name: string | undefined) => `${namespace ?? ""}/${name ?? ""}`;

export class Informer<T extends KubeObject = KubeObject> {
  readonly resource: ResourceType;
  readonly #client: KubeClient;
  readonly #options: InformerOptions;
  readonly #objects = new Map<string, T>();
  readonly #handlers: InformerHandler<T>[] = [];
  readonly #streams: WatchStream<T>[];
  readonly #syncWaiters: (() => void)[] = [];
  #synced = false;

  constructor(client: KubeClient, resource: ResourceType, options: InformerOptions = {}) {
    this.#client = client;
    this.resource = resource;
    this.#options = options;
    const scopes = options.namespaces ?? [undefined];
    this.#streams = scopes.map((namespace) => new WatchStream<T>(this, namespace));
  }

  on(handler: InformerHandler<T>): void {
    this.#handlers.push(handler);
  }

  start(): void {
    for (const stream of this.#streams) stream.start();
  }

  async stop(): Promise<void> {
    await Promise.all(this.#streams.map((stream) => stream.stop()));
  }

  /** True once every namespace has been listed at least once. */
  hasSynced(): boolean {
    return this.#synced;
  }

  waitForSync(signal?: AbortSignal): Promise<void> {
    if (this.#synced) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onAbort = () => reject(signal?.reason ?? new Error("aborted"));
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#syncWaiters.push(() => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      });
    });
  }

  get(namespace: string | undefined, name: string): T | undefined {
    return this.#objects.get(keyOf(namespace, name));
  }

  list(namespace?: string): T[] {
    const all = [...this.#objects.values()];
    return namespace === undefined ? all : all.filter((o) => o.metadata?.namespace === namespace);
  }

  size(): number {
    return this.#objects.size;
  }

  // --- used by the streams --------------------------------------------------------------------

  /** @internal */
  get client(): KubeClient {
    return this.#client;
  }

  /** @internal */
  get options(): InformerOptions {
    return this.#options;
  }

  /** @internal Replaces what `namespace` (undefined: everything) holds with a fresh list. */
  replace(namespace: string | undefined, items: T[]): void {
    const fresh = new Map<string, T>();
    for (const item of items) fresh.set(keyOf(item.metadata?.namespace, item.metadata?.name), item);
    for (const [key, old] of this.#objects) {
      if (namespace !== undefined && old.metadata?.namespace !== namespace) continue;
      if (!fresh.has(key)) {
        this.#objects.delete(key);
        this.#emit("delete", old, undefined);
      }
    }
    for (const item of fresh.values()) this.upsert(item);
  }

  /** @internal */
  upsert(object: T): void {
    const key = keyOf(object.metadata?.namespace, object.metadata?.name);
    const old = this.#objects.get(key);
    if (old && old.metadata?.resourceVersion === object.metadata?.resourceVersion) return;
    this.#objects.set(key, object);
    this.#emit(old ? "update" : "add", object, old);
  }

  /** @internal */
  remove(object: T): void {
    const key = keyOf(object.metadata?.namespace, object.metadata?.name);
    const old = this.#objects.get(key);
    this.#objects.delete(key);
    this.#emit("delete", old ?? object, undefined);
  }

  /** @internal */
  streamSynced(): void {
    if (this.#synced || !this.#streams.every((stream) => stream.synced)) return;
    this.#synced = true;
    for (const resolve of this.#syncWaiters.splice(0)) resolve();
  }

  #emit(event: InformerEvent, object: T, old: T | undefined): void {
    for (const handler of this.#handlers) {
      try {
        handler(event, object, old);
      } catch {
        // A handler's bug must not stop the cache; handlers only enqueue keys.
      }
    }
  }
}

/** One list+watch loop over one namespace (or all). */
class WatchStream<T extends KubeObject> {
  synced = false;
  readonly #informer: Informer<T>;
  readonly #namespace: string | undefined;
  #resourceVersion = "";
  #listedAt = 0;
  #abort: AbortController | undefined;
  #loop: Promise<void> | undefined;

  constructor(informer: Informer<T>, namespace: string | undefined) {
    this.#informer = informer;
    this.#namespace = namespace;
  }

  start(): void {
    if (this.#loop) return;
    this.#abort = new AbortController();
    this.#loop = this.#run(this.#abort.signal);
  }

  async stop(): Promise<void> {
    this.#abort?.abort();
    await this.#loop;
    this.#loop = undefined;
  }

  get #name(): string {
    const { resource } = this.#informer;
    return this.#namespace === undefined ? resource.plural : `${resource.plural} in ${this.#namespace}`;
  }

  async #run(signal: AbortSignal): Promise<void> {
    const { initialBackoffMs = 200, maxBackoffMs = 30_000 } = this.#informer.options;
    let failures = 0;
    while (!signal.aborted) {
      try {
        if (this.#resourceVersion === "") await this.#list(signal);
        const started = Date.now();
        const delivered = await this.#watch(signal);
        // A stream that carried something, or lasted, was healthy; one closed at once is a failure
        // in disguise (a proxy or a restarting server): back off rather than spin.
        if (delivered || Date.now() - started > 1_000) {
          failures = 0;
          this.#restarted("closed");
          continue;
        }
        throw new ApiError(0, "Closed", "the watch closed without delivering anything");
      } catch (error) {
        if (signal.aborted) return;
        if (isApiError(error, 410)) {
          // Relist right away (the version we hold is gone, waiting gains nothing), unless the
          // version from a list just made is already gone: then back off rather than spin.
          const freshList = this.#listedAt > Date.now() - 1_000;
          this.#resourceVersion = "";
          this.#restarted("expired", error);
          if (!freshList) continue;
        } else {
          this.#restarted("error", error);
        }
        failures += 1;
        const ceiling = Math.min(maxBackoffMs, initialBackoffMs * 2 ** Math.min(failures - 1, 20));
        try {
          await sleep(ceiling / 2 + Math.random() * (ceiling / 2), undefined, { signal });
        } catch {
          return;
        }
      }
    }
  }

  #restarted(reason: WatchRestartReason, error?: unknown): void {
    this.#informer.options.onRestart?.(this.#name, reason, error);
  }

  async #list(signal: AbortSignal): Promise<void> {
    const { resource, options, client } = this.#informer;
    const path = resourcePath(resource.apiVersion, resource.plural, this.#namespace);
    const items: T[] = [];
    let continueToken: string | undefined;
    let resourceVersion = "";
    do {
      const page = await client.get<KubeList<T>>(
        path,
        { labelSelector: options.labelSelector, limit: options.pageSize ?? 500, continue: continueToken },
        signal,
      );
      // Lists leave apiVersion/kind off their items; the cache holds complete objects.
      for (const item of page.items)
        items.push({ apiVersion: resource.apiVersion, kind: resource.kind, ...item });
      continueToken = page.metadata?.continue || undefined;
      resourceVersion = page.metadata?.resourceVersion ?? "";
    } while (continueToken);
    this.#informer.replace(this.#namespace, items);
    this.#resourceVersion = resourceVersion;
    this.#listedAt = Date.now();
    if (!this.synced) {
      this.synced = true;
      this.#informer.streamSynced();
    }
  }

  /** Watches until the server closes the stream; true when anything arrived on it. */
  async #watch(signal: AbortSignal): Promise<boolean> {
    const { resource, options, client } = this.#informer;
    const [low, high] = options.watchTimeoutSeconds ?? [300, 600];
    const timeoutSeconds = Math.round(low + Math.random() * (high - low));
    const body = await client.stream(
      resourcePath(resource.apiVersion, resource.plural, this.#namespace),
      {
        watch: 1,
        resourceVersion: this.#resourceVersion,
        allowWatchBookmarks: true,
        labelSelector: options.labelSelector,
        timeoutSeconds,
      },
      // Bookmarks arrive about once a minute; silence well past the timeout means a dead connection.
      (timeoutSeconds + 60) * 1000,
      signal,
    );
    let delivered = false;
    let pending = "";
    for await (const chunk of body) {
      pending += (chunk as Buffer).toString("utf8");
      let newline = pending.indexOf("\n");
      while (newline >= 0) {
        const line = pending.slice(0, newline);
        pending = pending.slice(newline + 1);
        newline = pending.indexOf("\n");
        if (line.trim() === "") continue;
        this.#handle(JSON.parse(line) as WatchEvent);
        delivered = true;
      }
    }
    return delivered;
  }

  #handle(event: WatchEvent): void {
    const { object } = event;
    if (event.type === "ERROR") {
      const code = typeof object.code === "number" ? object.code : 500;
      // An ERROR event (e.g. 410 Expired) is handled like the same HTTP status.
      throw new ApiError(code, object.reason ?? "", object.message ?? "watch error");
    }
    const resourceVersion = object.metadata?.resourceVersion;
    if (event.type === "ADDED" || event.type === "MODIFIED") this.#informer.upsert(object as T);
    else if (event.type === "DELETED") this.#informer.remove(object as T);
    if (resourceVersion) this.#resourceVersion = resourceVersion;
  }
}
