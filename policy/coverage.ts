// A policy held against the app's OpenAPI document: operations no rule covers (they fall to the
// default action), rule paths that match no route, and methods a rule names on a route that does not
// serve them. Each route is probed with a sample path (samplePath) through the proxy's own matcher,
// so "covered" means "the proxy picks this rule for a request to this route".

import type { CompiledPolicy } from "./compile.ts";
import { type OpenApiRoute, samplePath } from "./openapi.ts";
import { compileRules } from "./rule-matcher.ts";

export interface UncoveredOperation {
  method: string;
  path: string;
}

export interface DeadRulePath {
  rule: string;
  template: string;
}

export interface MethodDifference {
  rule: string;
  path: string;
  /** Methods the rule names that the route does not serve. */
  extra: string[];
  /** What the route serves. */
  served: string[];
}

export interface Coverage {
  /** Operation -> the rule that decides it (undefined: the default action); one per operation. */
  decidedBy: { method: string; path: string; rule: string | undefined }[];
  uncovered: UncoveredOperation[];
  deadPaths: DeadRulePath[];
  methodDifferences: MethodDifference[];
}

export function checkCoverage(policy: CompiledPolicy, routes: readonly OpenApiRoute[]): Coverage {
  const decidedBy: Coverage["decidedBy"] = [];
  const uncovered: UncoveredOperation[] = [];
  for (const route of routes) {
    const sample = samplePath(route.template);
    for (const method of route.methods) {
      const rule = policy.matchRule(method, sample)?.rule.name;
      decidedBy.push({ method, path: route.path, rule });
      if (rule === undefined) uncovered.push({ method, path: route.path });
    }
  }

  // The routes as rules of their own: which route would a request to a rule's path reach?
  const routeMatcher = compileRules(routes.map((r) => ({ name: r.path, paths: [r.template] })));
  const rules = policy.spec.authorization.rules;
  const deadPaths: DeadRulePath[] = [];
  const methodDifferences: MethodDifference[] = [];
  for (const rule of rules) {
    for (const template of rule.paths) {
      const reached = routeMatcher.match("GET", samplePath(template));
      if (reached === undefined) deadPaths.push({ rule: rule.name, template });
    }
    if (rule.methods === undefined) continue;
    const own = compileRules([{ name: rule.name, paths: rule.paths }]);
    for (const route of routes) {
      if (own.match("GET", samplePath(route.template)) === undefined) continue;
      // Exactly the methods the document lists: FastAPI adds no HEAD to GET routes.
      const extra = rule.methods.filter((m) => !route.methods.includes(m));
      if (extra.length > 0) {
        methodDifferences.push({ rule: rule.name, path: route.path, extra, served: route.methods });
      }
    }
  }
  return { decidedBy, uncovered, deadPaths, methodDifferences };
}
