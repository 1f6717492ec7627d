// DryRun through the real proxy, between the real IdP and the real FastAPI app under uvicorn: what
// the policy would refuse is forwarded, logged as would_deny with its explanation, and counted; a
// request without a valid token reaches the app with no identity headers (spoofed ones stripped).
// In Enforce, a refusal's access line explains it exactly as `portcullis explain` would.
import { decodeJwt } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CompiledPolicy } from "../policy/compile.ts";
import { decide } from "../policy/decision.ts";
import type { AccessPolicySpec } from "../policy/schema.ts";
import { createProxyMetrics, type ProxyMetrics } from "../proxy/metrics.ts";
import { compileDocument } from "./support/example-policy.ts";
import { identityOf, rawRequest, type Stack, startStack } from "./support/proxy.ts";

/** The compiled example policy with its spec edited, validated and compiled again. */
function withSpec(
  policy: CompiledPolicy,
  edit: (spec: AccessPolicySpec) => AccessPolicySpec,
): CompiledPolicy {
  return compileDocument({
    apiVersion: "portcullis.dev/v1alpha1",
    kind: "AccessPolicy",
    metadata: { name: policy.name },
    spec: edit(structuredClone(policy.spec)),
  });
}

function lineFor(stack: Stack, path: string, method = "GET"): Record<string, unknown> {
  const line = stack.proxy.logs
    .filter((l) => l.msg === "request" && l.path === path && l.method === method)
    .at(-1);
  if (line === undefined) throw new Error(`no access line for ${method} ${path}`);
  return line;
}

async function wouldDenyCounts(metrics: ProxyMetrics): Promise<Record<string, number>> {
  const metric = await metrics.register.getSingleMetric("portcullis_dry_run_would_deny_total")?.get();
  return Object.fromEntries(
    (metric?.values ?? []).map((v) => [`${v.labels.rule} ${v.labels.status}`, v.value]),
  );
}

describe("a policy in DryRun", () => {
  let stack: Stack;
  const metrics = createProxyMetrics();

  beforeAll(async () => {
    stack = await startStack({
      edit: (policy) => withSpec(policy, (spec) => ({ ...spec, mode: "DryRun" })),
      parts: { metrics },
    });
  }, 60_000);
  afterAll(() => stack?.stop());

  it("forwards a request without a token, stripped of spoofed identity headers, and logs would_deny 401", async () => {
    const response = await rawRequest(
      stack.proxy.port,
      "GET /orders HTTP/1.1\nHost: orders\nX-Auth-Subject: root\nX-Auth-Roles: admin\nx_auth_roles: admin",
    );
    expect(response.status).toBe(200);
    const seen = identityOf(response.json());
    expect(seen.x_auth).toEqual({});
    expect(seen.raw_headers.filter(([name]) => /auth/i.test(name))).toEqual([]);
    expect(lineFor(stack, "/orders")).toMatchObject({
      rule: "read-orders",
      decision: "would_deny",
      reason: "no-credential",
      wouldStatus: 401,
      status: 200,
      explanation: {
        rule: "read-orders",
        template: "/orders",
        requires: { anyRole: ["reader"] },
        mode: "DryRun",
        decision: "unauthenticated",
        status: 401,
      },
    });
  });

  it("forwards a token without the roles with its verified identity, and logs would_deny 403", async () => {
    const token = await stack.token("reader");
    const response = await fetch(`${stack.proxy.url}/orders/1`, {
      method: "DELETE",
      headers: { authorization: `Bearer ${token}` },
    });
    expect(response.status).toBe(200);
    const seen = identityOf((await response.json()) as Record<string, unknown>);
    expect(seen.x_auth["x-auth-roles"]).toEqual(["reader"]);
    expect(seen.x_auth["x-auth-client-id"]).toEqual(["reader"]);
    expect(seen.authorization).toBeNull();
    expect(lineFor(stack, "/orders/1", "DELETE")).toMatchObject({
      decision: "would_deny",
      reason: "missing-roles",
      wouldStatus: 403,
      roles: ["reader"],
      explanation: {
        rule: "delete-order",
        roles: ["reader"],
        missing: ["admin"],
        requires: { allRoles: ["admin"] },
      },
    });
  });

  it("forwards an invalid token and a deny rule's request without identity", async () => {
    const invalid = await fetch(`${stack.proxy.url}/orders`, {
      headers: { authorization: "Bearer not-a-jwt" },
    });
    expect(invalid.status).toBe(200);
    expect(identityOf((await invalid.json()) as Record<string, unknown>).x_auth).toEqual({});
    const token = await stack.token("admin");
    const denied = await fetch(`${stack.proxy.url}/internal/keys`, {
      headers: { authorization: `Bearer ${token}` },
    });
    expect(denied.status).toBe(200);
    expect(identityOf((await denied.json()) as Record<string, unknown>).x_auth).toEqual({});
    expect(lineFor(stack, "/internal/keys")).toMatchObject({
      decision: "would_deny",
      reason: "deny-rule",
      wouldStatus: 403,
    });
  });

  it("still logs an allowed request as allow, and still refuses a malformed request target (400)", async () => {
    const token = await stack.token("reader");
    const allowed = await fetch(`${stack.proxy.url}/orders/2`, {
      headers: { authorization: `Bearer ${token}` },
    });
    expect(allowed.status).toBe(200);
    const line = lineFor(stack, "/orders/2");
    expect(line).toMatchObject({ decision: "allow", reason: "roles" });
    expect(line).not.toHaveProperty("wouldStatus");
    expect(line).not.toHaveProperty("explanation");
    const malformed = await rawRequest(stack.proxy.port, "GET /orders/../admin/x HTTP/1.1\nHost: orders");
    expect(malformed.status).toBe(400);
  });

  it("counts what it would have refused, by rule and status", async () => {
    expect(await wouldDenyCounts(metrics)).toEqual({
      "read-orders 401": 2,
      "delete-order 403": 1,
      "internal 403": 1,
    });
  });
  it("forwards what a rate limit would refuse (429), and counts it", async () => {
    const token = await stack.token("writer");
    const statuses = await Promise.all(
      Array.from({ length: 30 }, async () => {
        const response = await fetch(`${stack.proxy.url}/orders`, {
          method: "POST",
          headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
          body: JSON.stringify({ item: "beans" }),
        });
        await response.arrayBuffer();
        return response.status;
      }),
    );
    // The limit lets a burst of 10 through: 30 at once go over it, yet every one is forwarded.
    expect(new Set(statuses)).toEqual(new Set([201]));
    const limited = stack.proxy.logs.filter((l) => l.msg === "request" && l.reason === "rate-limited");
    expect(limited.length).toBeGreaterThan(0);
    expect(limited[0]).toMatchObject({
      decision: "would_deny",
      wouldStatus: 429,
      rateLimit: "writes-per-client",
    });
    expect((await wouldDenyCounts(metrics))["write-orders 429"]).toBe(limited.length);
  });
});

describe("one rule in DryRun in an enforcing policy", () => {
  let stack: Stack;

  beforeAll(async () => {
    stack = await startStack({
      edit: (policy) =>
        withSpec(policy, (spec) => {
          const rules = spec.authorization.rules.map((r) =>
            r.name === "delete-order" ? { ...r, mode: "DryRun" as const } : r,
          );
          return { ...spec, authorization: { ...spec.authorization, rules } };
        }),
    });
  }, 60_000);
  afterAll(() => stack?.stop());

  it("forwards only that rule's refusals; the others are enforced and explained", async () => {
    const token = await stack.token("reader");
    const headers = { authorization: `Bearer ${token}` };
    const trial = await fetch(`${stack.proxy.url}/orders/2`, { method: "DELETE", headers });
    expect(trial.status).toBe(200);
    expect(lineFor(stack, "/orders/2", "DELETE")).toMatchObject({ decision: "would_deny", wouldStatus: 403 });

    const enforced = await fetch(`${stack.proxy.url}/admin/users`, { headers });
    expect(enforced.status).toBe(403);
    const line = lineFor(stack, "/admin/users");
    expect(line).toMatchObject({ decision: "deny", reason: "missing-roles", status: 403 });
    expect(line).not.toHaveProperty("wouldStatus");
    // The proxy's explanation is the one `portcullis explain` gives for the same token.
    expect(line.explanation).toEqual(
      decide(stack.policy, { method: "GET", path: "/admin/users", claims: decodeJwt(token) }),
    );
    expect(line.explanation).toMatchObject({ mode: "Enforce", missing: ["admin"] });

    const anonymous = await fetch(`${stack.proxy.url}/orders`);
    expect(anonymous.status).toBe(401);
    expect(lineFor(stack, "/orders")).toMatchObject({
      decision: "unauthenticated",
      explanation: { reason: "no-credential" },
    });
  });
});
