// Label selector semantics as the API server defines them for set-based selectors, with one
// deliberate difference: an empty selector selects nothing (Kubernetes would select everything,
// and a policy that silently wraps every Deployment in the namespace is never what was meant).

/** Structural: fits both the AccessPolicy's selector and client-node's V1LabelSelector. */
export interface LabelSelectorLike {
  matchLabels?: Readonly<Record<string, string>>;
  matchExpressions?: readonly { key: string; operator: string; values?: readonly string[] }[];
}

export function matchesSelector(
  selector: LabelSelectorLike | undefined,
  labels: Readonly<Record<string, string>> | undefined,
): boolean {
  if (selector === undefined || isEmptySelector(selector)) return false;
  const have = labels ?? {};
  // Loops, not Object.entries: this runs for every Deployment x policy pair of a namespace.
  const { matchLabels } = selector;
  for (const key in matchLabels) {
    if (!Object.hasOwn(matchLabels, key)) continue;
    if (!Object.hasOwn(have, key) || have[key] !== matchLabels[key]) return false;
  }
  for (const { key, operator, values = [] } of selector.matchExpressions ?? []) {
    const present = Object.hasOwn(have, key);
    const value = have[key];
    switch (operator) {
      case "In":
        if (!present || value === undefined || !values.includes(value)) return false;
        break;
      case "NotIn":
        // As in Kubernetes: a missing label is "not in" any set.
        if (present && value !== undefined && values.includes(value)) return false;
        break;
      case "Exists":
        if (!present) return false;
        break;
      case "DoesNotExist":
        if (present) return false;
        break;
      default:
        // An operator the API server would have rejected: select nothing rather than guess.
        return false;
    }
  }
  return true;
}

export function isEmptySelector(selector: LabelSelectorLike): boolean {
  return !hasOwnKeys(selector.matchLabels) && (selector.matchExpressions ?? []).length === 0;
}

/** A Service's `spec.selector` (equality only): empty or absent selects no pods. */
export function matchesServiceSelector(
  selector: Readonly<Record<string, string>> | undefined,
  labels: Readonly<Record<string, string>> | undefined,
): boolean {
  if (!hasOwnKeys(selector)) return false;
  const have = labels ?? {};
  for (const key in selector) {
    if (!Object.hasOwn(selector, key)) continue;
    if (!Object.hasOwn(have, key) || have[key] !== selector[key]) return false;
  }
  return true;
}

function hasOwnKeys(map: Readonly<Record<string, string>> | undefined): boolean {
  for (const key in map) if (Object.hasOwn(map, key)) return true;
  return false;
}
