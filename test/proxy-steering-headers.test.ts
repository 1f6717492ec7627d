// Headers that steer an app, a framework or a proxy (client address, host, path and method overrides)
// never reach the real FastAPI app from a client, in any spelling; the list is the policy's
// `identityHeaders.steeringHeaders` (a safe default) plus `remove`.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { STEERING_HEADERS } from "../policy/schema.ts";
import { compileDocument, exampleDocument } from "./support/example-policy.ts";
import { type RunningProxy, type Stack, startProxy, startStack } from "./support/proxy.ts";

let stack: Stack;
let tuned: RunningProxy;
let reader: string;

type Echo = { raw_headers: [string, string][]; client: [string, number]; scheme: string; path: string };

async function echo(proxyUrl: string, headers: Record<string, string>): Promise<Echo> {
  const response = await fetch(`${proxyUrl}/orders`, {
    headers: { authorization: `Bearer ${reader}`, ...headers },
  });
  expect(response.status).toBe(200);
  return ((await response.json()) as { identity: Echo }).identity;
}

/** Every spelling a framework or a CGI-style adapter may fold into the same name. */
function spellings(name: string): string[] {
  return [name, name.toLowerCase(), name.toUpperCase(), name.replaceAll("-", "_"), name.replaceAll("-", ".")];
}

beforeAll(async () => {
  stack = await startStack();
  reader = await stack.token("reader");
  const document = exampleDocument(stack.idp.issuer);
  // A team that trusts X-Real-IP from its own ingress, and strips a header of its own.
  document.spec.identityHeaders = {
    ...document.spec.identityHeaders,
    steeringHeaders: STEERING_HEADERS.filter((name) => name !== "X-Real-IP"),
    remove: ["X-Legacy-User"],
  };
  tuned = await startProxy(compileDocument(document), new URL(stack.app.url), stack.keySets);
});

afterAll(async () => {
  await tuned?.close();
  await stack?.stop();
});

/** Named by the hardening issue: stripped whatever the default list in policy/schema.ts becomes. */
const MUST_STRIP = [
  "X-Real-IP",
  "Forwarded",
  "X-Original-URL",
  "X-Rewrite-URL",
  "X-Forwarded-Uri",
  "X-Forwarded-Prefix",
  "X-Forwarded-Path",
  "X-Envoy-Original-Path",
  "X-HTTP-Method-Override",
];

describe("steering headers", () => {
  it("are stripped in every spelling by default; the app sees only the sidecar's X-Forwarded-*", async () => {
    for (const name of new Set([...MUST_STRIP, ...STEERING_HEADERS])) {
      const sent: Record<string, string> = {};
      spellings(name).forEach((spelling, i) => {
        sent[spelling] = `/admin/evil-${i}`;
      });
      const seen = await echo(stack.proxy.url, sent);
      const leaked = seen.raw_headers.filter(([header]) =>
        spellings(name).some((s) => s.toLowerCase() === header),
      );
      expect(leaked, name).toEqual([]);
    }
  });

  it("cannot move the client address, scheme or path the app sees", async () => {
    const seen = await echo(stack.proxy.url, {
      "X-Real-IP": "6.6.6.6",
      Forwarded: "for=6.6.6.6;proto=https",
      "X-Original-URL": "/admin/x",
      "X-HTTP-Method-Override": "DELETE",
      "X-Forwarded-Prefix": "/admin",
    });
    expect(seen.client[0]).toBe("127.0.0.1");
    expect(seen.scheme).toBe("http");
    expect(seen.path).toBe("/orders");
  });

  it("follow the policy: a header left out of the list passes, `remove` adds one", async () => {
    const seen = await echo(tuned.url, {
      "X-Real-IP": "10.1.2.3",
      "X-Legacy-User": "root",
      Forwarded: "for=6.6.6.6",
    });
    const names = seen.raw_headers.map(([header]) => header);
    expect(names).toContain("x-real-ip");
    expect(names).not.toContain("x-legacy-user");
    expect(names).not.toContain("forwarded");
  });
});
