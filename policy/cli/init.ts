// `portcullis init --openapi openapi.json [--name NAME] [--issuer URL] [--audience AUD] [--mode DryRun]
// [--output FILE]`: a starter AccessPolicy from the app's routes. One rule per route group (first path
// segment) and method, each asking for a TODO role, deny by default: every route is covered and
// nothing is open until someone names the roles. It passes `portcullis validate` (with warnings for
// the TODO roles no mapping grants).

import { existsSync, writeFileSync } from "node:fs";
import { Document, isMap, isSeq } from "yaml";
import type { OpenApiRoute } from "../openapi.ts";
import { API_VERSION, KIND, MODES, type Mode } from "../schema.ts";
import { InputError, parseCommandLine, readRoutes } from "./input.ts";

export const INIT_USAGE =
  "usage: portcullis init --openapi openapi.json [--name NAME] [--issuer URL] [--audience AUD] [--mode Enforce|DryRun] [--output FILE]";

export const TODO_ROLE = "TODO";

interface StarterRule {
  name: string;
  paths: string[];
  methods: string[];
  anyRole: string[];
}

/** A DNS label (rule names are), from free text. */
function label(text: string): string {
  const cleaned = text
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, 50)
    .replace(/-+$/, "");
  return cleaned === "" ? "root" : cleaned;
}

/** The group of a route: its first path segment when literal, else "root". */
function groupOf(route: OpenApiRoute): string {
  const first = route.path.split("/")[1] ?? "";
  return first === "" || first.includes("{") ? "root" : label(first);
}

export function starterRules(routes: readonly OpenApiRoute[]): StarterRule[] {
  const rules = new Map<string, StarterRule>();
  const order = (group: string) => (group === "root" ? 1 : 0);
  const sorted = [...routes].sort((a, b) => order(groupOf(a)) - order(groupOf(b)));
  for (const route of sorted) {
    for (const method of route.methods) {
      // GET implies HEAD in a rule.
      if (method === "HEAD" && route.methods.includes("GET")) continue;
      const name = `${groupOf(route)}-${method.toLowerCase()}`;
      let rule = rules.get(name);
      if (rule === undefined) {
        rule = { name, paths: [], methods: [method], anyRole: [TODO_ROLE] };
        rules.set(name, rule);
      }
      if (!rule.paths.includes(route.template)) rule.paths.push(route.template);
    }
  }
  return [...rules.values()];
}

export function starterPolicy(
  rules: readonly StarterRule[],
  options: { name: string; issuer: string; audience: string; mode: Mode; source: string },
): string {
  const doc = new Document({
    apiVersion: API_VERSION,
    kind: KIND,
    metadata: { name: options.name },
    spec: {
      mode: options.mode,
      selector: { matchLabels: { app: options.name } },
      upstream: { port: 8000 },
      authentication: { issuers: [{ issuer: options.issuer, audiences: [options.audience] }] },
      authorization: { roleMappings: [], rules, defaultAction: "Deny" },
    },
  });
  doc.commentBefore = ` Starter AccessPolicy written by \`portcullis init\` from ${options.source}.
 TODO: point the issuer and audience at your IdP, map its scopes or roles to role names in
 roleMappings, and replace every ${TODO_ROLE} role. Until then every route answers 403.`;
  const authorization = doc.getIn(["spec", "authorization"], true);
  if (!isMap(authorization)) return doc.toString({ lineWidth: 0 });
  const mappings = authorization.get("roleMappings", true);
  if (isSeq(mappings)) {
    mappings.flow = true;
    mappings.comment = ' TODO, e.g. - claim: scope, map: { "orders.read": [reader] }';
  }
  const ruleNodes = authorization.get("rules", true);
  if (isSeq(ruleNodes)) {
    for (const node of ruleNodes.items) {
      if (!isMap(node)) continue;
      for (const key of ["paths", "methods", "anyRole"]) {
        const list = node.get(key, true);
        if (isSeq(list)) list.flow = true;
      }
    }
  }
  return doc.toString({ lineWidth: 0 });
}

export function initCommand(args: readonly string[]): number {
  const { values, positionals } = parseCommandLine(
    args,
    {
      openapi: { type: "string" },
      name: { type: "string", default: "my-api" },
      issuer: { type: "string", default: "https://issuer.example.com" },
      audience: { type: "string" },
      mode: { type: "string", default: "Enforce" },
      output: { type: "string" },
    },
    INIT_USAGE,
  );
  if (values.openapi === undefined || positionals.length > 0) throw new InputError(INIT_USAGE);
  const mode = values.mode;
  if (!(MODES as readonly string[]).includes(mode)) {
    throw new InputError(`--mode: expected one of ${MODES.join(", ")}, got ${JSON.stringify(mode)}`);
  }
  if (label(values.name) !== values.name) {
    throw new InputError(
      `--name: must be a DNS label (lower case, digits, "-"), got ${JSON.stringify(values.name)}`,
    );
  }
  const routes = readRoutes(values.openapi);
  const rules = starterRules(routes);
  const text = starterPolicy(rules, {
    name: values.name,
    issuer: values.issuer,
    audience: values.audience ?? `api://${values.name}`,
    mode: mode as Mode,
    source: values.openapi,
  });
  if (values.output === undefined) {
    process.stdout.write(text);
    return 0;
  }
  if (existsSync(values.output)) throw new InputError(`${values.output}: exists; not overwritten`);
  writeFileSync(values.output, text);
  console.error(`wrote ${values.output}: ${rules.length} rules for ${routes.length} paths`);
  return 0;
}
