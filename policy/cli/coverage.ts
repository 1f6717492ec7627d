// `portcullis coverage <policy> --openapi openapi.json [--strict]`: the policy held against the app's
// routes (policy/coverage.ts). Exit 1 when an operation falls to the default action (or, with
// --strict, on any finding); rule paths matching no route and method differences are warnings.

import { checkCoverage } from "../coverage.ts";
import { InputError, parseCommandLine, readPolicy, readRoutes } from "./input.ts";

export const COVERAGE_USAGE = "usage: portcullis coverage <policy.yaml> --openapi openapi.json [--strict]";

export function coverageCommand(args: readonly string[]): number {
  const { values, positionals } = parseCommandLine(
    args,
    { openapi: { type: "string" }, strict: { type: "boolean" } },
    COVERAGE_USAGE,
  );
  const [policyFile, ...rest] = positionals;
  if (policyFile === undefined || rest.length > 0 || values.openapi === undefined) {
    throw new InputError(COVERAGE_USAGE);
  }
  const policy = readPolicy(policyFile);
  const routes = readRoutes(values.openapi);
  const coverage = checkCoverage(policy, routes);

  console.log(
    `${policyFile} against ${values.openapi}: ${routes.length} paths, ${coverage.decidedBy.length} operations`,
  );
  for (const { method, path, rule } of coverage.decidedBy) {
    console.log(
      `  ${method.padEnd(7)} ${path.padEnd(32)} ${rule ?? `(none: defaultAction ${policy.defaultAction})`}`,
    );
  }
  for (const { method, path } of coverage.uncovered) {
    console.log(
      `error: ${method} ${path}: no rule covers it; it falls to defaultAction ${policy.defaultAction}`,
    );
  }
  for (const { rule, template } of coverage.deadPaths) {
    console.log(`warning: rule ${rule}: path ${template} matches no route in the OpenAPI document`);
  }
  for (const { rule, path, extra, served } of coverage.methodDifferences) {
    console.log(
      `warning: rule ${rule}: names ${extra.join(", ")} for ${path}, which serves only ${served.join(", ")}`,
    );
  }
  const warnings = coverage.deadPaths.length + coverage.methodDifferences.length;
  console.log(
    `${coverage.uncovered.length} uncovered operation${coverage.uncovered.length === 1 ? "" : "s"}, ${warnings} warning${warnings === 1 ? "" : "s"}`,
  );
  if (coverage.uncovered.length > 0) return 1;
  return values.strict === true && warnings > 0 ? 1 : 0;
}
