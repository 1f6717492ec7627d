// Header hygiene as pure functions: the request pass, identity headers, response headers.
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { type CompiledPolicy, compilePolicy } from "../policy/compile.ts";
import { validatePolicyObject } from "../policy/validate.ts";
import type { Identity } from "../proxy/authn/verify-bearer.ts";
import {
  forwardHeaders,
  headerPlan,
  identityHeaders,
  readInboundHeaders,
  responseHeaders,
} from "../proxy/headers.ts";
import { newRequestId, traceparentFor } from "../proxy/pipeline.ts";

function policy(
  edit: (spec: Record<string, Record<string, unknown>>) => void = () => undefined,
): CompiledPolicy {
  const document = parse(readFileSync(new URL("../examples/fastapi/policy.yaml", import.meta.url), "utf8"));
  edit(document.spec);
  const { policy: valid, problems } = validatePolicyObject(document, Date.now());
  if (!valid) throw new Error(JSON.stringify(problems));
  return compilePolicy(valid);
}

const example = policy();
const plan = headerPlan(example);
const context = { peerAddress: "10.0.0.9", proto: "http" as const, requestId: "rid", traceparent: "tp" };

function names(flat: readonly string[]): string[] {
  return flat.filter((_, i) => i % 2 === 0);
}

function identity(overrides: Partial<Identity> = {}): Identity {
  return {
    issuer: "https://idp.example",
    subject: "user-1",
    clientId: "app",
    scopes: ["orders.read", "orders.write"],
    roles: ["writer", "reader"],
    claims: { email: "u@example.com" },
    expiresAt: 2_000_000_000,
    ...overrides,
  };
}

describe("readInboundHeaders", () => {
  it("keeps end-to-end headers as sent, drops hop-by-hop and every identity spelling", () => {
    const inbound = readInboundHeaders(
      [
        "Host",
        "api.example",
        "Accept",
        "*/*",
        "X-Auth-Subject",
        "evil",
        "x_auth_roles",
        "admin",
        "X.Auth.Email",
        "e",
        "x-auth-email",
        "e",
        "X-PORTCULLIS-DECISION",
        "allow",
        "Keep-Alive",
        "timeout=5",
        "Transfer-Encoding",
        "chunked",
        "TE",
        "trailers",
        "Expect",
        "100-continue",
        "Authorization",
        "Bearer x",
        "Proxy-Authorization",
        "Basic x",
        "Upgrade",
        "h2c",
        "Cookie",
        "a=1",
      ],
      plan,
    );
    expect(inbound.forward).toEqual(["Host", "api.example", "Accept", "*/*", "Cookie", "a=1"]);
    expect(inbound.hasBody).toBe(true);
    expect(inbound.upgrade).toBe("h2c");
  });

  it("removes the configured extra headers in any spelling, and Authorization only when not forwarded", () => {
    const custom = policy((spec) => {
      spec.identityHeaders = {
        ...spec.identityHeaders,
        remove: ["X-Gateway-User"],
        forwardAuthorization: true,
      };
    });
    const inbound = readInboundHeaders(
      ["x_gateway_user", "evil", "X-Gateway-User", "evil", "Authorization", "Bearer x"],
      headerPlan(custom),
    );
    expect(inbound.forward).toEqual(["Authorization", "Bearer x"]);
  });

  it("applies Connection nominations to end-to-end headers, never to Host or Content-Length", () => {
    const inbound = readInboundHeaders(
      [
        "Host",
        "h",
        "Content-Length",
        "3",
        "X-Custom",
        "1",
        "X-Other",
        "2",
        "Connection",
        "close, X_Custom, host, content-length",
        "X-Forwarded-For",
        "6.6.6.6",
        "Connection",
        "X-Forwarded-For",
      ],
      plan,
    );
    expect(inbound.forward).toEqual(["Host", "h", "Content-Length", "3", "X-Other", "2"]);
    expect(inbound.forwardedFor).toBeUndefined();
  });

  it("flags two Host or two Content-Length headers as ambiguous", () => {
    const ambiguous = (raw: string[]) => readInboundHeaders(raw, plan).refusal === "ambiguous-headers";
    expect(ambiguous(["Host", "a", "host", "b"])).toBe(true);
    expect(ambiguous(["Content-Length", "1", "Content-Length", "1"])).toBe(true);
    expect(readInboundHeaders(["Host", "a", "Content-Length", "0"], plan)).toMatchObject({
      refusal: undefined,
      hasBody: false,
    });
  });

  it("flags a Host that is not host[:port]", () => {
    const bad = (host: string) => readInboundHeaders(["Host", host], plan).refusal === "bad-host";
    for (const good of [
      "orders.example",
      "orders.example:8080",
      "127.0.0.1:80",
      "[::1]:8080",
      "xn--bcher-kva.example",
      "a%41b",
      "h:65535",
      "h:0",
      "h:08080",
      "h:59999",
      "h:65529",
      "h:64999",
    ]) {
      expect(bad(good), good).toBe(false);
    }
    for (const wrong of [
      "a b",
      "user@orders.example",
      "a,b",
      "h:65536",
      "h:65540",
      "h:65600",
      "h:66000",
      "h:70000",
      "h:100000",
      "h:",
      "h:8o",
      "",
      "h\t",
      "[::1",
      "h/x",
      "h?x",
      "h#x",
      "h:80:80",
    ]) {
      expect(bad(wrong), JSON.stringify(wrong)).toBe(true);
    }
    expect(readInboundHeaders([], plan).refusal).toBeUndefined();
  });

  it("picks the request id by the policy's preference, ignoring malformed and nominated ones", () => {
    const pick = (raw: string[]) => readInboundHeaders(raw, plan).requestId;
    expect(pick(["X-Correlation-ID", "corr", "X-Request-Id", "req"])).toBe("req");
    expect(pick(["X-Request-Id", "has space", "X-Correlation-ID", "corr"])).toBe("corr");
    expect(pick(["X-Request-Id", "a".repeat(129)])).toBeUndefined();
    expect(pick(["X-Request-Id", "req", "Connection", "x-request-id"])).toBeUndefined();
    expect(pick(["X_Request_Id", "spoof"])).toBeUndefined();
  });

  it("accepts only a single, valid W3C traceparent", () => {
    const trace = (...values: string[]) =>
      readInboundHeaders(
        values.flatMap((value) => ["traceparent", value]),
        plan,
      ).traceparent;
    const valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    expect(trace(valid)).toBe(valid);
    expect(trace(valid, valid)).toBeUndefined();
    expect(trace(valid.toUpperCase())).toBeUndefined();
    expect(trace("00-00000000000000000000000000000000-00f067aa0ba902b7-01")).toBeUndefined();
    expect(trace("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01")).toBeUndefined();
    expect(trace(`ff${valid.slice(2)}`)).toBeUndefined();
    expect(trace(`${valid}-extra`)).toBeUndefined();
    expect(trace(`01${valid.slice(2)}-extra`)).toBe(`01${valid.slice(2)}-extra`);
  });
});

describe("forwardHeaders", () => {
  it("appends exactly one of each proxy header after the client's, XFF ending with the peer, identity names in lower case", () => {
    const inbound = readInboundHeaders(
      ["Host", "h", "X-Forwarded-For", "1.1.1.1", "x-forwarded-for", "2.2.2.2", "X-Forwarded-Host", "evil"],
      plan,
    );
    const values = identityHeaders(plan, identity());
    const out = forwardHeaders(inbound, context, values.ok ? values.headers : []);
    expect(out).toEqual([
      "Host",
      "h",
      "x-forwarded-for",
      "1.1.1.1, 2.2.2.2, 10.0.0.9",
      "x-forwarded-proto",
      "http",
      "x-forwarded-host",
      "h",
      "x-request-id",
      "rid",
      "traceparent",
      "tp",
      "x-auth-subject",
      "user-1",
      "x-auth-roles",
      "reader,writer",
      "x-auth-scopes",
      "orders.read orders.write",
      "x-auth-client-id",
      "app",
      "x-auth-issuer",
      "https://idp.example",
      "x-auth-email",
      "u@example.com",
    ]);
  });
});

describe("identityHeaders", () => {
  it("leaves out missing and empty values and non-scalars, sends numbers, percent-encodes beyond ASCII", () => {
    const custom = policy((spec) => {
      spec.identityHeaders = {
        ...spec.identityHeaders,
        claims: { email: "X-Auth-Email", level: "X-Auth-Level", obj: "X-Auth-Obj", "org.name": "X-Auth-Org" },
      };
    });
    const values = identityHeaders(
      headerPlan(custom),
      identity({
        subject: " padded ",
        clientId: undefined,
        scopes: [],
        roles: [],
        claims: { email: "Jos\u00e9@example.com", level: 3, obj: { a: 1 }, org: { name: "Acme Corp" } },
      }),
    );
    expect(values.ok).toBe(true);
    const headers = values.ok ? values.headers : [];
    expect(names(headers)).toEqual([
      "x-auth-subject",
      "x-auth-subject-encoding",
      "x-auth-issuer",
      "x-auth-email",
      "x-auth-email-encoding",
      "x-auth-level",
      "x-auth-org",
    ]);
    expect(headers).toContain("%20padded%20");
    expect(headers).toContain("Jos%C3%A9%40example.com");
    expect(headers).toContain("percent");
    expect(headers).toContain("3");
    expect(headers).toContain("Acme Corp");
  });

  it("refuses an identity whose claims carry a control character, naming the header", () => {
    for (const bad of ["evil\r\nX-Injected: 1", "a\u0000b", "tab\there", "del\u007f"]) {
      expect(identityHeaders(plan, identity({ subject: bad }))).toEqual({
        ok: false,
        header: "x-auth-subject",
        problem: "control-character",
      });
    }
    const email = identityHeaders(plan, identity({ claims: { email: "u@example.com\n" } }));
    expect(email).toMatchObject({ ok: false, header: "x-auth-email" });
  });

  it("strips a client's copy of every encoding sibling, in any spelling", () => {
    const inbound = readInboundHeaders(
      ["Host", "h", "X-Auth-Subject-Encoding", "percent", "x_auth_email_encoding", "percent", "X-Other", "1"],
      plan,
    );
    expect(names(inbound.forward)).toEqual(["Host", "X-Other"]);
  });

  it("is computed once per verified identity", () => {
    const verified = identity();
    expect(identityHeaders(plan, verified)).toBe(identityHeaders(plan, verified));
  });
});

describe("responseHeaders", () => {
  it("strips hop-by-hop and nominated headers, replaces X-Request-Id, keeps repeated ones", () => {
    // undici's parsed form: lower-case names, repeated headers as arrays.
    const parsed = {
      "content-type": "text/plain",
      connection: "keep-alive, X-Secret-Hop",
      "keep-alive": "timeout=5",
      "transfer-encoding": "chunked",
      "x-secret-hop": "1",
      "x-request-id": "from-app",
      "set-cookie": ["a=1", "b=2"],
      "content-length": "5",
    };
    expect(responseHeaders(parsed, "rid")).toEqual([
      "content-type",
      "text/plain",
      "set-cookie",
      ["a=1", "b=2"],
      "content-length",
      "5",
      "x-request-id",
      "rid",
    ]);
  });
});

describe("request ids and trace context", () => {
  it("are fresh random hex of the right length, across refills of the entropy pool", () => {
    const ids = Array.from({ length: 1000 }, () => newRequestId());
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{32}$/);
    expect(new Set(ids).size).toBe(ids.length);
    const untraced = readInboundHeaders([], plan);
    const traces = Array.from({ length: 1000 }, () => traceparentFor(untraced));
    for (const trace of traces) expect(trace).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
    expect(new Set(traces.map((trace) => trace.slice(3, 35))).size).toBe(traces.length);
    expect(new Set(traces.map((trace) => trace.slice(36, 52))).size).toBe(traces.length);
  });
});
