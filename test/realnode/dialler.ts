// A pod that dials from inside the pod network (test/realnode/dialler.py), so a test sees what
// another workload sees. The host cannot stand in for it: a node reaches its own pods whatever a
// NetworkPolicy says (the kubelet's probes come from there), and so does everything sent from it.
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { V1Pod } from "@kubernetes/client-node";
import { Agent, request } from "undici";
import { type KubeClient, resourcePath } from "../../operator/kube-client.ts";
import { create, createNamespace, eventually } from "../support/operator.ts";
import { IMAGE_NAMES } from "./images.ts";

/** What came back: an HTTP status ("200") or the connection's error ("ConnectionRefusedError", "TimeoutError"). */
export type Answer = string;

export interface InClusterLoad {
  sent: number;
  answers: Record<Answer, number>;
}

export interface Dialler {
  readonly namespace: string;
  dial(url: string): Promise<Answer>;
  /** The same with request headers ("Name: value"), and the answer's JSON body (null when not JSON). */
  dialWith(url: string, headers: readonly string[]): Promise<{ answer: Answer; body: unknown }>;
  /** New connections to `url` at `ratePerSecond` from inside the pod until the returned stop(). */
  startLoad(url: string, ratePerSecond: number): Promise<{ stop(): Promise<InClusterLoad> }>;
}

const PORT = 9000;
const agent = new Agent({ pipelining: 0, connect: { timeout: 3_000 } });

/** Starts the dialler pod (the FastAPI image's Python) in a namespace of its own, created here. */
export async function startDialler(client: KubeClient, namespace: string): Promise<Dialler> {
  await createNamespace(client, namespace);
  await create(client, {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name: "dialler", namespace },
    spec: {
      containers: [
        {
          name: "dialler",
          image: IMAGE_NAMES.fastapi,
          imagePullPolicy: "Never",
          command: ["python", "-c", await readFile(join(import.meta.dirname, "dialler.py"), "utf8")],
          readinessProbe: { tcpSocket: { port: PORT }, periodSeconds: 1 },
        },
      ],
    },
  });
  const podIp = await eventually(
    "the dialler pod is Ready",
    async () => {
      const pod = await client.get<V1Pod>(`${resourcePath("v1", "pods", namespace)}/dialler`);
      const ready = pod.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True");
      return ready ? pod.status?.podIP : undefined;
    },
    120_000,
  );
  const ask = async <T>(
    path: string,
    query: Record<string, string> | [string, string][] = {},
  ): Promise<T> => {
    const answer = await request(`http://${podIp}:${PORT}${path}?${new URLSearchParams(query)}`, {
      dispatcher: agent,
      headersTimeout: 30_000,
      bodyTimeout: 30_000,
    });
    if (answer.statusCode !== 200) throw new Error(`dialler ${path}: ${answer.statusCode}`);
    return (await answer.body.json()) as T;
  };
  const dialWith = (url: string, headers: readonly string[]) =>
    ask<{ answer: Answer; body: unknown }>("/dial", [
      ["url", url],
      ...headers.map((h): [string, string] => ["header", h]),
    ]);
  return {
    namespace,
    dial: async (url) => (await dialWith(url, [])).answer,
    dialWith,
    async startLoad(url, ratePerSecond) {
      await ask("/load/start", { url, rate: String(ratePerSecond) });
      return { stop: () => ask<InClusterLoad>("/load/stop") };
    },
  };
}
