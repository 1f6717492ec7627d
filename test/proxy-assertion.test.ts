// The signed identity assertion, through the in-process proxy with the real IdP and the real FastAPI
// app, verified the way an app would: jose's jwtVerify against the admin listener's /jwks.json.
import { once } from "node:events";
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { createRemoteJWKSet, decodeJwt, type JWTPayload, jwtVerify } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { ASSERTION_KEYS_PATH, createAdminServer } from "../proxy/admin.ts";
import { ASSERTION_ISSUER, ASSERTION_TYPE, createAssertionSigner } from "../proxy/assertion.ts";
import { createProxyMetrics } from "../proxy/metrics.ts";
import { compileDocument, exampleDocument } from "./support/example-policy.ts";
import {
  type EchoedIdentity,
  identityOf,
  type RunningProxy,
  rawRequest,
  type Stack,
  startProxy,
  startStack,
} from "./support/proxy.ts";

const signer = createAssertionSigner();
let stack: Stack;
let admin: Server;
let keys: ReturnType<typeof createRemoteJWKSet>;
/** ttlSeconds 30: shorter than the IdP's 300 s tokens. */
let short: RunningProxy;
/** ttlSeconds 3600: longer than the tokens, so the token's exp wins. */
let long: RunningProxy;
const tokens: Record<string, string> = {};

function withAssertion(ttlSeconds: number) {
  const document = exampleDocument(stack.idp.issuer);
  document.spec.identityHeaders.assertion = { header: "X-Auth-Assertion", ttlSeconds };
  return compileDocument(document);
}

beforeAll(async () => {
  // The default stack: the example policy, which asks for no assertion.
  stack = await startStack({ parts: { assertionSigner: signer } });
  for (const client of ["reader", "admin"]) tokens[client] = await stack.token(client);
  const app = new URL(stack.app.url);
  short = await startProxy(withAssertion(30), app, stack.keySets, { assertionSigner: signer });
  long = await startProxy(withAssertion(3600), app, stack.keySets, { assertionSigner: signer });
  admin = createAdminServer({
    ready: () => ({ ready: true }),
    metrics: createProxyMetrics(),
    publicKeys: () => signer.jwks,
  });
  admin.listen(0, "127.0.0.1");
  await once(admin, "listening");
  const { port } = admin.address() as AddressInfo;
  keys = createRemoteJWKSet(new URL(`http://127.0.0.1:${port}${ASSERTION_KEYS_PATH}`));
});

afterAll(async () => {
  await short?.close();
  await long?.close();
  admin?.close();
  await stack?.stop();
});

async function echo(
  proxy: RunningProxy,
  path: string,
  client?: string,
  headers: Record<string, string> = {},
): Promise<EchoedIdentity> {
  const response = await fetch(`${proxy.url}${path}`, {
    headers: { ...headers, ...(client === undefined ? {} : { authorization: `Bearer ${tokens[client]}` }) },
  });
  expect(response.status).toBe(200);
  return identityOf((await response.json()) as Record<string, unknown>);
}

function onlyAssertion(identity: EchoedIdentity): string {
  const copies = identity.raw_headers.filter(([name]) => /^x[-_.]auth[-_.]assertion$/.test(name));
  expect(copies).toHaveLength(1);
  expect(identity.x_auth["x-auth-assertion"]).toHaveLength(1);
  return identity.x_auth["x-auth-assertion"]![0]!;
}

async function verified(assertion: string): Promise<JWTPayload> {
  const { payload, protectedHeader } = await jwtVerify(assertion, keys, {
    issuer: ASSERTION_ISSUER,
    audience: "orders-api",
    algorithms: ["EdDSA"],
    typ: ASSERTION_TYPE,
    requiredClaims: ["exp", "iat", "sub"],
  });
  expect(protectedHeader.kid).toBe(signer.jwks.keys[0]?.kid);
  return payload;
}

describe("a policy with identityHeaders.assertion", () => {
  it("hands the app exactly one assertion, which verifies against the admin listener's JWKS", async () => {
    const before = Math.floor(Date.now() / 1000);
    const payload = await verified(onlyAssertion(await echo(short, "/orders", "reader")));
    const token = decodeJwt(tokens.reader!);
    expect(payload).toMatchObject({
      iss: "portcullis",
      aud: "orders-api",
      sub: token.sub,
      client_id: "reader",
      roles: ["reader"],
      scope: "orders.read",
      idp: stack.idp.issuer,
    });
    // exp <= min(token exp, now + ttl)
    expect(payload.exp).toBe(payload.iat! + 30);
    expect(payload.iat).toBeGreaterThanOrEqual(before);
    expect(payload.exp).toBeLessThanOrEqual(Math.min(token.exp!, Math.floor(Date.now() / 1000) + 30));
  });

  it("never outlives the token", async () => {
    const payload = await verified(onlyAssertion(await echo(long, "/orders", "admin")));
    expect(payload.exp).toBe(decodeJwt(tokens.admin!).exp);
    expect(payload).toMatchObject({
      sub: decodeJwt(tokens.admin!).sub,
      roles: ["admin", "reader", "writer"],
    });
  });

  it("drops client-sent copies in every spelling; only the proxy's reaches the app", async () => {
    const forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJyb290In0.";
    const identity = await echo(short, "/orders", "reader", {
      "X-Auth-Assertion": forged,
      x_auth_assertion: forged,
      "x.auth.assertion": forged,
    });
    const assertion = onlyAssertion(identity);
    expect(assertion).not.toBe(forged);
    expect(JSON.stringify(identity.raw_headers)).not.toContain(forged);
    await verified(assertion);

    // Also on a public route, where no assertion is added at all.
    const raw = await rawRequest(
      short.port,
      `GET /healthz HTTP/1.1\nHost: proxy\nX-Auth-Assertion: ${forged}`,
    );
    expect(raw.status).toBe(200);
    expect(identityOf(raw.json()).x_auth).toEqual({});
  });

  it("signs once per token: a repeated token gets the same assertion, another token its own", async () => {
    const first = onlyAssertion(await echo(short, "/orders", "reader"));
    const again = onlyAssertion(await echo(short, "/orders/1", "reader"));
    expect(again).toBe(first);
    const other = onlyAssertion(await echo(short, "/orders", "admin"));
    expect(other).not.toBe(first);
    expect((await verified(other)).sub).toBe(decodeJwt(tokens.admin!).sub);
  });

  it("is added to WebSocket upgrades too", async () => {
    const socket = new WebSocket(`ws://127.0.0.1:${short.port}/ws`, {
      headers: { authorization: `Bearer ${tokens.reader}` },
    });
    try {
      // The app's first message is its identity echo.
      const [data] = (await once(socket, "message")) as [Buffer];
      await verified(onlyAssertion(identityOf(JSON.parse(data.toString()) as Record<string, unknown>)));
    } finally {
      socket.terminate();
    }
  });
});

describe("a policy without an assertion", () => {
  it("adds no assertion header, and still drops a client's copy", async () => {
    const identity = await echo(stack.proxy, "/orders", "reader", {
      "X-Auth-Assertion": "forged",
      x_auth_assertion: "forged",
    });
    expect(identity.x_auth).not.toHaveProperty("x-auth-assertion");
    expect(JSON.stringify(identity.raw_headers)).not.toContain("forged");
    expect(identity.x_auth["x-auth-subject"]).toEqual([decodeJwt(tokens.reader!).sub]);
  });
});
