// The example OpenID Provider, for real: discovery, JWKS, client-credentials tokens, rotation, outage.
import {
  createRemoteJWKSet,
  decodeJwt,
  decodeProtectedHeader,
  errors,
  type JSONWebKeySet,
  jwtVerify,
} from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_CLIENTS, type IdentityProvider, startIdentityProvider } from "../examples/idp.ts";

let idp: IdentityProvider;

beforeAll(async () => {
  idp = await startIdentityProvider({ tokenTtlSeconds: 120 });
});

afterAll(async () => {
  await idp?.stop();
});

async function fetchJwks(): Promise<JSONWebKeySet> {
  const response = await fetch(idp.jwksUri);
  expect(response.status).toBe(200);
  return (await response.json()) as JSONWebKeySet;
}

// A fresh key set per check, so jose's cache never hides what the IdP serves now.
function verify(token: string) {
  return jwtVerify(token, createRemoteJWKSet(new URL(idp.jwksUri)), {
    issuer: idp.issuer,
    audience: idp.audience,
    algorithms: ["RS256"],
    typ: "at+jwt",
  });
}

describe("example identity provider", () => {
  it("serves discovery on loopback http with client credentials and its JWKS", async () => {
    const response = await fetch(`${idp.issuer}/.well-known/openid-configuration`);
    const discovery = (await response.json()) as Record<string, unknown>;
    expect(idp.issuer).toBe(`http://127.0.0.1:${idp.port}`);
    expect(discovery).toMatchObject({
      issuer: idp.issuer,
      jwks_uri: idp.jwksUri,
      token_endpoint: idp.tokenEndpoint,
    });
    expect(discovery.grant_types_supported).toContain("client_credentials");

    const { keys } = await fetchJwks();
    expect(keys.map((key) => key.kty).sort()).toEqual(["EC", "RSA"]);
    expect(keys.map((key) => key.kid)).toEqual(idp.kids());
    for (const key of keys) {
      expect(key).not.toHaveProperty("d");
      expect(key.use).toBe("sig");
    }
  });

  it.each(DEFAULT_CLIENTS.map((client) => [client.clientId, client] as const))(
    "issues a verifiable JWT access token to %s",
    async (clientId, client) => {
      const { payload, protectedHeader } = await verify(await idp.token(clientId));
      expect(protectedHeader.kid).toBe(idp.kids()[0]);
      expect(payload).toMatchObject({
        iss: idp.issuer,
        aud: "api://orders",
        sub: clientId,
        client_id: clientId,
        scope: client.scope,
        scp: client.scope.split(" "),
        email: `${clientId}@orders.example`,
      });
      expect(payload.exp! - payload.iat!).toBe(120);
    },
  );

  it("puts realm roles only into the admin's tokens", async () => {
    expect(decodeJwt(await idp.token("admin")).realm_access).toEqual({ roles: ["orders-admin"] });
    expect(decodeJwt(await idp.token("writer"))).not.toHaveProperty("realm_access");
  });

  it("narrows scopes on request and refuses scopes the client may not have", async () => {
    expect(decodeJwt(await idp.token("writer", { scope: "orders.read" }))).toMatchObject({
      scope: "orders.read",
      scp: ["orders.read"],
    });
    await expect(idp.token("reader", { scope: "orders.write" })).rejects.toThrow(/invalid_scope/);
  });

  it("authenticates clients by their secret", async () => {
    await expect(idp.token("reader", { clientSecret: "wrong" })).rejects.toThrow(/invalid_client/);
    await expect(idp.token("nobody", { clientSecret: "guess" })).rejects.toThrow(/invalid_client/);
  });

  it("sets the audience from the resource indicator", async () => {
    const token = await idp.token("reader", { resource: "api://billing" });
    expect(decodeJwt(token).aud).toBe("api://billing");
    await expect(verify(token)).rejects.toBeInstanceOf(errors.JWTClaimValidationFailed);
  });

  it("rotates keys, keeping the previous ones published until they are dropped", async () => {
    const before = await idp.token("reader");
    const oldKid = decodeProtectedHeader(before).kid;

    await idp.rotateKeys();
    const after = await idp.token("reader");
    const newKid = decodeProtectedHeader(after).kid;
    expect(newKid).not.toBe(oldKid);
    expect((await fetchJwks()).keys.map((key) => key.kid)).toEqual(expect.arrayContaining([oldKid, newKid]));
    await verify(before);
    await verify(after);

    await idp.dropPreviousKeys();
    expect((await fetchJwks()).keys.map((key) => key.kid)).not.toContain(oldKid);
    await expect(verify(before)).rejects.toBeInstanceOf(errors.JWKSNoMatchingKey);
    await verify(after);
  });

  it("rotates keys with the previous ones removed at once", async () => {
    const before = await idp.token("reader");
    await idp.rotateKeys({ keepPrevious: false });
    const after = await idp.token("reader");
    expect(decodeProtectedHeader(after).kid).not.toBe(decodeProtectedHeader(before).kid);
    expect(idp.kids()).toHaveLength(2);
    await expect(verify(before)).rejects.toBeInstanceOf(errors.JWKSNoMatchingKey);
    await verify(after);
  });

  it("goes down and comes back on the same issuer with the same keys", async () => {
    const token = await idp.token("reader");
    await idp.stop();
    await expect(fetch(idp.jwksUri, { headers: { connection: "close" } })).rejects.toThrow();
    await idp.start();
    await verify(token);
    expect(decodeProtectedHeader(await idp.token("reader")).kid).toBe(decodeProtectedHeader(token).kid);
  });

  it("counts discovery, JWKS and token requests", async () => {
    idp.resetCounts();
    await fetch(`${idp.issuer}/.well-known/openid-configuration`).then((response) => response.arrayBuffer());
    await fetchJwks();
    await fetchJwks();
    await idp.token("reader");
    expect(idp.counts()).toEqual({ discovery: 1, jwks: 2, token: 1 });
  });

  it("can sign with ES256 instead", async () => {
    const ec = await startIdentityProvider({ signingAlg: "ES256", scpClaim: false });
    try {
      const token = await ec.token("reader");
      const { payload, protectedHeader } = await jwtVerify(token, createRemoteJWKSet(new URL(ec.jwksUri)), {
        issuer: ec.issuer,
        audience: ec.audience,
        algorithms: ["ES256"],
      });
      expect(protectedHeader.alg).toBe("ES256");
      expect(payload).not.toHaveProperty("scp");
    } finally {
      await ec.stop();
    }
  });
});
