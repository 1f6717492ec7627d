// `portcullis explain`: the rule, the roles a token maps to and why, from claims or from a token that
// is decoded and never verified (the output says so); bad input is one line and exit 2.
import { writeFileSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateKeyPair, SignJWT } from "jose";
import { beforeAll, describe, expect, it } from "vitest";
import { expectInputErrors, portcullis } from "./support/cli.ts";

const policy = "examples/fastapi/policy.yaml";
let claimsFile = "";
let notJson = "";
let notObject = "";

beforeAll(async () => {
  const dir = await mkdtemp(join(tmpdir(), "portcullis-cli-explain-"));
  claimsFile = join(dir, "claims.json");
  writeFileSync(
    claimsFile,
    JSON.stringify({ iss: "http://127.0.0.1:9400", aud: "api://orders", sub: "bob", scope: "orders.write" }),
  );
  notJson = join(dir, "bad.json");
  writeFileSync(notJson, "{ sub: bob }");
  notObject = join(dir, "list.json");
  writeFileSync(notObject, "[1]");
});

/** A token signed by a key no issuer publishes: explain must not care, and must say it did not verify. */
async function unverifiableToken(claims: Record<string, unknown>): Promise<string> {
  const { privateKey } = await generateKeyPair("ES256");
  return new SignJWT(claims).setProtectedHeader({ alg: "ES256", kid: "nobody" }).sign(privateKey);
}

/** `portcullis explain <example policy> --method GET --path <path> ...rest`. */
function explainGet(path: string, ...rest: string[]) {
  return portcullis("explain", policy, "--method", "GET", "--path", path, ...rest);
}

describe("portcullis explain", () => {
  it("names the rule, the roles, the missing role and the decision from a claims file", async () => {
    const { code, stdout } = await portcullis(
      "explain",
      policy,
      "--method",
      "DELETE",
      "--path",
      "/orders/7",
      "--claims",
      claimsFile,
    );
    expect(code).toBe(0);
    expect(stdout).toBe(
      [
        "DELETE /orders/7",
        "  rule      delete-order (/orders/{order_id:int})",
        "  requires  all of [admin]",
        `  token     claims from ${claimsFile}`,
        "  issuer    http://127.0.0.1:9400",
        "  subject   bob",
        "  roles     [reader, writer]",
        "  decision  deny (403, missing-roles)",
        "  why       rule delete-order matches DELETE /orders/7 (/orders/{order_id:int}); it needs a token with all of [admin]; the token maps to roles [reader, writer], missing [admin]",
        "",
      ].join("\n"),
    );
  });

  it("decodes a token without verifying it, says so, and refuses its claims as the proxy would", async () => {
    const token = await unverifiableToken({
      iss: "http://127.0.0.1:9400",
      aud: "api://other",
      scope: "orders.read",
      exp: 1_000_000_000,
    });
    const { code, stdout } = await explainGet("/orders?page=2", "--token", token);
    expect(code).toBe(0);
    expect(stdout).toContain("GET /orders\n");
    expect(stdout).toContain("  token     decoded, NOT verified: the signature is checked only by the proxy");
    // The proxy refuses an expired token first (before its audience and its signature).
    expect(stdout).toContain("  decision  unauthenticated (401, expired)");
    expect(stdout).not.toContain("  roles");
  });

  it("refuses a token as the proxy does: another audience, then no subject", async () => {
    const valid = {
      iss: "http://127.0.0.1:9400",
      scope: "orders.read",
      exp: Math.floor(Date.now() / 1000) + 600,
    };
    const explainToken = async (claims: Record<string, unknown>) =>
      explainGet("/orders", "--token", await unverifiableToken(claims), "--json");
    const foreign = await explainToken({ ...valid, sub: "alice", aud: ["api://other", 7] });
    expect(JSON.parse(foreign.stdout)).toMatchObject({
      decision: "unauthenticated",
      status: 401,
      reason: "bad_audience",
    });
    const subjectless = await explainToken({ ...valid, aud: "api://orders" });
    expect(JSON.parse(subjectless.stdout)).toMatchObject({
      decision: "unauthenticated",
      status: 401,
      reason: "missing_sub",
    });
    const good = await explainToken({ ...valid, aud: "api://orders", sub: "alice" });
    expect(JSON.parse(good.stdout)).toMatchObject({ decision: "allow", roles: ["reader"] });
  });

  it("notes the dates a claims file gives that the proxy would refuse now", async () => {
    const dir = await mkdtemp(join(tmpdir(), "portcullis-cli-explain-"));
    const expired = join(dir, "expired.json");
    writeFileSync(
      expired,
      JSON.stringify({
        iss: "http://127.0.0.1:9400",
        aud: "api://orders",
        sub: "bob",
        scope: "orders.read",
        exp: 1_000_000_000,
      }),
    );
    const { code, stdout } = await explainGet("/orders", "--claims", expired);
    expect(code).toBe(0);
    expect(stdout).toContain("  decision  allow (forwarded)");
    expect(stdout).toContain(
      "  note      exp (2001-09-09T01:46:40.000Z) has passed: the proxy would answer 401 (expired)",
    );
  });

  it("explains a request without a token, and prints the same explanation as JSON", async () => {
    const text = await explainGet("/reports");
    expect(text.stdout).toContain("  rule      none matches");
    expect(text.stdout).toContain("  decision  unauthenticated (401, no-credential)");
    const json = await explainGet("/reports", "--json");
    expect(json.code).toBe(0);
    expect(JSON.parse(json.stdout)).toEqual({
      requires: { defaultAction: "Deny" },
      mode: "Enforce",
      decision: "unauthenticated",
      status: 401,
      reason: "no-credential",
      why: "no rule matches GET /reports; the default action Deny refuses every caller; the request has no token",
    });
  });

  it("matches the path decoded as the proxy decodes it", async () => {
    const { code, stdout } = await explainGet("/orders/%37?x=%2F");
    expect(code).toBe(0);
    expect(stdout).toContain("GET /orders/7\n");
    expect(stdout).toContain("  rule      read-orders (/orders/{order_id:int})");
  });

  it("gives one clear line and exit 2 for bad input", async () => {
    const base = ["explain", policy, "--method", "GET", "--path", "/orders"];
    const expectations: [string[], RegExp][] = [
      [[...base, "--token", "not.a.jwt"], /^--token: not a JWT: /],
      [[...base, "--claims", "/nonexistent.json"], /^\/nonexistent\.json: cannot read: no such file$/],
      [[...base, "--claims", notJson], /bad\.json: not valid JSON: /],
      [[...base, "--claims", notObject], /list\.json: expected a JSON object of claims$/],
      [[...base, "--claims", notObject, "--token", "x"], /^give --claims or --token, not both$/],
      [["explain", policy, "--method", "FETCH", "--path", "/"], /^--method: expected one of GET, /],
      [["explain", policy, "--method", "GET", "--path", "orders"], /^--path: must start with "\/"/],
      [
        ["explain", policy, "--method", "GET", "--path", "/orders/%2e%2e/internal"],
        /^--path: the proxy refuses it \(400 bad-request-target\): dot segment in path$/,
      ],
      [["explain", policy, "--method", "GET"], /^usage: portcullis explain/],
      [["explain", policy, "--methd", "GET"], /^Unknown option '--methd'/],
      [
        ["explain", "test/fixtures/five-mistakes.yaml", "--method", "GET", "--path", "/"],
        /not a valid policy/,
      ],
    ];
    await expectInputErrors(expectations);
  });
});
