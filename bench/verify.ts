// Verified bearer tokens per second, uncached (every call checks the signature) against cached (the
// verified-token cache answers), for RS256 and ES256 tokens from the real example IdP, and what refusing
// an expired token costs against verifying a valid one, and what a forged-token flood costs (bench/forged-flood.ts:
// what it costs valid traffic through the proxy). A plain script:
//   npx node bench/verify.ts
import { createHash } from "node:crypto";
import { generateKeyPair, SignJWT } from "jose";
import { type IdpSigningAlg, startIdentityProvider } from "../examples/idp.ts";
import { KeySetRegistry } from "../proxy/authn/key-set.ts";
import { type BearerVerifier, createBearerVerifier } from "../proxy/authn/verify-bearer.ts";
import { median } from "./support/median.ts";
import { examplePolicy } from "./support/servers.ts";

const ROUNDS = 7;
const ROUND_MS = 300;
const IN_FLIGHT = 32;

interface Round {
  perSecond: number;
  cpuMicros: number;
}

/** Verifies for ~ROUND_MS with `inFlight` calls outstanding; wall rate and CPU us per verification. */
async function round(verifier: BearerVerifier, tokens: readonly string[], inFlight: number): Promise<Round> {
  let done = 0;
  const cpu = process.cpuUsage();
  const start = performance.now();
  const deadline = start + ROUND_MS;
  // Each worker its own tokens: calls in flight for one token would share a verification.
  const perWorker = Math.max(1, Math.floor(tokens.length / inFlight));
  const worker = async (offset: number) => {
    for (let i = 0; performance.now() < deadline; i++) {
      const result = await verifier.verify(tokens[(offset * perWorker + (i % perWorker)) % tokens.length]!);
      if (!result.ok) throw new Error(`verification failed: ${result.reason}`);
      done++;
    }
  };
  await Promise.all(Array.from({ length: inFlight }, (_, i) => worker(i)));
  const seconds = (performance.now() - start) / 1000;
  const { user, system } = process.cpuUsage(cpu);
  return { perSecond: done / seconds, cpuMicros: (user + system) / done };
}

async function compare(alg: IdpSigningAlg, inFlight: number): Promise<void> {
  const idp = await startIdentityProvider({ signingAlg: alg, tokenTtlSeconds: 3600 });
  const registry = new KeySetRegistry();
  try {
    const policy = await examplePolicy(idp.issuer);
    const uncached = createBearerVerifier(policy, { keySets: registry, cacheSize: 0 });
    const cached = createBearerVerifier(policy, { keySets: registry });
    await Promise.all([uncached.ready(), cached.ready()]);
    const tokens = await Promise.all(
      // At least one token per call in flight (see round()).
      Array.from({ length: 64 }, (_, i) => idp.token(["reader", "writer", "admin"][i % 3]!)),
    );
    // Warm both (JIT, key import, cache fill) before timing.
    await round(uncached, tokens, inFlight);
    await round(cached, tokens, inFlight);
    const u: Round[] = [];
    const c: Round[] = [];
    // Alternating rounds, so load from other processes lands on both alike.
    for (let r = 0; r < ROUNDS; r++) {
      u.push(await round(uncached, tokens, inFlight));
      c.push(await round(cached, tokens, inFlight));
    }
    const uRate = median(u.map((x) => x.perSecond));
    const cRate = median(c.map((x) => x.perSecond));
    const uCpu = median(u.map((x) => x.cpuMicros));
    const cCpu = median(c.map((x) => x.cpuMicros));
    console.log(
      `${alg.padEnd(6)} ${String(inFlight).padStart(9)} ${uRate.toFixed(0).padStart(11)} ${cRate.toFixed(0).padStart(11)} ${(cRate / uRate).toFixed(1).padStart(7)}x ${uCpu.toFixed(1).padStart(12)} ${cCpu.toFixed(2).padStart(12)}`,
    );
    uncached.close();
    cached.close();
  } finally {
    registry.close();
    await idp.stop();
  }
}

/**
 * A stale token sent again and again (a client whose refresh broke): CPU per refusal against the CPU
 * of an uncached verification of a valid token, same verifier settings, same IdP key.
 */
async function expiredRefusals(): Promise<void> {
  const idp = await startIdentityProvider({ signingAlg: "RS256", tokenTtlSeconds: 60 });
  const registry = new KeySetRegistry();
  try {
    const policy = await examplePolicy(idp.issuer);
    const valid = createBearerVerifier(policy, { keySets: registry, cacheSize: 0 });
    // Two hours ahead: every token the IdP issues is expired for this one.
    const late = createBearerVerifier(policy, {
      keySets: registry,
      cacheSize: 0,
      // The early refusal itself, not the refused-token cache (forgedFlood measures that).
      refusedCacheSize: 0,
      now: () => Date.now() + 7_200_000,
    });
    await Promise.all([valid.ready(), late.ready()]);
    const token = await idp.token("reader");
    const cpuPer = async (verifier: BearerVerifier, ok: boolean) => {
      const n = 5_000;
      const start = process.cpuUsage();
      for (let i = 0; i < n; i++) {
        if ((await verifier.verify(token)).ok !== ok) throw new Error("unexpected verification result");
      }
      const { user, system } = process.cpuUsage(start);
      return (user + system) / n;
    };
    await cpuPer(valid, true);
    await cpuPer(late, false);
    const [v, e] = [await cpuPer(valid, true), await cpuPer(late, false)];
    console.log(
      `RS256 expired token refused: ${e.toFixed(1)} us CPU, a valid one verified uncached: ${v.toFixed(1)} us (${(e / v).toFixed(2)}x)`,
    );
    valid.close();
    late.close();
  } finally {
    registry.close();
    await idp.stop();
  }
}

/**
 * A flood of forged tokens against the valid traffic it competes with, CPU per verify() call, same
 * process: a new forged token each time (a signature check each: the flood without
 * failedAuthenticationLimit), one forged token repeated (refused from the cache of refused tokens), and
 * a valid token served from the verified-token cache. A flood past failedAuthenticationLimit's burst
 * never reaches verify(): bench/forged-flood.ts measures it through the whole proxy.
 */
async function forgedFlood(): Promise<void> {
  const idp = await startIdentityProvider({ signingAlg: "RS256", tokenTtlSeconds: 3600 });
  const registry = new KeySetRegistry();
  try {
    const policy = await examplePolicy(idp.issuer);
    const verifier = createBearerVerifier(policy, { keySets: registry });
    await verifier.ready();
    const valid = await idp.token("reader");
    const idpKid = idp.kids()[0];
    // The IdP's kid, a key of the forger's own: a signature check every time.
    const { privateKey } = await generateKeyPair("RS256");
    const forge = (i: number) =>
      new SignJWT({ scope: "orders.admin", client_id: "x" })
        .setProtectedHeader({ alg: "RS256", kid: idpKid ?? "" })
        .setIssuer(idp.issuer)
        .setAudience(idp.audience)
        .setSubject(`victim-${i}`)
        .setIssuedAt()
        .setExpirationTime("1h")
        .sign(privateKey);
    const n = 2_000;
    const forged = await Promise.all(Array.from({ length: n }, (_, i) => forge(i)));
    const cpuPer = async (step: (i: number) => Promise<unknown>) => {
      const start = process.cpuUsage();
      for (let i = 0; i < n; i++) await step(i);
      const { user, system } = process.cpuUsage(start);
      return (user + system) / n;
    };
    const steps = {
      "forged, new each time": (i: number) => verifier.verify(forged[i]!),
      "forged, repeated": () => verifier.verify(forged[0]!),
      "valid, cached": () => verifier.verify(valid),
    };
    await cpuPer(steps["valid, cached"]);
    const costs = Object.keys(steps);
    const results: Record<string, number> = {};
    for (const name of costs) results[name] = await cpuPer(steps[name as keyof typeof steps]);
    const base = results["valid, cached"]!;
    for (const name of costs) {
      console.log(
        `  ${name.padEnd(40)} ${results[name]!.toFixed(2).padStart(8)} us CPU  ${(results[name]! / base).toFixed(1).padStart(7)}x a valid cached token`,
      );
    }
    verifier.close();
  } finally {
    registry.close();
    await idp.stop();
  }
}

/** What the refused-token cache's SHA-256 key costs (the verified-token cache is keyed by the token). */
function sha256Micros(token: string): number {
  const n = 200_000;
  const start = performance.now();
  for (let i = 0; i < n; i++) createHash("sha256").update(token).digest("base64url");
  return ((performance.now() - start) * 1000) / n;
}

console.log(
  `node ${process.version}; median of ${ROUNDS} alternating rounds of ${ROUND_MS} ms; 64 distinct real tokens`,
);
console.log(
  `${"alg".padEnd(6)} ${"in flight".padStart(9)} ${"uncached/s".padStart(11)} ${"cached/s".padStart(11)} ${"ratio".padStart(8)} ${"uncached us".padStart(12)} ${"cached us".padStart(12)}`,
);
for (const alg of ["RS256", "ES256"] as const) {
  for (const inFlight of [1, IN_FLIGHT]) await compare(alg, inFlight);
}
await expiredRefusals();
console.log("a forged-token flood, CPU per request (RS256):");
await forgedFlood();
const sample = "x".repeat(900);
console.log(
  `sha256 of a 900-char token: ${sha256Micros(sample).toFixed(2)} us (the refused-token cache's key, paid once per token the verified-token cache misses)`,
);
