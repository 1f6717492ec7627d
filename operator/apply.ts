// The write edge: server-side apply under one field manager, the status subresource, the finalizer,
// Events. Each write is skipped when it cannot change anything, so an idle operator writes nothing:
// applies remember the intent they sent and the resourceVersion it produced; status is compared
// with what is served; a release is skipped when the manager owns nothing on the object.
import { createHash } from "node:crypto";
import { PatchStrategy } from "@kubernetes/client-node";
import { type KubeClient, type KubeObject, resourcePath } from "./kube-client.ts";

export interface ObjectReference {
  apiVersion?: string;
  kind?: string;
  name?: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
}

export interface EventIntent {
  type: "Normal" | "Warning";
  reason: string;
  message: string;
  regarding: ObjectReference;
}

export type WriteResult = "written" | "unchanged";

export interface ApplierOptions {
  fieldManager: string;
  /** The Events' reportingInstance (the replica). */
  instance: string;
  now?: () => number;
  /** The same Event (object, reason, message) is not repeated within this window. */
  eventDedupMs?: number;
}

const PLURALS: Readonly<Record<string, string>> = {
  ConfigMap: "configmaps",
  Deployment: "deployments",
  Service: "services",
  AccessPolicy: "accesspolicies",
  Event: "events",
  NetworkPolicy: "networkpolicies",
};

/** The path of an object from its apiVersion, kind and metadata. */
export function objectPath(object: KubeObject, subresource?: string): string {
  const { apiVersion, kind } = object;
  const name = object.metadata?.name;
  const plural = kind === undefined ? undefined : PLURALS[kind];
  if (!apiVersion || !plural || !name) {
    throw new Error(`cannot address ${kind ?? "an object without kind"} ${name ?? "(no name)"}`);
  }
  const path = resourcePath(apiVersion, plural, object.metadata?.namespace, name);
  return subresource === undefined ? path : `${path}/${subresource}`;
}

export class Applier {
  readonly #client: KubeClient;
  readonly #fieldManager: string;
  readonly #instance: string;
  readonly #now: () => number;
  readonly #eventDedupMs: number;
  /** Per object path: the digest of the last intent applied and the resourceVersion it produced. */
  readonly #applied = new Map<string, { digest: string; resourceVersion: string | undefined }>();
  readonly #recentEvents = new Map<string, number>();

  constructor(client: KubeClient, options: ApplierOptions) {
    this.#client = client;
    this.#fieldManager = options.fieldManager;
    this.#instance = options.instance;
    this.#now = options.now ?? Date.now;
    this.#eventDedupMs = options.eventDedupMs ?? 10 * 60_000;
  }

  /**
   * Server-side applies `intent` (only the fields we own; an intent without fields releases them).
   * `current` is the object as cached, or undefined when it does not exist (yet).
   * `force` takes over fields another manager owns: only for fields nobody else should own.
   */
  async apply(intent: KubeObject, current: KubeObject | undefined, force: boolean): Promise<WriteResult> {
    const path = objectPath(intent);
    const digest = digestOf(intent);
    const memo = this.#applied.get(path);
    const currentVersion = current?.metadata?.resourceVersion;
    if (memo && memo.digest === digest && current !== undefined && memo.resourceVersion === currentVersion) {
      return "unchanged";
    }
    if (isEmptyIntent(intent) && (current === undefined || !managedBy(current, this.#fieldManager))) {
      this.#applied.set(path, { digest, resourceVersion: currentVersion });
      return "unchanged";
    }
    const result = await this.#client.request<KubeObject>("PATCH", path, {
      query: { fieldManager: this.#fieldManager, force: force ? true : undefined },
      body: intent,
      contentType: PatchStrategy.ServerSideApply,
    });
    this.#applied.set(path, { digest, resourceVersion: result?.metadata?.resourceVersion });
    return result?.metadata?.resourceVersion === currentVersion ? "unchanged" : "written";
  }

  /** Applies the status subresource; skipped when the served status already equals it. */
  async applyStatus(object: KubeObject, status: unknown): Promise<WriteResult> {
    if (deepEqual(object.status, status)) return "unchanged";
    const intent = {
      apiVersion: object.apiVersion,
      kind: object.kind,
      metadata: { name: object.metadata?.name, namespace: object.metadata?.namespace },
      status,
    };
    await this.#client.request<KubeObject>("PATCH", objectPath(intent, "status"), {
      // The status is entirely the operator's: nobody else has a say in it.
      query: { fieldManager: this.#fieldManager, force: true },
      body: intent,
      contentType: PatchStrategy.ServerSideApply,
    });
    return "written";
  }

  /**
   * Adds or removes a finalizer with a JSON merge patch carrying the resourceVersion it was computed
   * from: a concurrent change to the list fails with 409 instead of being overwritten.
   */
  async setFinalizer(object: KubeObject, finalizer: string, present: boolean): Promise<WriteResult> {
    const finalizers = object.metadata?.finalizers ?? [];
    if (finalizers.includes(finalizer) === present) return "unchanged";
    const next = present ? [...finalizers, finalizer] : finalizers.filter((f) => f !== finalizer);
    await this.#client.request<KubeObject>("PATCH", objectPath(object), {
      query: { fieldManager: this.#fieldManager },
      body: { metadata: { resourceVersion: object.metadata?.resourceVersion, finalizers: next } },
      contentType: PatchStrategy.MergePatch,
    });
    return "written";
  }

  /** Creates a core/v1 Event about `regarding`, unless the same one was recorded recently. */
  async recordEvent(event: EventIntent): Promise<WriteResult> {
    const { regarding } = event;
    const namespace = regarding.namespace ?? "default";
    const now = this.#now();
    const key = JSON.stringify([regarding.kind, namespace, regarding.name, event.reason, event.message]);
    for (const [seen, at] of this.#recentEvents) {
      if (now - at >= this.#eventDedupMs) this.#recentEvents.delete(seen);
    }
    if (this.#recentEvents.has(key)) return "unchanged";
    const timestamp = new Date(now).toISOString().replace(/\.\d{3}Z$/, "Z");
    await this.#client.request("POST", resourcePath("v1", "events", namespace), {
      body: {
        apiVersion: "v1",
        kind: "Event",
        metadata: { generateName: `${regarding.name ?? "portcullis"}.`, namespace },
        involvedObject: { ...regarding, namespace },
        type: event.type,
        reason: event.reason,
        // The API server caps Event messages at 1 KiB.
        message: event.message.length > 1024 ? `${event.message.slice(0, 1021)}...` : event.message,
        source: { component: "portcullis-operator" },
        reportingComponent: "portcullis.dev/operator",
        reportingInstance: this.#instance.slice(0, 128),
        firstTimestamp: timestamp,
        lastTimestamp: timestamp,
        count: 1,
      },
    });
    this.#recentEvents.set(key, now);
    return "written";
  }

  /** Forgets what was applied to an object (it was deleted, or another writer is expected). */
  forget(object: KubeObject): void {
    if (!object.apiVersion || !object.kind || !object.metadata?.name || !PLURALS[object.kind]) return;
    this.#applied.delete(objectPath(object));
  }
}

/** An apply intent with nothing but identity in it: applying it releases every field we own. */
export function isEmptyIntent(intent: KubeObject): boolean {
  const { apiVersion: _a, kind: _k, metadata, ...rest } = intent;
  const { name: _n, namespace: _ns, ...otherMetadata } = metadata ?? {};
  return Object.keys(rest).length === 0 && Object.keys(otherMetadata).length === 0;
}

/** Whether `manager` owns any field on the object itself (not its status) through apply. */
export function managedBy(object: KubeObject, manager: string): boolean {
  return (object.metadata?.managedFields ?? []).some(
    (entry) => entry.manager === manager && (entry.subresource ?? "") === "",
  );
}

function digestOf(value: unknown): string {
  return createHash("sha256").update(canonicalJson(value)).digest("base64url");
}

/** JSON with object keys sorted: equal values, equal text. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(",")}}`;
  }
  return JSON.stringify(value) ?? "null";
}

export function deepEqual(a: unknown, b: unknown): boolean {
  return canonicalJson(a) === canonicalJson(b);
}
