// The policy source in process, against real IdPs: the first load, when a reload is swapped in
// (after the new policy's keys load, or after the timeout), and what a bad reload leaves in force.
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { parse, stringify } from "yaml";
import { type IdentityProvider, startIdentityProvider } from "../examples/idp.ts";
import { PolicyError } from "../policy/problems.ts";
import { createLogger } from "../proxy/access-log.ts";
import { KeySetRegistry } from "../proxy/authn/key-set.ts";
import { createProxyMetrics } from "../proxy/metrics.ts";
import { openPolicySource, type PolicySource } from "../proxy/policy-source.ts";

const examplePolicy = join(import.meta.dirname, "../examples/fastapi/policy.yaml");

let idp: IdentityProvider;
let other: IdentityProvider;
let dir: string;
let exampleText: string;

type Doc = { spec: { authentication: { issuers: Record<string, unknown>[] } } };

function policyText(issuers: readonly string[]): string {
  const doc = parse(exampleText) as Doc;
  const [template] = doc.spec.authentication.issuers;
  doc.spec.authentication.issuers = issuers.map((issuer) => ({ ...template, issuer }));
  return stringify(doc);
}

beforeAll(async () => {
  [idp, other] = await Promise.all([startIdentityProvider(), startIdentityProvider()]);
  dir = await mkdtemp(join(tmpdir(), "portcullis-source-"));
  exampleText = await readFile(examplePolicy, "utf8");
});

afterAll(async () => {
  await Promise.all([idp?.stop(), other?.stop()]);
  if (dir) await rm(dir, { recursive: true, force: true });
});

const open: { source?: PolicySource; keySets?: KeySetRegistry } = {};
afterEach(() => {
  open.source?.close();
  open.keySets?.close();
});

async function openSource(file: string, swapTimeoutMs = 10_000) {
  let log = "";
  const destination = new Writable({
    write(chunk: Buffer, _encoding, done) {
      log += chunk.toString("utf8");
      done();
    },
  });
  const logger = createLogger({ format: "json", level: "info", destination });
  const metrics = createProxyMetrics();
  const keySets = new KeySetRegistry();
  open.keySets = keySets;
  // Polling off: these tests call refresh() themselves.
  const source = await openPolicySource({
    file,
    logger,
    metrics,
    keySets,
    swapTimeoutMs,
    pollIntervalMs: 3_600_000,
  });
  open.source = source;
  return { source, metrics, log: () => log };
}

describe("openPolicySource", () => {
  it("throws PolicyError with every problem when the first load is invalid", async () => {
    const file = join(dir, "invalid.yaml");
    await writeFile(file, "apiVersion: portcullis.dev/v1alpha1\nkind: AccessPolicy\nspec: {}\n");
    const failure = await openPolicySource({
      file,
      logger: createLogger({ format: "json", level: "silent" }),
      metrics: createProxyMetrics(),
      keySets: new KeySetRegistry(),
    }).catch((e: unknown) => e);
    expect(failure).toBeInstanceOf(PolicyError);
    expect((failure as PolicyError).problems.length).toBeGreaterThan(1);
  });

  it("swaps in a policy with a new issuer once that issuer's keys are loaded", async () => {
    const file = join(dir, "two-issuers.yaml");
    await writeFile(file, policyText([idp.issuer]));
    const { source, metrics } = await openSource(file);
    await source.keysReady();
    const first = source.current();

    await writeFile(file, policyText([idp.issuer, other.issuer]));
    await source.refresh();
    const second = source.current();
    expect(second).not.toBe(first);
    expect([...second.policy.issuers.keys()]).toEqual([idp.issuer, other.issuer]);
    expect(second.verifier.isReady()).toBe(true);
    const token = await other.token("reader");
    expect((await second.verifier.verify(token)).ok).toBe(true);
    expect(await metrics.register.metrics()).toContain(
      'portcullis_policy_reloads_total{outcome="success"} 1',
    );
  });

  it("swaps in anyway after the timeout when a new issuer's keys cannot be loaded", async () => {
    const file = join(dir, "unreachable.yaml");
    await writeFile(file, policyText([idp.issuer]));
    const { source, log } = await openSource(file, 300);
    await source.keysReady();
    // Nothing listens on port 9 of loopback: the new issuer's key set cannot load.
    await writeFile(file, policyText([idp.issuer, "http://127.0.0.1:9"]));
    await source.refresh();
    expect([...source.current().policy.issuers.keys()]).toContain("http://127.0.0.1:9");
    expect(source.keysWarm()).toBe(false);
    expect(log()).toContain("new policy's keys are not all loaded yet");
    // The issuer both policies share kept its warm keys through the registry.
    expect((await source.current().verifier.verify(await idp.token("reader"))).ok).toBe(true);
  });

  it("keeps the last good policy through a broken file and an unreadable one, counting each once", async () => {
    const file = join(dir, "broken.yaml");
    await writeFile(file, policyText([idp.issuer]));
    const { source, metrics, log } = await openSource(file);
    const good = source.current();

    await writeFile(file, "spec: [not, a, policy");
    await source.refresh();
    await source.refresh();
    expect(source.current()).toBe(good);
    await rm(file);
    await source.refresh();
    expect(source.current()).toBe(good);
    expect(await metrics.register.metrics()).toContain('portcullis_policy_reloads_total{outcome="error"} 2');
    expect(log()).toContain("cannot read: ENOENT");

    // Back to the same valid text: a reload of it (the file changed, even if to an earlier version).
    await writeFile(file, policyText([idp.issuer]));
    await source.refresh();
    expect(source.current()).not.toBe(good);
    expect(await metrics.register.metrics()).toContain(
      'portcullis_policy_reloads_total{outcome="success"} 1',
    );
  });
});
