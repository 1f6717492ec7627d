// The example app's GET /me, written with portcullis-fastapi, behind the real sidecar (proxy/main.ts
// as its own process) with the real IdP: through the sidecar it answers 200 with the caller's identity;
// a request that bypasses the sidecar (straight to uvicorn, forged identity headers) gets 401 once the
// policy asks for the signed assertion and the app verifies it against the sidecar's /jwks.json.
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { decodeJwt } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startUpstream, type Upstream } from "../examples/fastapi/upstream.ts";
import { freePort } from "../examples/free-port.ts";
import { DEFAULT_CLIENTS, type IdentityProvider, startIdentityProvider } from "../examples/idp.ts";
import { goodClaims, idpKey, sign } from "./support/authn.ts";
import { documentText, exampleDocument } from "./support/example-policy.ts";
import { type ProxyProcess, startProxyProcess } from "./support/proxy-process.ts";

let idp: IdentityProvider;
let dir = "";
const tokens: Record<string, string> = {};
const stops: (() => Promise<unknown>)[] = [];

interface Me {
  subject: string;
  roles: string[];
  scopes: string[];
  client_id: string | null;
  issuer: string | null;
  claims: Record<string, unknown>;
  source: string;
}

/** The sidecar in front of the example app; the app learns the sidecar's admin port for its JWKS. */
async function sidecarAndApp(assertion: boolean): Promise<{ proxy: ProxyProcess; app: Upstream }> {
  const document = exampleDocument(idp.issuer);
  if (assertion) document.spec.identityHeaders.assertion = { header: "X-Auth-Assertion", ttlSeconds: 60 };
  const policy = join(dir, `policy-${assertion ? "assertion" : "headers"}.yaml`);
  await writeFile(policy, documentText(document));
  const appPort = await freePort("127.0.0.1");
  const proxy = await startProxyProcess(["--policy", policy, "--upstream", `http://127.0.0.1:${appPort}`]);
  stops.push(() => proxy.stop());
  const env: Record<string, string> = assertion
    ? { PORTCULLIS_ASSERTION_AUDIENCE: "orders-api", PORTCULLIS_JWKS_URL: `${proxy.adminUrl}/jwks.json` }
    : {};
  const app = await startUpstream({ port: appPort, env });
  stops.push(() => app.stop());
  await proxy.waitForLine((line) => line.msg === "ready");
  return { proxy, app };
}

async function me(
  url: string,
  headers: Record<string, string>,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(`${url}/me`, { headers });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

/** A client whose email is beyond ASCII: the sidecar sends it percent-encoded with a sibling header. */
const JOSE = {
  clientId: "jose",
  clientSecret: "jose-secret",
  scope: "orders.read",
  claims: { email: "Jos\u00e9.M\u00fcller@b\u00fccher.example" },
};

const FORGED = { "X-Auth-Subject": "root", "X-Auth-Roles": "admin,reader", "X-Auth-Scopes": "orders.admin" };

beforeAll(async () => {
  idp = await startIdentityProvider({ clients: [...DEFAULT_CLIENTS, JOSE] });
  for (const client of ["reader", "writer", "jose"]) tokens[client] = await idp.token(client);
  dir = await mkdtemp(join(tmpdir(), "portcullis-fastapi-sidecar-"));
}, 60_000);

afterAll(async () => {
  for (const stop of stops.reverse()) await stop();
  await idp?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("the example app with portcullis-fastapi, identity headers only", () => {
  let proxy: ProxyProcess;
  let app: Upstream;

  beforeAll(async () => {
    ({ proxy, app } = await sidecarAndApp(false));
  }, 60_000);

  it("answers 200 with the identity the sidecar verified", async () => {
    const { status, body } = await me(proxy.url, { authorization: `Bearer ${tokens.reader}` });
    expect(status).toBe(200);
    expect(body.me).toEqual({
      subject: String(decodeJwt(tokens.reader!).sub),
      roles: ["reader"],
      scopes: ["orders.read"],
      client_id: "reader",
      issuer: idp.issuer,
      // policy.yaml's claims: { email: X-Auth-Email }, which the app's settings read.
      claims: { email: decodeJwt(tokens.reader!).email },
      source: "headers",
    } satisfies Me);
  });

  it("decodes a UTF-8 claim the sidecar percent-encoded", async () => {
    const { status, body } = await me(proxy.url, { authorization: `Bearer ${tokens.jose}` });
    expect(status).toBe(200);
    expect((body.me as Me).claims).toEqual({ email: JOSE.claims.email });
    // What went over the wire: the encoded value and its sibling.
    const seen = (body.identity as { x_auth: Record<string, string[]> }).x_auth;
    expect(seen["x-auth-email-encoding"]).toEqual(["percent"]);
    expect(seen["x-auth-email"]).toEqual([encodeURIComponent(JOSE.claims.email)]);
  });

  it("decodes a UTF-8 subject too; a client's own sibling changes nothing; a control character is 401", async () => {
    const key = idpKey(idp);
    const utf8 = await sign(
      key,
      goodClaims(idp, { sub: "Zo\u00eb M\u00fcller", email: "Jos\u00e9@b\u00fccher.example" }),
    );
    const { status, body } = await me(proxy.url, { authorization: `Bearer ${utf8}` });
    expect(status).toBe(200);
    expect(body.me).toMatchObject({
      subject: "Zo\u00eb M\u00fcller",
      claims: { email: "Jos\u00e9@b\u00fccher.example" },
    });
    // A client's own encoding sibling is stripped with the headers: it cannot make the app decode.
    const sneaky = await me(proxy.url, {
      authorization: `Bearer ${tokens.reader}`,
      "X-Auth-Subject-Encoding": "percent",
    });
    expect((sneaky.body.me as Me).subject).toBe(String(decodeJwt(tokens.reader!).sub));
    const response = await fetch(`${proxy.url}/me`, {
      headers: {
        authorization: `Bearer ${await sign(key, goodClaims(idp, { sub: "alice\r\nX-Auth-Roles: admin" }))}`,
      },
    });
    expect(response.status).toBe(401);
    expect(response.headers.get("www-authenticate")).toContain('error="invalid_token"');
    expect(await response.text()).not.toContain("alice");
  });

  it("cannot tell a request that bypassed the sidecar: the reason to ask for the assertion", async () => {
    // The sidecar strips forged headers ...
    const through = await me(proxy.url, { authorization: `Bearer ${tokens.writer}`, ...FORGED });
    expect((through.body.me as Me).roles).toEqual(["reader", "writer"]);
    // ... but straight to the app port, plain headers are all there is.
    const bypass = await me(app.url, FORGED);
    expect(bypass.status).toBe(200);
    expect((bypass.body.me as Me).subject).toBe("root");
  });
});

describe("the example app with portcullis-fastapi, the policy's signed assertion required", () => {
  let proxy: ProxyProcess;
  let app: Upstream;

  beforeAll(async () => {
    ({ proxy, app } = await sidecarAndApp(true));
  }, 60_000);

  it("answers 200 through the sidecar with the identity from the verified assertion", async () => {
    const { status, body } = await me(proxy.url, { authorization: `Bearer ${tokens.writer}`, ...FORGED });
    expect(status).toBe(200);
    const identity = body.me as Me;
    expect(identity).toMatchObject({
      subject: decodeJwt(tokens.writer!).sub,
      roles: ["reader", "writer"],
      scopes: String(decodeJwt(tokens.writer!).scope).split(" ").sort(),
      client_id: "writer",
      issuer: idp.issuer,
      source: "assertion",
    });
    expect(identity.claims).toMatchObject({ iss: "portcullis", aud: "orders-api" });
  });

  it("gives 401 to a request straight to uvicorn with forged identity headers", async () => {
    const response = await fetch(`${app.url}/me`, { headers: FORGED });
    expect(response.status).toBe(401);
    expect(response.headers.get("content-type")).toBe("application/problem+json");
    expect(await response.json()).toMatchObject({
      type: "https://portcullis.dev/problems/no-assertion",
      status: 401,
    });
  });

  it("gives 401 to a bypass with a forged assertion, signed by a key the sidecar never had", async () => {
    const forged = await foreignAssertion();
    const { status, body } = await me(app.url, { ...FORGED, "X-Auth-Assertion": forged });
    expect(status).toBe(401);
    expect(body.type).toBe("https://portcullis.dev/problems/invalid-assertion");
  });

  it("gives 401 to a forged assertion under the sidecar's real kid, signed with the attacker's own key", async () => {
    // The kid is public (the admin listener's /jwks.json): the signature, not the kid, must decide.
    const jwks = (await (await fetch(`${proxy.adminUrl}/jwks.json`)).json()) as { keys: { kid?: string }[] };
    const kid = jwks.keys[0]?.kid;
    expect(kid).toEqual(expect.any(String));
    const forged = await foreignAssertion(String(kid));
    const { status, body } = await me(app.url, { ...FORGED, "X-Auth-Assertion": forged });
    expect(status).toBe(401);
    expect(body.type).toBe("https://portcullis.dev/problems/invalid-assertion");
    // The sidecar's own assertion under that kid passes: what the app refused is the signature.
    const through = await me(proxy.url, { authorization: `Bearer ${tokens.reader}` });
    expect(through.status).toBe(200);
  });
});

/** An assertion shaped exactly like the sidecar's, signed with a fresh Ed25519 key (the attacker's). */
async function foreignAssertion(kid = "not-the-sidecars"): Promise<string> {
  const { generateKeyPair, SignJWT } = await import("jose");
  const { privateKey } = await generateKeyPair("EdDSA");
  return new SignJWT({ roles: ["admin"], scope: "orders.admin", client_id: "admin", idp: idp.issuer })
    .setProtectedHeader({ alg: "EdDSA", typ: "portcullis-assertion+jwt", kid })
    .setIssuer("portcullis")
    .setAudience("orders-api")
    .setSubject("root")
    .setIssuedAt()
    .setExpirationTime("60s")
    .sign(privateKey);
}
