// `portcullis test`: the example's case table passes against the example policy, finds the three
// mistakes of a policy that still validates, and tells input errors (exit 2) from failures (exit 1).
import { writeFileSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { expectInputErrors, portcullis } from "./support/cli.ts";

const policy = "examples/fastapi/policy.yaml";
const cases = "examples/fastapi/policy-cases.yaml";
const mistaken = "test/fixtures/three-policy-mistakes.yaml";

async function scratch(files: Record<string, string>): Promise<Record<string, string>> {
  const dir = await mkdtemp(join(tmpdir(), "portcullis-cli-test-"));
  const paths: Record<string, string> = {};
  for (const [name, text] of Object.entries(files)) {
    paths[name] = join(dir, name);
    writeFileSync(paths[name], text);
  }
  return paths;
}

describe("portcullis test", () => {
  it("passes every case of the example table and exits 0", async () => {
    const { code, stdout, stderr } = await portcullis("test", policy, cases);
    expect(stderr).toBe("");
    expect(code).toBe(0);
    expect(stdout).toContain("PASS  a writer may not delete");
    expect(stdout).toContain("PASS  a reader may not read the audit log");
    expect(stdout).toContain("PASS  a reader asks who they are");
    expect(stdout.trim().split("\n").at(-1)).toBe(`11 passed, 0 failed (11 cases, ${policy})`);
  });

  it("finds a policy's mistakes that validation cannot, with expected vs got, and exits 1", async () => {
    expect((await portcullis("validate", mistaken)).code).toBe(0);
    const { code, stdout } = await portcullis("test", mistaken, cases);
    expect(code).toBe(1);
    expect(stdout).toContain(
      [
        "FAIL  a reader lists orders: GET /orders/7",
        "        decision: expected allow, got 403 deny (no-rule)",
        "        rule:     expected read-orders, got no rule",
      ].join("\n"),
    );
    expect(stdout).toContain(
      [
        "FAIL  a writer may not delete: DELETE /orders/7",
        "        decision: expected 403, got allow (roles)",
        "        reason:   expected missing-roles, got roles",
        "        why:      rule delete-order matches DELETE /orders/7 (/orders/{order_id:int}); it needs a token with any of [writer]; the token maps to roles [reader, writer]",
      ].join("\n"),
    );
    expect(stdout).toContain("PASS  internal routes are closed even to admins");
    // The fixture has no audit rule either (cli-coverage.test.ts finds GET /audit/ uncovered).
    expect(stdout).toContain("FAIL  an admin reads the audit router's /audit/: GET /audit/");
    expect(stdout).toContain(`6 passed, 5 failed (11 cases, ${mistaken})`);
  });

  it("checks roles as a set, and reports a wrong one", async () => {
    const files = await scratch({
      "cases.yaml": `cases:
  - name: roles in any order
    method: GET
    path: /orders
    token: { sub: alice, scope: "orders.write" }
    expect: { decision: allow, roles: [writer, reader] }
  - name: wrong roles
    method: GET
    path: /orders
    token: { sub: alice, scope: "orders.read" }
    expect: { decision: allow, roles: [admin] }
  - name: no token has no roles
    method: GET
    path: /orders
    expect: { decision: deny, roles: [] }
`,
    });
    const { code, stdout } = await portcullis("test", policy, files["cases.yaml"]!);
    expect(code).toBe(1);
    expect(stdout).toContain("PASS  roles in any order");
    expect(stdout).toContain("roles:    expected [admin], got [reader]");
    expect(stdout).toContain("roles:    expected [], got no token");
  });

  it("refuses a token case as the proxy does: no sub, another audience, expired claims", async () => {
    const files = await scratch({
      "cases.yaml": `cases:
  - name: no subject
    method: GET
    path: /orders
    token: { scope: orders.read }
    expect: { decision: 401, reason: missing_sub }
  - name: another audience
    method: GET
    path: /orders
    token: { sub: alice, aud: api://other, scope: orders.read }
    expect: { decision: 401, reason: bad_audience }
  - name: expired claims
    method: GET
    path: /orders
    claims: { iss: "http://127.0.0.1:9400", aud: api://orders, sub: alice, scope: orders.read, exp: 1000000000 }
    expect: { decision: 401, reason: expired }
  - name: claims without exp
    method: GET
    path: /orders
    claims: { iss: "http://127.0.0.1:9400", aud: api://orders, sub: alice, scope: orders.read }
    expect: { decision: 401, reason: missing_exp }
`,
    });
    const { code, stdout } = await portcullis("test", policy, files["cases.yaml"]!);
    expect(stdout).toContain("4 passed, 0 failed");
    expect(code).toBe(0);
  });

  it("gives one clear line and exit 2 for each kind of bad input", async () => {
    const files = await scratch({
      "bad.yaml": "cases: [\n",
      "unknown-field.yaml":
        "cases:\n  - name: x\n    method: GET\n    path: /\n    expect: { decision: maybe }\n",
      "both.yaml":
        "cases:\n  - name: x\n    method: GET\n    path: /\n    token: {}\n    claims: {}\n    expect: { decision: allow }\n",
      "empty.yaml": "",
    });
    const expectations: [string[], RegExp][] = [
      [
        ["test", policy, "/nonexistent/cases.yaml"],
        /^\/nonexistent\/cases\.yaml: cannot read: no such file$/,
      ],
      [["test", policy, files["bad.yaml"]!], /bad\.yaml: not valid YAML: /],
      [["test", policy, files["unknown-field.yaml"]!], /unknown-field\.yaml: cases\[0\]\.expect\.decision: /],
      [["test", policy, files["both.yaml"]!], /both\.yaml: cases\[0\]: set claims or token, not both$/],
      [["test", policy, files["empty.yaml"]!], /empty\.yaml: \(document\): /],
      [
        ["test", "test/fixtures/five-mistakes.yaml", cases],
        /five-mistakes\.yaml: not a valid policy \(5 errors; see portcullis validate\)/,
      ],
      [["test", policy], /^usage: portcullis test/],
      [["frobnicate"], /^unknown command "frobnicate"/],
    ];
    await expectInputErrors(expectations);
  });
});
