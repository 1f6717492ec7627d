// Status conditions per the Kubernetes API conventions: one entry per type, lastTransitionTime moves
// only when the status does, so rewriting the same verdict writes nothing new.

import type { Condition } from "../policy/schema.ts";

export const CONDITION_TYPES = ["Accepted", "Ready", "Conflict", "AppPortExposed"] as const;
export type ConditionType = (typeof CONDITION_TYPES)[number];

/** A condition as decided by one reconcile, before it meets the previous status. */
export interface ConditionVerdict {
  type: ConditionType;
  status: Condition["status"];
  reason: string;
  message: string;
}

/**
 * The conditions to write, in the order given. A verdict whose status equals the previous
 * condition's keeps its lastTransitionTime; any other gets `now`. Types not given are dropped.
 */
export function nextConditions(
  previous: readonly Condition[] | undefined,
  verdicts: readonly ConditionVerdict[],
  generation: number | undefined,
  now: string,
): Condition[] {
  return verdicts.map((verdict) => {
    const before = findCondition(previous, verdict.type);
    const lastTransitionTime =
      before !== undefined && before.status === verdict.status && before.lastTransitionTime
        ? before.lastTransitionTime
        : now;
    const condition: Condition = {
      type: verdict.type,
      status: verdict.status,
      reason: verdict.reason,
      message: verdict.message,
      lastTransitionTime,
    };
    if (generation !== undefined) condition.observedGeneration = generation;
    return condition;
  });
}

export function findCondition(
  conditions: readonly Condition[] | undefined,
  type: string,
): Condition | undefined {
  return conditions?.find((c) => c.type === type);
}

/** RFC 3339 in whole seconds, as Kubernetes writes metav1.Time. */
export function kubeTime(date: Date): string {
  return date.toISOString().replace(/\.\d+Z$/, "Z");
}
