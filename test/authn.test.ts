// The bearer verifier against the real OpenID Provider (oidc-provider): what it accepts, and a reason
// for each thing it refuses. Forged tokens are signed with the IdP's own keys or foreign ones.
import {
  base64url,
  type CryptoKey,
  decodeJwt,
  decodeProtectedHeader,
  exportSPKI,
  importJWK,
  SignJWT,
} from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type IdentityProvider, startIdentityProvider } from "../examples/idp.ts";
import { checkNumericDates, MAX_NUMERIC_DATE } from "../policy/numeric-date.ts";
import { MAX_TOKEN_LENGTH } from "../proxy/authn/credential.ts";
import { KeySetRegistry } from "../proxy/authn/key-set.ts";
import { type BearerVerifier, createBearerVerifier } from "../proxy/authn/verify-bearer.ts";
import {
  examplePolicy,
  foreignKey,
  goodClaims,
  handBuilt,
  idpKey,
  publicPart,
  sign,
  signRaw,
} from "./support/authn.ts";

let idp: IdentityProvider;
let registry: KeySetRegistry;
let verifier: BearerVerifier;

beforeAll(async () => {
  idp = await startIdentityProvider({ tokenTtlSeconds: 120 });
  registry = new KeySetRegistry();
  verifier = createBearerVerifier(examplePolicy(idp), { keySets: registry });
  await verifier.ready();
});

afterAll(async () => {
  verifier?.close();
  registry?.close();
  await idp?.stop();
});

async function reason(token: string): Promise<string> {
  const result = await verifier.verify(token);
  return result.ok ? "ok" : result.reason;
}

describe("tokens the IdP issues", () => {
  it.each([
    ["reader", ["reader"], ["orders.read"]],
    ["writer", ["reader", "writer"], ["orders.read", "orders.write"]],
    ["admin", ["admin", "reader", "writer"], ["orders.read", "orders.write", "orders.admin"]],
  ] as const)("verifies %s's token with its roles, scopes and client id", async (client, roles, scopes) => {
    const token = await idp.token(client);
    const result = await verifier.verify(token);
    expect(result).toMatchObject({ ok: true });
    if (!result.ok) return;
    expect(result.identity).toMatchObject({
      issuer: idp.issuer,
      subject: client,
      clientId: client,
      scopes,
      roles,
      expiresAt: decodeJwt(token).exp,
    });
    expect(result.identity.claims.email).toBe(`${client}@orders.example`);
  });

  it("verifies ES256 tokens from an IdP that signs with its EC key", async () => {
    const ec = await startIdentityProvider({ signingAlg: "ES256", scpClaim: false });
    const ecRegistry = new KeySetRegistry();
    const ecVerifier = createBearerVerifier(examplePolicy(ec), { keySets: ecRegistry });
    try {
      await ecVerifier.ready();
      const token = await ec.token("writer");
      expect(decodeProtectedHeader(token).alg).toBe("ES256");
      const result = await ecVerifier.verify(token);
      expect(result.ok && result.identity.scopes).toEqual(["orders.read", "orders.write"]);
    } finally {
      ecVerifier.close();
      ecRegistry.close();
      await ec.stop();
    }
  });

  it("takes scopes from scp (array or string) when there is no scope claim, and the client from azp or cid", async () => {
    const key = idpKey(idp);
    const fromArray = await verifier.verify(
      await sign(
        key,
        goodClaims(idp, { scope: undefined, scp: ["orders.write"], client_id: undefined, azp: "spa" }),
      ),
    );
    expect(
      fromArray.ok && [fromArray.identity.scopes, fromArray.identity.roles, fromArray.identity.clientId],
    ).toEqual([["orders.write"], [], "spa"]);
    const fromString = await verifier.verify(
      await sign(
        key,
        goodClaims(idp, { scope: undefined, scp: "a b", client_id: undefined, cid: "okta-app" }),
      ),
    );
    expect(fromString.ok && [fromString.identity.scopes, fromString.identity.clientId]).toEqual([
      ["a", "b"],
      "okta-app",
    ]);
  });

  it("accepts typ JWT, at+jwt, application/at+jwt or none, and refuses any other typ", async () => {
    const key = idpKey(idp);
    for (const typ of ["JWT", "at+jwt", "application/at+jwt", "AT+JWT"]) {
      expect(await reason(await sign(key, goodClaims(idp), { typ })), typ).toBe("ok");
    }
    const withoutTyp = await new SignJWT(goodClaims(idp))
      .setProtectedHeader({ alg: "RS256", kid: key.kid })
      .sign(await importJWK(key, "RS256"));
    expect(await reason(withoutTyp)).toBe("ok");
    for (const typ of ["JOSE", "dpop+jwt", "application/jwt+x", "", 7]) {
      expect(await reason(await sign(key, goodClaims(idp), { typ })), String(typ)).toBe("bad_typ");
    }
  });

  it("honours the issuer's clock skew on exp and nbf", async () => {
    const key = idpKey(idp);
    const now = Math.floor(Date.now() / 1000);
    expect(await reason(await sign(key, goodClaims(idp, { exp: now - 10 })))).toBe("ok");
    expect(await reason(await sign(key, goodClaims(idp, { nbf: now + 10 })))).toBe("ok");
  });
});

describe("tokens refused with a reason (401)", () => {
  it("expired", async () => {
    const now = Math.floor(Date.now() / 1000);
    expect(await reason(await sign(idpKey(idp), goodClaims(idp, { iat: now - 7200, exp: now - 3600 })))).toBe(
      "expired",
    );
  });

  it("expired, before its signature is checked or a key for its kid is looked for", async () => {
    const now = Math.floor(Date.now() / 1000);
    const expired = goodClaims(idp, { iat: now - 7200, exp: now - 3600 });
    const foreign = await foreignKey("RS256", "no-such-kid");
    idp.resetCounts();
    // A forged signature under an unknown kid: checking it would refetch the IdP's keys.
    expect(await reason(await sign(foreign, expired))).toBe("expired");
    expect(idp.counts()).toEqual({ discovery: 0, jwks: 0, token: 0 });
    // Within the skew it is not expired, so the signature decides.
    expect(await reason(await sign(foreign, goodClaims(idp, { exp: now - 10 })))).not.toBe("expired");
  });

  it("not yet valid", async () => {
    const now = Math.floor(Date.now() / 1000);
    expect(await reason(await sign(idpKey(idp), goodClaims(idp, { nbf: now + 3600 })))).toBe("not_yet_valid");
  });

  it("unknown issuer, without a single request to any IdP", async () => {
    const key = idpKey(idp);
    const foreign = await foreignKey("RS256", "x");
    idp.resetCounts();
    for (const iss of [
      "https://evil.example",
      `${idp.issuer}/`,
      idp.issuer.replace("127.0.0.1", "localhost"),
      idp.issuer.toUpperCase(),
    ]) {
      expect(await reason(await sign(key, goodClaims(idp, { iss }))), iss).toBe("unknown_issuer");
      expect(await reason(await sign(foreign, goodClaims(idp, { iss })))).toBe("unknown_issuer");
    }
    expect(await reason(await sign(key, goodClaims(idp, { iss: undefined })))).toBe("unknown_issuer");
    expect(await reason(await sign(key, goodClaims(idp, { iss: [idp.issuer] })))).toBe("unknown_issuer");
    expect(idp.counts()).toEqual({ discovery: 0, jwks: 0, token: 0 });
  });

  it("wrong audience (a real token for another resource, and forged ones)", async () => {
    expect(await reason(await idp.token("reader", { resource: "api://billing" }))).toBe("bad_audience");
    const key = idpKey(idp);
    for (const aud of ["api://orders/", "API://orders", ["api://billing"], undefined]) {
      expect(await reason(await sign(key, goodClaims(idp, { aud }))), String(aud)).toBe("bad_audience");
    }
    expect(await reason(await sign(key, goodClaims(idp, { aud: ["api://billing", idp.audience] })))).toBe(
      "ok",
    );
    // Refused before its signature is checked: a forged one under an unknown kid fetches no keys.
    const foreign = await foreignKey("RS256", "no-such-kid");
    idp.resetCounts();
    expect(await reason(await sign(foreign, goodClaims(idp, { aud: "api://billing" })))).toBe("bad_audience");
    expect(await reason(await sign(foreign, goodClaims(idp, { aud: [1, "api://billing"] })))).toBe(
      "bad_audience",
    );
    expect(idp.counts()).toEqual({ discovery: 0, jwks: 0, token: 0 });
  });

  it("bad signature: a tampered real token, and a foreign key under the IdP's kid", async () => {
    const token = await idp.token("reader");
    const [header, payload, signature] = token.split(".") as [string, string, string];
    const flipped = signature.slice(0, 10) + (signature[10] === "A" ? "B" : "A") + signature.slice(11);
    expect(await reason(`${header}.${payload}.${flipped}`)).toBe("bad_signature");
    const elevated = base64url.encode(JSON.stringify({ ...decodeJwt(token), scope: "orders.admin" }));
    expect(await reason(`${header}.${elevated}.${signature}`)).toBe("bad_signature");
    const foreign = await foreignKey("RS256", idpKey(idp).kid);
    expect(await reason(await sign(foreign, goodClaims(idp)))).toBe("bad_signature");
    const foreignEc = await foreignKey("ES256", idpKey(idp, "ES256").kid);
    expect(await reason(await sign(foreignEc, goodClaims(idp)))).toBe("bad_signature");
  });

  it("alg none, in any spelling", async () => {
    const kid = idpKey(idp).kid;
    for (const alg of ["none", "None", "NONE", "nOnE"]) {
      expect(await reason(handBuilt({ alg, kid, typ: "at+jwt" }, goodClaims(idp))), alg).toBe(
        "alg_not_allowed",
      );
    }
    expect(await reason(handBuilt({ kid, typ: "at+jwt" }, goodClaims(idp)))).toBe("alg_not_allowed");
  });

  it("HS256 signed with the IdP's RSA public key as the HMAC secret", async () => {
    const key = idpKey(idp);
    const spki = await exportSPKI((await importJWK(publicPart(key), "RS256")) as CryptoKey);
    for (const secret of [spki, `${spki}\n`, JSON.stringify(publicPart(key)), key.n!]) {
      const token = await new SignJWT(goodClaims(idp))
        .setProtectedHeader({ alg: "HS256", kid: key.kid, typ: "at+jwt" })
        .sign(new TextEncoder().encode(secret));
      expect(await reason(token)).toBe("alg_not_allowed");
    }
  });

  it("an algorithm the issuer does not allow (PS256 with the IdP's own RSA key)", async () => {
    expect(await reason(await sign(idpKey(idp), goodClaims(idp), { alg: "PS256" }))).toBe("alg_not_allowed");
  });

  it("unknown kid", async () => {
    expect(await reason(await sign(await foreignKey("RS256", "no-such-kid"), goodClaims(idp)))).toBe(
      "unknown_kid",
    );
  });

  it("key headers embedded in the token: jwk, jku, x5u, x5c", async () => {
    const attacker = await foreignKey("RS256", "attacker");
    const headers = [
      { jwk: publicPart(attacker) },
      { jku: "https://evil.example/jwks" },
      { jku: idp.jwksUri },
      { x5u: "https://evil.example/cert.pem" },
      { x5c: ["MIIB"] },
    ];
    for (const header of headers) {
      expect(await reason(await sign(attacker, goodClaims(idp), header)), Object.keys(header)[0]).toBe(
        "forbidden_header",
      );
      // Also with the IdP's own key: the header alone is enough to refuse.
      expect(await reason(await sign(idpKey(idp), goodClaims(idp), header))).toBe("forbidden_header");
    }
  });

  it("a crit header, whatever it names", async () => {
    const key = idpKey(idp);
    expect(await reason(await sign(key, goodClaims(idp), { crit: ["exp"], exp: 1 }))).toBe(
      "unsupported_crit",
    );
    expect(await reason(await sign(key, goodClaims(idp), { crit: ["x-ext"], "x-ext": 1 }))).toBe(
      "unsupported_crit",
    );
  });

  it.each([
    ["exp 1e400 (Infinity)", '"exp":1e400'],
    ["exp 9e15", '"exp":9e15'],
    ["exp 2^33", `"exp":${MAX_NUMERIC_DATE}`],
    ["fractional exp", `"exp":${Math.floor(Date.now() / 1000) + 60}.5`],
    ["exp as a string", `"exp":"${Math.floor(Date.now() / 1000) + 60}"`],
    ["exp null", '"exp":null'],
    ["negative nbf", `"exp":${Math.floor(Date.now() / 1000) + 60},"nbf":-1`],
    ["nbf 0", `"exp":${Math.floor(Date.now() / 1000) + 60},"nbf":0`],
    ["fractional iat", `"exp":${Math.floor(Date.now() / 1000) + 60},"iat":1.5`],
    ["iat -1e400", `"exp":${Math.floor(Date.now() / 1000) + 60},"iat":-1e400`],
  ])("bad NumericDate: %s", async (_name, dates) => {
    const payload = `{"iss":${JSON.stringify(idp.issuer)},"aud":${JSON.stringify(idp.audience)},"sub":"x",${dates}}`;
    expect(await reason(await signRaw(idpKey(idp), payload))).toBe("bad_numeric_date");
  });

  it("no sub, or an empty one: RFC 9068 requires it, and the app would get roles without a subject", async () => {
    expect(await reason(await sign(idpKey(idp), goodClaims(idp, { sub: undefined })))).toBe("missing_sub");
    expect(await reason(await sign(idpKey(idp), goodClaims(idp, { sub: "" })))).toBe("missing_sub");
    expect(await reason(await sign(idpKey(idp), goodClaims(idp, { sub: 42 })))).toBe("missing_sub");
  });

  it("issued in the future beyond the clock skew", async () => {
    const now = Math.floor(Date.now() / 1000);
    expect(await reason(await sign(idpKey(idp), goodClaims(idp, { iat: now + 3600 })))).toBe(
      "issued_in_future",
    );
    expect(await reason(await sign(idpKey(idp), goodClaims(idp, { iat: now + 10 })))).toBe("ok");
  });

  it("older than the issuer's maxTokenAgeSeconds, or without iat when the issuer caps the age", async () => {
    const keySets = new KeySetRegistry();
    const capped = createBearerVerifier(examplePolicy(idp, { maxTokenAgeSeconds: 600 }), { keySets });
    try {
      await capped.ready();
      const now = Math.floor(Date.now() / 1000);
      const result = async (claims: Record<string, unknown>) => {
        const verified = await capped.verify(await sign(idpKey(idp), goodClaims(idp, claims)));
        return verified.ok ? "ok" : verified.reason;
      };
      expect(await result({ iat: now - 3600, exp: now + 3600 })).toBe("too_old");
      expect(await result({ iat: undefined })).toBe("missing_iat");
      expect(await result({ iat: now - 60 })).toBe("ok");
      // The identity expires with the cap, not with a later exp (a WebSocket is closed then).
      const young = await capped.verify(
        await sign(idpKey(idp), goodClaims(idp, { iat: now - 60, exp: now + 7200 })),
      );
      expect(young.ok && young.identity.expiresAt).toBe(now - 60 + 600);
    } finally {
      capped.close();
      keySets.close();
    }
  });

  it("no exp", async () => {
    expect(await reason(await sign(idpKey(idp), goodClaims(idp, { exp: undefined })))).toBe("missing_exp");
  });

  it("garbage", async () => {
    const key = idpKey(idp);
    const signed = await sign(key, goodClaims(idp));
    const garbage = [
      "",
      "abc",
      "a.b.c",
      "..",
      "....",
      "a.b.c.d.e",
      `${signed}.`,
      `.${signed}`,
      signed.split(".").slice(0, 2).join("."),
      handBuilt("not json", goodClaims(idp), "sig"),
      handBuilt({ alg: "RS256", kid: key.kid }, "not json", "sig"),
      handBuilt({ alg: "RS256", kid: key.kid }, [1, 2], "sig"),
      handBuilt([], goodClaims(idp), "sig"),
      handBuilt({ alg: "RS256", kid: key.kid }, goodClaims(idp), "!!!"),
      "\u0000.\u0000.\u0000",
      "eyJ.eyJ.eyJ",
    ];
    for (const token of garbage) {
      const result = await verifier.verify(token);
      expect(result.ok, JSON.stringify(token)).toBe(false);
      if (!result.ok) expect(["malformed", "bad_signature"], JSON.stringify(token)).toContain(result.reason);
    }
    expect(await reason("a.b.c")).toBe("malformed");
  });

  it("over-long tokens, before any parsing", async () => {
    const key = idpKey(idp);
    const padded = await sign(key, goodClaims(idp, { pad: "x".repeat(MAX_TOKEN_LENGTH) }));
    expect(padded.length).toBeGreaterThan(MAX_TOKEN_LENGTH);
    expect(await reason(padded)).toBe("token_too_long");
    expect(await reason("a".repeat(MAX_TOKEN_LENGTH + 1))).toBe("token_too_long");
    expect(await reason("a".repeat(10 * 1024 * 1024))).toBe("token_too_long");
  });

  it("a failure reason never carries token material", async () => {
    const token = await sign(idpKey(idp), goodClaims(idp, { exp: 1 }));
    const result = await verifier.verify(token);
    expect(result).toEqual({ ok: false, reason: "expired" });
  });
});

/** A verifier on its own key sets whose clock the test sets (`clock.now`, epoch ms); closed afterwards. */
async function withClockedVerifier(
  test: (timed: BearerVerifier, clock: { now: number }) => Promise<void>,
  issuer: Parameters<typeof examplePolicy>[1] = {},
): Promise<void> {
  const clock = { now: Date.now() };
  const keySets = new KeySetRegistry();
  const timed = createBearerVerifier(examplePolicy(idp, issuer), { keySets, now: () => clock.now });
  try {
    await timed.ready();
    await test(timed, clock);
  } finally {
    timed.close();
    keySets.close();
  }
}

describe("verified-token cache", () => {
  it("serves a repeated token from the cache, until it expires", () =>
    withClockedVerifier(async (timed, clock) => {
      const token = await idp.token("reader");
      const first = await timed.verify(token);
      const second = await timed.verify(token);
      expect(first.ok && second.ok).toBe(true);
      // The very same identity object: no second signature check, and headers computed per identity stay valid.
      expect(second.ok && first.ok && second.identity === first.identity).toBe(true);
      const exp = decodeJwt(token).exp!;
      clock.now = (exp + 29) * 1000; // inside the 30 s skew
      expect((await timed.verify(token)).ok).toBe(true);
      clock.now = (exp + 30) * 1000;
      expect(await timed.verify(token)).toEqual({ ok: false, reason: "expired" });
    }));

  it("honours maxTokenAgeSeconds for a cached token: refused from iat + cap (+ skew), whatever its exp", () =>
    withClockedVerifier(
      async (timed, clock) => {
        // A real token from the IdP (iat now, exp in 2 minutes), under a 60 s cap.
        const token = await idp.token("reader");
        const { iat } = decodeJwt(token);
        clock.now = iat! * 1000;
        const first = await timed.verify(token);
        expect(first.ok).toBe(true);
        clock.now = (iat! + 60 + 29) * 1000; // inside the 30 s skew: still the cached verification
        expect(timed.verifyCached(token)).toBe(first);
        clock.now = (iat! + 60 + 30) * 1000; // before exp, past the cap: no cached answer, then too_old
        expect(timed.verifyCached(token)).toBeUndefined();
        expect(await timed.verify(token)).toEqual({ ok: false, reason: "too_old" });
      },
      { maxTokenAgeSeconds: 60 },
    ));

  it("honours nbf of a cached token", () =>
    withClockedVerifier(async (timed, clock) => {
      const nbf = Math.floor(clock.now / 1000) + 20;
      const token = await sign(idpKey(idp), goodClaims(idp, { nbf }));
      expect((await timed.verify(token)).ok).toBe(true);
      expect((await timed.verify(token)).ok).toBe(true);
      clock.now -= 60_000;
      expect(await timed.verify(token)).toEqual({ ok: false, reason: "not_yet_valid" });
    }));

  it("answers a cached token synchronously, and only that exact token, while it is valid", () =>
    withClockedVerifier(async (timed, clock) => {
      const token = await idp.token("reader");
      expect(timed.verifyCached(token)).toBeUndefined();
      const first = await timed.verify(token);
      expect(first.ok).toBe(true);
      expect(timed.verifyCached(token)).toBe(first);
      // Same length and same tail (the cache's slot), one character different: never a hit.
      const lookalike = `${token[0] === "e" ? "f" : "e"}${token.slice(1)}`;
      expect(timed.verifyCached(lookalike)).toBeUndefined();
      expect((await timed.verify(lookalike)).ok).toBe(false);
      expect(timed.verifyCached(token)).toBe(first);
      expect(timed.verifyCached(`${token} `)).toBeUndefined();
      expect(timed.verifyCached(token.slice(0, -1))).toBeUndefined();
      clock.now = (decodeJwt(token).exp! + 30) * 1000;
      expect(timed.verifyCached(token)).toBeUndefined();
      expect(await timed.verify(token)).toEqual({ ok: false, reason: "expired" });
    }));

  it("evicts the least recently used token, not one used since", async () => {
    const cacheRegistry = new KeySetRegistry();
    const small = createBearerVerifier(examplePolicy(idp), { keySets: cacheRegistry, cacheSize: 4 });
    try {
      await small.ready();
      const tokens = await Promise.all(
        ["reader", "writer", "admin", "reader", "writer"].map((c) => idp.token(c)),
      );
      expect(new Set(tokens).size).toBe(5);
      const [a, b, c, d, e] = tokens as [string, string, string, string, string];
      for (const token of [a, b, c, d]) expect((await small.verify(token)).ok).toBe(true);
      expect(small.verifyCached(a)).toBeDefined();
      expect((await small.verify(e)).ok).toBe(true);
      expect(small.verifyCached(b)).toBeUndefined();
      for (const token of [a, c, d, e]) expect(small.verifyCached(token)).toBeDefined();
    } finally {
      small.close();
      cacheRegistry.close();
    }
  });

  it("keeps only cacheSize tokens", async () => {
    const cacheRegistry = new KeySetRegistry();
    const small = createBearerVerifier(examplePolicy(idp), { keySets: cacheRegistry, cacheSize: 2 });
    try {
      await small.ready();
      const tokens = await Promise.all(["reader", "writer", "admin"].map((client) => idp.token(client)));
      const identities: unknown[] = [];
      for (const token of tokens) {
        const result = await small.verify(token);
        identities.push(result.ok && result.identity);
      }
      const again = await small.verify(tokens[0]!);
      expect(again.ok && again.identity).not.toBe(identities[0]);
      const last = await small.verify(tokens[2]!);
      expect(last.ok && last.identity).toBe(identities[2]);
    } finally {
      small.close();
      cacheRegistry.close();
    }
  });
});

describe("NumericDate checks", () => {
  it("accept integers in (0, 2^33) and nothing else", () => {
    expect(checkNumericDates({ exp: 1_800_000_000 })).toEqual({ ok: true, exp: 1_800_000_000 });
    expect(checkNumericDates({ exp: 2, nbf: 1, iat: 1 })).toEqual({ ok: true, exp: 2, nbf: 1, iat: 1 });
    expect(checkNumericDates({})).toEqual({ ok: false, claim: "exp", problem: "missing" });
    for (const bad of [
      0,
      -1,
      1.5,
      Number.NaN,
      Number.POSITIVE_INFINITY,
      2 ** 33,
      9e15,
      "1",
      null,
      true,
      [1],
    ]) {
      expect(checkNumericDates({ exp: bad }).ok, String(bad)).toBe(false);
      expect(checkNumericDates({ exp: 10, nbf: bad }).ok).toBe(false);
      expect(checkNumericDates({ exp: 10, iat: bad }).ok).toBe(false);
    }
  });
});
