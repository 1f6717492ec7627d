import { execFile } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { formatProblem } from "../policy/problems.ts";
import { validatePolicyObject, validatePolicyText } from "../policy/validate.ts";

const run = promisify(execFile);
const root = join(import.meta.dirname, "..");
const examplePolicy = join(root, "examples/fastapi/policy.yaml");
const fiveMistakes = join(root, "test/fixtures/five-mistakes.yaml");

async function cli(...args: string[]) {
  try {
    const { stdout, stderr } = await run(process.execPath, [join(root, "policy/cli.ts"), ...args]);
    return { code: 0, stdout, stderr };
  } catch (e) {
    const failed = e as { code: number; stdout: string; stderr: string };
    return { code: failed.code, stdout: failed.stdout, stderr: failed.stderr };
  }
}

describe("validatePolicyText", () => {
  it("accepts the example policy and applies defaults", () => {
    const { policy, problems } = validatePolicyText(readFileSync(examplePolicy, "utf8"), Date.now());
    expect(problems.filter((p) => p.severity === "error")).toEqual([]);
    expect(policy?.spec.authentication.issuers[0]?.clockSkewSeconds).toBe(30);
    expect(policy?.spec.sidecar.adminPort).toBe(9901);
    expect(policy?.spec.identityHeaders.issuer).toBe("X-Auth-Issuer");
    expect(policy?.spec.listener.requestIdHeaders).toEqual(["X-Request-Id", "X-Correlation-ID"]);
  });

  it("accepts the design draft as it stands", () => {
    const { problems } = validatePolicyText(
      readFileSync("/work/shared/design/accesspolicy.example.yaml", "utf8"),
      Date.now(),
    );
    expect(problems.filter((p) => p.severity === "error")).toEqual([]);
  });

  it("reports every one of five mistakes with its path", () => {
    const { policy, problems } = validatePolicyText(readFileSync(fiveMistakes, "utf8"), Date.now());
    expect(policy).toBeUndefined();
    const errors = problems.filter((p) => p.severity === "error").map((p) => `${p.path}: ${p.message}`);
    expect(errors).toEqual(
      expect.arrayContaining([
        "spec.listener.port: listener.port must differ from upstream.port",
        "spec.authentication.issuers[0].issuer: must be https (plain http is allowed only for loopback hosts)",
        'spec.authorization.rules[2].name: duplicate rule name "read"',
        'spec.authorization.rules[2].paths[0]: unknown converter "pth"',
        "spec.authorization.rules[3]: a rule sets exactly one of public: true, deny: true, anyRole, allRoles",
      ]),
    );
    expect(errors).toHaveLength(5);
  });

  it("reports schema errors with precise paths, all at once", () => {
    const { problems } = validatePolicyObject(
      {
        apiVersion: "portcullis.dev/v1alpha1",
        kind: "AccessPolicy",
        spec: {
          selector: { matchLabels: { app: "x" } },
          upstream: { port: 8000, timeoutSecond: 3 },
          authentication: { issuers: [] },
          authorization: {
            defaultAction: "Maybe",
            rules: [{ name: "a", paths: [3], methods: ["GOT"], public: true }],
          },
        },
      },
      Date.now(),
    );
    expect(problems.map(formatProblem)).toEqual([
      "error: spec.upstream.timeoutSecond: unknown field",
      "error: spec.authentication.issuers: must have at least 1 item",
      "error: spec.authorization.rules[0].paths[0]: expected string (got 3)",
      'error: spec.authorization.rules[0].methods[0]: must be one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE, CONNECT (got "GOT")',
      'error: spec.authorization.defaultAction: must be one of Deny, AllowAuthenticated (got "Maybe")',
    ]);
  });

  it("warns about roles no mapping grants and rules an earlier rule shadows", () => {
    const text = readFileSync(examplePolicy, "utf8")
      .replace("anyRole: [writer]", "anyRole: [writer, auditor]")
      .replace('paths: ["/internal/{rest:path}"]', 'paths: ["/admin/{rest:path}"]');
    const { policy, problems } = validatePolicyText(text, Date.now());
    expect(policy).toBeDefined();
    expect(problems.map(formatProblem)).toEqual([
      'warning: spec.authorization.rules[6]: rule "internal" never applies: rule "admin" comes first and matches all its requests',
      'warning: spec.authorization.rules[2].anyRole[1]: no roleMapping grants role "auditor"',
    ]);
  });

  it("knows a rule's trailing '/' does not matter: /audit/ after /audit never applies", () => {
    const text = readFileSync(examplePolicy, "utf8").replace('paths: ["/me"]', 'paths: ["/audit/"]');
    const { problems } = validatePolicyText(text, Date.now());
    expect(problems.map(formatProblem)).toEqual([
      'warning: spec.authorization.rules[8]: rule "me" never applies: rule "audit" comes first and matches all its requests',
    ]);
  });

  it.each([
    ["not YAML", "a: [\n", "not valid YAML"],
    ["a list", "- 1\n", "expected an AccessPolicy (a YAML mapping), got a list"],
    ["empty", "", "expected an AccessPolicy (a YAML mapping), got null"],
    ["wrong kind", "apiVersion: v1\nkind: ConfigMap\n", 'apiVersion: must be "portcullis.dev/v1alpha1"'],
    ["duplicate keys", "kind: A\nkind: B\n", "not valid YAML"],
  ])("rejects %s with a clear message", (_, text, message) => {
    const { policy, problems } = validatePolicyText(text, Date.now());
    expect(policy).toBeUndefined();
    expect(problems.map(formatProblem).join("\n")).toContain(message);
  });

  it("never throws on hostile shapes", () => {
    const hostile: unknown[] = [
      null,
      42,
      "str",
      { apiVersion: "portcullis.dev/v1alpha1", kind: "AccessPolicy", spec: null },
      {
        apiVersion: "portcullis.dev/v1alpha1",
        kind: "AccessPolicy",
        spec: { authorization: { rules: "x" } },
      },
      JSON.parse('{"__proto__": {"polluted": true}, "spec": {"constructor": {"prototype": {}}}}'),
    ];
    for (const value of hostile) expect(validatePolicyObject(value, Date.now()).policy).toBeUndefined();
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });
});

describe("portcullis validate", () => {
  it("prints OK for the example policy and exits 0", async () => {
    const { code, stdout } = await cli("validate", examplePolicy);
    expect(code).toBe(0);
    expect(stdout).toContain(`${examplePolicy}: OK`);
  });

  it("lists all five mistakes with their paths and exits non-zero", async () => {
    const { code, stdout } = await cli("validate", fiveMistakes);
    expect(code).toBe(1);
    expect(stdout.match(/^.*: error: spec\..*$/gm)).toHaveLength(5);
    expect(stdout).toContain("5 errors");
  });

  it("gives a clear error, not a stack trace, for a non-YAML or missing file", async () => {
    const dir = await mkdtemp(join(tmpdir(), "portcullis-"));
    const binary = join(dir, "image.png");
    writeFileSync(
      binary,
      Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0xff, 0x7b, 0x5b]),
    );
    const bad = await cli("validate", binary);
    expect(bad.code).toBe(1);
    expect(bad.stdout + bad.stderr).not.toMatch(/\n\s+at /);
    expect(bad.stdout).toMatch(/error: \(document\)/);
    const missing = await cli("validate", join(dir, "nope.yaml"));
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("no such file");
    expect((await cli()).code).toBe(2);
  });
});
