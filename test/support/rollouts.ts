// What kube-controller-manager and the kubelets would do for the operator's tests, where there are
// neither (envtest runs only etcd and kube-apiserver): each Deployment's status is set to "every pod
// runs the current template" through the status subresource, as the Deployment controller reports a
// finished rollout. Only the status, so everything the operator reads and writes stays real.
import type { KubeClient, KubeObject } from "../../operator/kube-client.ts";

type Deployment = KubeObject & {
  spec?: { replicas?: number };
  status?: { observedGeneration?: number };
};

export interface RolloutStandIn {
  /** Finishes the rollouts of Deployments in `namespace` from now on (it starts with every namespace but the held ones). */
  release(namespace: string): void;
  stop(): Promise<void>;
}

export function rolledOutStatus(d: Deployment): Record<string, number> {
  const replicas = d.spec?.replicas ?? 1;
  return {
    observedGeneration: d.metadata?.generation ?? 0,
    replicas,
    updatedReplicas: replicas,
    readyReplicas: replicas,
    availableReplicas: replicas,
  };
}

/** Marks one Deployment's current generation as rolled out. */
export async function finishRollout(client: KubeClient, namespace: string, name: string): Promise<void> {
  const path = `/apis/apps/v1/namespaces/${namespace}/deployments/${name}`;
  const d = await client.get<Deployment>(path);
  await client.request("PUT", `${path}/status`, { body: { ...d, status: rolledOutStatus(d) } });
}

/**
 * Polls every Deployment and finishes each rollout it finds unfinished, except in `held` namespaces
 * (a test there finishes them itself, to see what happens before).
 */
export function startRolloutStandIn(client: KubeClient, held: readonly string[] = []): RolloutStandIn {
  const holding = new Set(held);
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      try {
        const list = await client.get<{ items: Deployment[] }>("/apis/apps/v1/deployments");
        for (const d of list.items) {
          const namespace = d.metadata?.namespace ?? "";
          const name = d.metadata?.name ?? "";
          if (holding.has(namespace) || (d.status?.observedGeneration ?? 0) >= (d.metadata?.generation ?? 0))
            continue;
          await finishRollout(client, namespace, name).catch(() => undefined);
        }
      } catch {
        // The API server restarting under a test: try again on the next round.
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  })();
  return {
    release(namespace) {
      holding.delete(namespace);
    },
    async stop() {
      stopped = true;
      await loop;
    },
  };
}
