// What the schema cannot say, as data. The CEL rules of the CRD are checked here too, so a policy
// that never passes through an API server (standalone proxy, `portcullis validate`) gets the same
// verdict; test/crd-cel.test.ts holds both to the same fixtures.

import { X509Certificate } from "node:crypto";
import { type PathTemplate, PathTemplateError, parsePathTemplate } from "./path-template.ts";
import { error, type Problem, warning } from "./problems.ts";
import { ruleCovers } from "./rule-matcher.ts";
import type { AccessPolicySpec, Rule } from "./schema.ts";

const LOOPBACK_HOSTS = new Set(["localhost", "[::1]"]);

/** Headers an identity header must never be: the proxy owns or drops them. */
const RESERVED_HEADERS = new Set([
  "authorization",
  "host",
  "connection",
  "keep-alive",
  "transfer-encoding",
  "te",
  "trailer",
  "upgrade",
  "proxy-authorization",
  "proxy-connection",
  "content-length",
  "x-forwarded-for",
  "x-forwarded-proto",
  "x-forwarded-host",
  "x-request-id",
  "traceparent",
]);

/** `nowMs` (epoch ms): when a CA certificate counts as expired; the caller's clock, never read here. */
export function checkSemantics(spec: AccessPolicySpec, nowMs: number): Problem[] {
  return [
    ...checkSelector(spec),
    ...checkPorts(spec),
    ...checkIssuers(spec, nowMs),
    ...checkRules(spec),
    ...checkRoles(spec),
    ...checkIdentityHeaders(spec),
    ...checkRateLimits(spec),
  ];
}

function checkSelector(spec: AccessPolicySpec): Problem[] {
  const { matchLabels = {}, matchExpressions = [] } = spec.selector;
  if (Object.keys(matchLabels).length === 0 && matchExpressions.length === 0) {
    return [warning("spec.selector", "empty selector: selects no Deployment")];
  }
  return matchExpressions.flatMap((req, i) => {
    const needsValues = req.operator === "In" || req.operator === "NotIn";
    const count = req.values?.length ?? 0;
    if (needsValues && count === 0) {
      return [error(`spec.selector.matchExpressions[${i}].values`, `required for operator ${req.operator}`)];
    }
    if (!needsValues && count > 0) {
      return [
        error(`spec.selector.matchExpressions[${i}].values`, `must be empty for operator ${req.operator}`),
      ];
    }
    return [];
  });
}

function checkPorts(spec: AccessPolicySpec): Problem[] {
  const problems: Problem[] = [];
  const { port: upstream } = spec.upstream;
  if (typeof upstream === "number" && (upstream < 1 || upstream > 65535)) {
    problems.push(error("spec.upstream.port", `port ${upstream} is outside 1-65535`));
  }
  if (typeof upstream === "string" && !/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(upstream)) {
    problems.push(error("spec.upstream.port", `${JSON.stringify(upstream)} is not a valid port name`));
  }
  if (upstream === spec.listener.port) {
    problems.push(error("spec.listener.port", "listener.port must differ from upstream.port"));
  }
  if (spec.sidecar.adminPort === spec.listener.port) {
    problems.push(error("spec.sidecar.adminPort", "sidecar.adminPort must differ from listener.port"));
  }
  if (spec.sidecar.adminPort === upstream) {
    problems.push(error("spec.sidecar.adminPort", "sidecar.adminPort must differ from upstream.port"));
  }
  return problems;
}

function checkIssuers(spec: AccessPolicySpec, nowMs: number): Problem[] {
  const problems: Problem[] = [];
  const seen = new Set<string>();
  spec.authentication.issuers.forEach((issuer, i) => {
    const at = `spec.authentication.issuers[${i}]`;
    if (seen.has(issuer.issuer)) problems.push(error(`${at}.issuer`, "issuer values must be unique"));
    seen.add(issuer.issuer);
    problems.push(...checkFetchUrl(`${at}.issuer`, issuer.issuer));
    if (issuer.jwksUri !== undefined) problems.push(...checkFetchUrl(`${at}.jwksUri`, issuer.jwksUri));
    if (issuer.caBundle !== undefined) {
      problems.push(...checkCaBundle(`${at}.caBundle`, issuer.caBundle, nowMs));
      if ((issuer.jwksUri ?? issuer.issuer).startsWith("http:"))
        problems.push(warning(`${at}.caBundle`, "has no effect: the keys are fetched over plain http"));
    }
  });
  return problems;
}

/** Keys are fetched from these URLs: https, or plain http only where no network is crossed. */
function checkFetchUrl(path: string, value: string): Problem[] {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return [error(path, `${JSON.stringify(value)} is not an absolute URL`)];
  }
  if (url.protocol === "https:") return [];
  if (url.protocol === "http:" && isLoopback(url.hostname)) return [];
  if (url.protocol === "http:")
    return [error(path, "must be https (plain http is allowed only for loopback hosts)")];
  return [error(path, `unsupported scheme ${url.protocol}`)];
}

/** Every PEM block a CA certificate; ones expired at `nowMs` warned about (fetches would fail on them). */
function checkCaBundle(path: string, pem: string, nowMs: number): Problem[] {
  // A pasted key (or a CSR) would be published to everyone who can read the policy: refuse it by name.
  const others = [...pem.matchAll(/-----BEGIN ([A-Z0-9 ]+)-----/g)]
    .map((match) => match[1])
    .filter((label) => label !== "CERTIFICATE");
  if (others.length > 0)
    return [
      error(
        path,
        `holds a ${others[0]} block: only CA certificates (-----BEGIN CERTIFICATE-----) belong here`,
      ),
    ];
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) return [error(path, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)")];
  const problems: Problem[] = [];
  if (blocks.length !== pem.split("-----BEGIN CERTIFICATE-----").length - 1)
    problems.push(error(path, "has a certificate without its -----END CERTIFICATE----- line"));
  blocks.forEach((block, i) => {
    let certificate: X509Certificate;
    try {
      certificate = new X509Certificate(block);
    } catch {
      problems.push(error(path, `certificate ${i + 1} does not parse as X.509`));
      return;
    }
    if (!certificate.ca)
      problems.push(
        error(
          path,
          `certificate ${i + 1} (${certificate.subject.replaceAll("\n", ", ")}) is not a CA certificate`,
        ),
      );
    else if (Date.parse(certificate.validTo) < nowMs)
      problems.push(warning(path, `certificate ${i + 1} expired on ${certificate.validTo}`));
  });
  return problems;
}

function isLoopback(hostname: string): boolean {
  return LOOPBACK_HOSTS.has(hostname) || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(hostname);
}

function checkRules(spec: AccessPolicySpec): Problem[] {
  const problems: Problem[] = [];
  const names = new Set<string>();
  const compiled: (PathTemplate[] | undefined)[] = [];
  spec.authorization.rules.forEach((rule, i) => {
    const at = `spec.authorization.rules[${i}]`;
    if (names.has(rule.name))
      problems.push(error(`${at}.name`, `duplicate rule name ${JSON.stringify(rule.name)}`));
    names.add(rule.name);
    const kinds = [
      rule.public === true,
      rule.deny === true,
      rule.anyRole !== undefined,
      rule.allRoles !== undefined,
    ];
    if (kinds.filter(Boolean).length !== 1) {
      problems.push(error(at, "a rule sets exactly one of public: true, deny: true, anyRole, allRoles"));
    }
    const templates: PathTemplate[] = [];
    rule.paths.forEach((path, j) => {
      try {
        templates.push(parsePathTemplate(path));
      } catch (e) {
        if (!(e instanceof PathTemplateError)) throw e;
        problems.push(error(`${at}.paths[${j}]`, e.message));
      }
    });
    compiled.push(templates.length === rule.paths.length ? templates : undefined);
  });
  problems.push(...checkShadowing(spec.authorization.rules, compiled));
  return problems;
}

/** A later rule is dead when an earlier one matches every request it would. */
function checkShadowing(
  rules: readonly Rule[],
  compiled: readonly (PathTemplate[] | undefined)[],
): Problem[] {
  const problems: Problem[] = [];
  rules.forEach((later, j) => {
    const laterPaths = compiled[j];
    if (!laterPaths) return;
    for (let i = 0; i < j; i++) {
      const earlier = rules[i];
      const earlierPaths = compiled[i];
      if (!earlier || !earlierPaths || !methodsCover(earlier.methods, later.methods)) continue;
      if (laterPaths.every((p) => earlierPaths.some((q) => ruleCovers(q, p)))) {
        problems.push(
          warning(
            `spec.authorization.rules[${j}]`,
            `rule ${JSON.stringify(later.name)} never applies: rule ${JSON.stringify(earlier.name)} comes first and matches all its requests`,
          ),
        );
        return;
      }
    }
  });
  return problems;
}

function methodsCover(
  general: readonly string[] | undefined,
  specific: readonly string[] | undefined,
): boolean {
  if (general === undefined) return true;
  if (specific === undefined) return false;
  const covered = new Set(general);
  if (covered.has("GET")) covered.add("HEAD");
  return specific.every((m) => covered.has(m));
}

function checkRoles(spec: AccessPolicySpec): Problem[] {
  const problems: Problem[] = [];
  const issuers = new Set(spec.authentication.issuers.map((i) => i.issuer));
  const produced = new Set<string>();
  spec.authorization.roleMappings.forEach((mapping, i) => {
    for (const roles of Object.values(mapping.map)) for (const role of roles) produced.add(role);
    if (mapping.issuer !== undefined && !issuers.has(mapping.issuer)) {
      problems.push(
        warning(
          `spec.authorization.roleMappings[${i}].issuer`,
          `${JSON.stringify(mapping.issuer)} is not a configured issuer: this mapping never applies`,
        ),
      );
    }
  });
  spec.authorization.rules.forEach((rule, i) => {
    for (const field of ["anyRole", "allRoles"] as const) {
      (rule[field] ?? []).forEach((role, j) => {
        if (!produced.has(role)) {
          problems.push(
            warning(
              `spec.authorization.rules[${i}].${field}[${j}]`,
              `no roleMapping grants role ${JSON.stringify(role)}`,
            ),
          );
        }
      });
    }
  });
  return problems;
}

function checkIdentityHeaders(spec: AccessPolicySpec): Problem[] {
  const problems: Problem[] = [];
  const headers = spec.identityHeaders;
  const named: [string, string][] = [
    ["spec.identityHeaders.subject", headers.subject],
    ["spec.identityHeaders.roles", headers.roles],
    ["spec.identityHeaders.scopes", headers.scopes],
    ["spec.identityHeaders.clientId", headers.clientId],
    ["spec.identityHeaders.issuer", headers.issuer],
    ...Object.entries(headers.claims ?? {}).map(([claim, header]): [string, string] => [
      `spec.identityHeaders.claims[${JSON.stringify(claim)}]`,
      header,
    ]),
  ];
  if (headers.assertion) named.push(["spec.identityHeaders.assertion.header", headers.assertion.header]);
  const seen = new Map<string, string>();
  for (const [path, header] of named) {
    const canonical = canonicalHeaderName(header);
    if (RESERVED_HEADERS.has(canonical)) {
      problems.push(error(path, `${header} is managed by the proxy and cannot carry identity`));
    }
    const other = seen.get(canonical);
    if (other !== undefined) problems.push(error(path, `${header} is already used by ${other}`));
    else seen.set(canonical, path);
  }
  return problems;
}

/** The spelling-insensitive form used to strip spoofed headers: lower case, `_` and `.` as `-`. */
export function canonicalHeaderName(name: string): string {
  return name.toLowerCase().replace(/[_.]/g, "-");
}

function checkRateLimits(spec: AccessPolicySpec): Problem[] {
  const problems: Problem[] = [];
  const rules = new Map(spec.authorization.rules.map((r) => [r.name, r]));
  const names = new Set<string>();
  spec.rateLimits.forEach((limit, i) => {
    const at = `spec.rateLimits[${i}]`;
    if (names.has(limit.name))
      problems.push(error(`${at}.name`, `duplicate rate limit name ${JSON.stringify(limit.name)}`));
    names.add(limit.name);
    limit.rules.forEach((name, j) => {
      const rule = rules.get(name);
      if (!rule) problems.push(error(`${at}.rules[${j}]`, `no rule named ${JSON.stringify(name)}`));
      else if (rule.public === true && (limit.key === "subject" || limit.key === "clientId")) {
        problems.push(
          warning(
            `${at}.key`,
            `rule ${JSON.stringify(name)} is public: requests carry no ${limit.key}, key by ip instead`,
          ),
        );
      }
    });
    if (limit.burst !== undefined && limit.burst < 1)
      problems.push(error(`${at}.burst`, "must be at least 1"));
  });
  return problems;
}
