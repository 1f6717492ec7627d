// An IdP behind a private CA: the issuer's caBundle is what the sidecar trusts for that issuer's
// discovery and JWKS fetches, and nothing else. A throw-away CA made by openssl, the real
// oidc-provider over https on 127.0.0.1, the real FastAPI app under uvicorn, and the proxy (in
// process, and as the sidecar runs it for its log line and metric).
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Agent, fetch as undiciFetch } from "undici";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { startUpstream, type Upstream } from "../examples/fastapi/upstream.ts";
import { type IdentityProvider, startIdentityProvider } from "../examples/idp.ts";
import { type FetchOutcome, KeySetRegistry, RemoteKeySet } from "../proxy/authn/key-set.ts";
import { examplePolicy } from "./support/authn.ts";
import {
  type ClientCertificate,
  issueCertificateAuthority,
  issueServingCertificate,
} from "./support/controlplane-pki.ts";
import { documentText, exampleDocument } from "./support/example-policy.ts";
import { startProxy } from "./support/proxy.ts";
import { startProxyProcess } from "./support/proxy-process.ts";

let dir: string;
let idp: IdentityProvider;
let app: Upstream;
/** The private CA the IdP's certificate chains to, and an unrelated one. */
let idpCa: string;
let otherCa: string;
let wrongName: ClientCertificate;
const cleanups: (() => unknown)[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "portcullis-issuer-ca-"));
  const [ca, other] = await Promise.all([
    issueCertificateAuthority(dir, "idp-ca", "idp-private-ca"),
    issueCertificateAuthority(dir, "other-ca", "another-private-ca"),
  ]);
  const [serving, misnamed] = await Promise.all([
    issueServingCertificate(dir, ca, "idp", "idp", ["IP:127.0.0.1"]),
    issueServingCertificate(dir, ca, "idp-misnamed", "idp", ["DNS:idp.example"]),
  ]);
  wrongName = misnamed;
  [idpCa, otherCa] = await Promise.all([readFile(ca.certPath, "utf8"), readFile(other.certPath, "utf8")]);
  const [cert, key] = await Promise.all([
    readFile(serving.certPath, "utf8"),
    readFile(serving.keyPath, "utf8"),
  ]);
  [idp, app] = await Promise.all([startIdentityProvider({ tls: { cert, key, ca: idpCa } }), startUpstream()]);
});

afterAll(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  await Promise.all([idp?.stop(), app?.stop()]);
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** A registry whose fetch outcomes are recorded; closed after the file. */
function registry(): { keySets: KeySetRegistry; fetches: { outcome: FetchOutcome; detail?: string }[] } {
  const fetches: { outcome: FetchOutcome; detail?: string }[] = [];
  // A long retry pause: one failed attempt is all a test needs to see.
  const keySets = new KeySetRegistry({
    retryMinMs: 60_000,
    onFetch: (_issuer, outcome, detail) =>
      fetches.push(detail === undefined ? { outcome } : { outcome, detail }),
  });
  cleanups.push(() => keySets.close());
  return { keySets, fetches };
}

async function proxyTrusting(caBundle: string | undefined, jwksUri?: string) {
  const { keySets, fetches } = registry();
  const overrides = {
    ...(caBundle === undefined ? {} : { caBundle }),
    ...(jwksUri === undefined ? {} : { jwksUri }),
  };
  const proxy = await startProxy(examplePolicy(idp, overrides), new URL(app.url), keySets);
  cleanups.push(() => proxy.close());
  return { proxy, fetches };
}

async function getOrders(
  url: string,
  token: string,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(`${url}/orders`, { headers: { authorization: `Bearer ${token}` } });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

describe("the test IdP over https", () => {
  it("names https URLs in its issuer and discovery, and trusts only its CA for its own token calls", async () => {
    expect(idp.issuer).toBe(`https://127.0.0.1:${idp.port}`);
    const client = new Agent({ connect: { ca: idpCa } });
    cleanups.push(() => client.close());
    const response = await undiciFetch(`${idp.issuer}/.well-known/openid-configuration`, {
      dispatcher: client,
    });
    expect(await response.json()).toMatchObject({
      issuer: idp.issuer,
      jwks_uri: idp.jwksUri,
      token_endpoint: idp.tokenEndpoint,
    });
    expect(idp.jwksUri.startsWith("https://127.0.0.1:")).toBe(true);
    // Node's default roots do not know the private CA.
    await expect(fetch(idp.jwksUri)).rejects.toThrow();
  });
});

describe("an issuer with a caBundle", () => {
  it("verifies real tokens through the proxy to the app, keys fetched over https", async () => {
    idp.resetCounts();
    const { proxy, fetches } = await proxyTrusting(idpCa);
    await proxy.runtime.verifier.ready();
    expect(idp.counts()).toMatchObject({ discovery: 1, jwks: 1 });
    expect(fetches).toEqual([{ outcome: "ok" }]);

    const response = await getOrders(proxy.url, await idp.token("reader"));
    expect(response.status).toBe(200);
    const identity = response.body.identity as { x_auth: Record<string, string[]> };
    expect(identity.x_auth["x-auth-client-id"]).toEqual(["reader"]);
  });

  it("without it, Node's default roots do not trust the IdP: keys never load, requests get 401", async () => {
    const { proxy, fetches } = await proxyTrusting(undefined);
    await vi.waitFor(() =>
      expect(fetches).toEqual([{ outcome: "error", detail: "discovery_tls_untrusted" }]),
    );
    expect(proxy.runtime.verifier.isReady()).toBe(false);

    const response = await getOrders(proxy.url, await idp.token("reader"));
    expect(response.status).toBe(401);
    expect(response.body).not.toHaveProperty("identity");
    await vi.waitFor(() => expect(proxy.logs.some((line) => line.reason === "keys_unavailable")).toBe(true));
  });

  it("another CA's bundle is no better: only the listed CAs are trusted (JWKS fetched directly)", async () => {
    const { proxy, fetches } = await proxyTrusting(otherCa, idp.jwksUri);
    await vi.waitFor(() => expect(fetches).toEqual([{ outcome: "error", detail: "tls_untrusted" }]));
    expect((await getOrders(proxy.url, await idp.token("reader"))).status).toBe(401);
  });

  it("a certificate from the right CA for another name: tls_name_mismatch", async () => {
    // The real IdP, serving a certificate the right CA issued for another name.
    const misnamed = await startIdentityProvider({
      tls: {
        cert: await readFile(wrongName.certPath, "utf8"),
        key: await readFile(wrongName.keyPath, "utf8"),
        ca: idpCa,
      },
    });
    cleanups.push(() => misnamed.stop());
    const set = new RemoteKeySet(
      { issuer: misnamed.issuer, jwksUri: misnamed.jwksUri, caBundle: idpCa },
      { retryMinMs: 60_000 },
    );
    cleanups.push(() => set.close());
    const details: (string | undefined)[] = [];
    set.observe((_issuer, _outcome, detail) => details.push(detail));
    await vi.waitFor(() => expect(details).toEqual(["tls_name_mismatch"]));
  });

  it("a reload that changes only the bundle gets a new key set; the same bundle reuses the warm one", async () => {
    const { keySets } = registry();
    const wrong = keySets.acquire({ issuer: idp.issuer, caBundle: otherCa });
    const right = keySets.acquire({ issuer: idp.issuer, caBundle: idpCa });
    expect(right).not.toBe(wrong);
    expect(keySets.acquire({ issuer: idp.issuer, caBundle: idpCa })).toBe(right);
    expect(keySets.acquire({ issuer: idp.issuer })).not.toBe(right);
    await right.ready();
    keySets.release(wrong);
    expect(keySets.keySets()).not.toContain(wrong);
    expect(right.isReady()).toBe(true);
  });
});

describe("the sidecar process", () => {
  it("logs and counts the TLS failure, then loads the keys once a reload adds the bundle", async () => {
    const policy = join(dir, "policy.yaml");
    const document = exampleDocument(idp.issuer);
    await writeFile(policy, documentText(document));
    const proxy = await startProxyProcess(["--policy", policy, "--upstream", app.url]);
    cleanups.push(() => proxy.stop());

    const failed = await proxy.waitForLine((line) => line.msg === "JWKS fetch failed");
    expect(failed).toMatchObject({ issuer: idp.issuer, detail: "discovery_tls_untrusted" });
    const metrics = await (await fetch(`${proxy.adminUrl}/metrics`)).text();
    expect(metrics).toMatch(
      new RegExp(
        `^portcullis_jwks_fetch_errors_total\\{issuer="${idp.issuer}",reason="discovery_tls_untrusted"\\} [1-9]`,
        "m",
      ),
    );
    const token = await idp.token("reader");
    expect((await getOrders(proxy.url, token)).status).toBe(401);
    const notReady = await fetch(`${proxy.adminUrl}/readyz`);
    expect(notReady.status).toBe(503);
    expect(await notReady.json()).toMatchObject({ reason: `waiting for signing keys of ${idp.issuer}` });

    document.spec.authentication.issuers[0]!.caBundle = idpCa;
    await writeFile(policy, documentText(document));
    await proxy.waitForLine((line) => line.msg === "policy reloaded");
    await vi.waitFor(async () => expect((await getOrders(proxy.url, token)).status).toBe(200), {
      timeout: 10_000,
    });
    expect((await fetch(`${proxy.adminUrl}/readyz`)).status).toBe(200);
  });
});
