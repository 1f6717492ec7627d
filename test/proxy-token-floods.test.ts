// Floods before authentication: forged, expired or garbage tokens must not each cost a signature check.
// A token refused for what it is, is refused again from a short-lived cache; a policy's
// verificationsPerPeer limits signature checks per client address (429 before any check), while
// tokens already verified never count. Through the real proxy, IdP and FastAPI app.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KeySetRegistry } from "../proxy/authn/key-set.ts";
import { createBearerVerifier } from "../proxy/authn/verify-bearer.ts";
import { examplePolicy, foreignKey, goodClaims, idpKey, sign } from "./support/authn.ts";
import { compileDocument, exampleDocument } from "./support/example-policy.ts";
import { type RunningProxy, type Stack, startProxy, startStack } from "./support/proxy.ts";

let stack: Stack;
let limited: RunningProxy;

beforeAll(async () => {
  stack = await startStack();
  const document = exampleDocument(stack.idp.issuer);
  document.spec.authentication = {
    ...document.spec.authentication,
    verificationsPerPeer: { requestsPerSecond: 1, burst: 3 },
  };
  limited = await startProxy(compileDocument(document), new URL(stack.app.url), stack.keySets);
  await limited.runtime.verifier.ready();
});

afterAll(async () => {
  await limited?.close();
  await stack?.stop();
});

async function get(proxyUrl: string, token: string) {
  const response = await fetch(`${proxyUrl}/orders`, { headers: { authorization: `Bearer ${token}` } });
  await response.arrayBuffer();
  return { status: response.status, retryAfter: response.headers.get("retry-after") };
}

describe("refused tokens", () => {
  it("a token refused for its signature is refused again from the cache; a key-set refusal is not kept", async () => {
    const keySets = new KeySetRegistry();
    const verifier = createBearerVerifier(examplePolicy(stack.idp), { keySets });
    try {
      await verifier.ready();
      // The IdP's kid, a foreign key: a forged signature.
      const forged = await sign(
        { ...(await foreignKey("RS256")), kid: idpKey(stack.idp).kid },
        goodClaims(stack.idp),
      );
      const first = await verifier.verify(forged);
      expect(first).toEqual({ ok: false, reason: "bad_signature" });
      // The very same refusal object: no second signature check.
      expect(await verifier.verify(forged)).toBe(first);
      // An unknown kid may become known after a rotation: decided afresh every time.
      const unknown = await sign(await foreignKey("RS256", "kid-from-the-future"), goodClaims(stack.idp));
      const once = await verifier.verify(unknown);
      expect(once).toEqual({ ok: false, reason: "unknown_kid" });
      expect(await verifier.verify(unknown)).not.toBe(once);
    } finally {
      verifier.close();
      keySets.close();
    }
  });
});

describe("verificationsPerPeer", () => {
  it("answers a flood of forged tokens 429 after the burst, while a verified token keeps its 200", async () => {
    const valid = await stack.token("reader");
    expect((await get(limited.url, valid)).status).toBe(200); // one verification: the burst's first token
    const statuses: number[] = [];
    let retryAfter: string | null = null;
    for (let i = 0; i < 10; i++) {
      const forged = await sign(
        await foreignKey("RS256", `forged-${i}`),
        goodClaims(stack.idp, { sub: `victim` }),
      );
      const answer = await get(limited.url, forged);
      statuses.push(answer.status);
      retryAfter ??= answer.retryAfter;
    }
    expect(statuses.slice(0, 2)).toEqual([401, 401]);
    expect(statuses.slice(2)).toEqual(Array(8).fill(429));
    expect(Number(retryAfter)).toBeGreaterThanOrEqual(1);
    // The verified token is served from the cache: it never counts, so the flood does not lock it out.
    expect((await get(limited.url, valid)).status).toBe(200);
    // Without the limit (the default proxy), the same flood is answered 401 every time.
    const forged = await sign(await foreignKey("RS256", "forged-x"), goodClaims(stack.idp));
    for (let i = 0; i < 5; i++) expect((await get(stack.proxy.url, forged)).status).toBe(401);
  });
});
