// Tokens no IdP issues, refused through the in-process proxy in front of the real FastAPI app, with
// the real IdP's keys: no sub (RFC 9068), iat in the future beyond the skew, and with the issuer's
// maxTokenAgeSeconds a token issued too long ago or without iat. Each is 401 invalid_token with a
// generic body; the reason is in the access log only.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { goodClaims, idpKey, sign } from "./support/authn.ts";
import { compileDocument, exampleDocument } from "./support/example-policy.ts";
import { type RunningProxy, type Stack, startProxy, startStack } from "./support/proxy.ts";

let stack: Stack;
let capped: RunningProxy;

beforeAll(async () => {
  stack = await startStack();
  const document = exampleDocument(stack.idp.issuer);
  Object.assign(document.spec.authentication.issuers[0]!, { maxTokenAgeSeconds: 600 });
  capped = await startProxy(compileDocument(document), new URL(stack.app.url), stack.keySets);
  await capped.runtime.verifier.ready();
});

afterAll(async () => {
  await capped?.close();
  await stack?.stop();
});

async function send(proxy: RunningProxy, token: string) {
  const requestId = `claims-${Math.random().toString(16).slice(2)}`;
  const response = await fetch(`${proxy.url}/orders`, {
    headers: { authorization: `Bearer ${token}`, "x-request-id": requestId },
  });
  const body = await response.text();
  const line = proxy.logs.find((entry) => entry.requestId === requestId);
  return { status: response.status, challenge: response.headers.get("www-authenticate"), body, line };
}

const now = () => Math.floor(Date.now() / 1000);
const signed = (claims: Record<string, unknown>) => sign(idpKey(stack.idp), goodClaims(stack.idp, claims));

describe("tokens no IdP issues", () => {
  it("admits what the IdP issues, and an iat a little ahead (inside the skew)", async () => {
    expect((await send(capped, await stack.token("reader"))).status).toBe(200);
    expect((await send(capped, await signed({ iat: now() + 10 }))).status).toBe(200);
  });

  it.each([
    ["no sub", { sub: undefined }, "missing_sub"],
    ["an empty sub", { sub: "" }, "missing_sub"],
    ["iat an hour ahead", { iat: now() + 3600 }, "issued_in_future"],
  ])(
    "refuses %s everywhere, 401 invalid_token, the reason only in the log",
    async (_name, claims, reason) => {
      for (const proxy of [stack.proxy, capped]) {
        const answer = await send(proxy, await signed(claims));
        expect(answer.status).toBe(401);
        expect(answer.challenge).toContain('error="invalid_token"');
        expect(answer.body).not.toContain(reason);
        expect(answer.line).toMatchObject({ decision: "unauthenticated", reason });
      }
    },
  );

  it.each([
    [
      "issued over maxTokenAgeSeconds ago, though its exp is an hour away",
      { iat: now() - 3600, exp: now() + 3600 },
      "too_old",
    ],
    ["without iat", { iat: undefined }, "missing_iat"],
  ])("refuses a token %s when the issuer caps the age, and only then", async (_name, claims, reason) => {
    const token = await signed(claims);
    const answer = await send(capped, token);
    expect(answer.status).toBe(401);
    expect(answer.challenge).toContain('error="invalid_token"');
    expect(answer.body).not.toContain(reason);
    expect(answer.line).toMatchObject({ decision: "unauthenticated", reason });
    // Off by default: the example policy has no cap.
    expect((await send(stack.proxy, token)).status).toBe(200);
  });
});
