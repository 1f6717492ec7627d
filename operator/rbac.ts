// The operator's permissions, in one place: the Helm chart's ClusterRole is generated from this and the
// RBAC test runs the operator as a ServiceAccount bound to exactly these rules.

import type { V1PolicyRule } from "@kubernetes/client-node";
import { GROUP, PLURAL } from "../policy/schema.ts";

export const CLUSTER_ROLE_NAME = "portcullis-operator";

export const CLUSTER_ROLE_RULES: readonly V1PolicyRule[] = [
  { apiGroups: [GROUP], resources: [PLURAL], verbs: ["get", "list", "watch", "update", "patch"] },
  // status: conditions and targets; finalizers: ownerReferences on ConfigMaps point at policies.
  {
    apiGroups: [GROUP],
    resources: [`${PLURAL}/status`, `${PLURAL}/finalizers`],
    verbs: ["get", "update", "patch"],
  },
  // patch covers server-side apply; never create or delete: the workloads are the user's.
  { apiGroups: ["apps"], resources: ["deployments"], verbs: ["get", "list", "watch", "patch"] },
  { apiGroups: [""], resources: ["services"], verbs: ["get", "list", "watch", "patch"] },
  // Apply of an object that does not exist yet is a create.
  {
    apiGroups: [""],
    resources: ["configmaps"],
    verbs: ["get", "list", "watch", "create", "patch", "delete"],
  },
  // spec.networkPolicy: one per protected Deployment, the operator's own like the ConfigMaps.
  {
    apiGroups: ["networking.k8s.io"],
    resources: ["networkpolicies"],
    verbs: ["get", "list", "watch", "create", "patch", "delete"],
  },
  { apiGroups: [""], resources: ["events"], verbs: ["create", "patch"] },
  { apiGroups: ["events.k8s.io"], resources: ["events"], verbs: ["create", "patch"] },
  // Leader election.
  { apiGroups: ["coordination.k8s.io"], resources: ["leases"], verbs: ["get", "create", "update"] },
];

/** The ClusterRole object, for the chart generator and the RBAC test. */
export function clusterRole(name: string = CLUSTER_ROLE_NAME) {
  return {
    apiVersion: "rbac.authorization.k8s.io/v1",
    kind: "ClusterRole",
    metadata: { name },
    rules: CLUSTER_ROLE_RULES.map((rule) => structuredClone(rule)),
  };
}
