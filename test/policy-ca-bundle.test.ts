// An issuer's caBundle as validation sees it: PEM text of CA certificates (made by openssl here),
// each parsed as X.509; anything else is an error at spec.authentication.issuers[i].caBundle.
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LIMITS } from "../policy/schema.ts";
import { validatePolicyObject } from "../policy/validate.ts";
import { issueCertificateAuthority, issueServingCertificate } from "./support/controlplane-pki.ts";
import { exampleDocument } from "./support/example-policy.ts";

const AT = "spec.authentication.issuers[0].caBundle";
const EXPIRED_CA = join(import.meta.dirname, "fixtures/expired-ca.pem");

let dir: string;
let caA: string;
let caB: string;
let leaf: string;
let leafKey: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "portcullis-ca-bundle-"));
  const [a, b] = await Promise.all([
    issueCertificateAuthority(dir, "a", "private-ca-a"),
    issueCertificateAuthority(dir, "b", "private-ca-b"),
  ]);
  const serving = await issueServingCertificate(dir, a, "idp", "idp.corp.example", ["DNS:idp.corp.example"]);
  [caA, caB, leaf, leafKey] = await Promise.all([
    readFile(a.certPath, "utf8"),
    readFile(b.certPath, "utf8"),
    readFile(serving.certPath, "utf8"),
    readFile(serving.keyPath, "utf8"),
  ]);
});

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** The example policy with `caBundle` on its issuer; what validation says about that field. */
function check(caBundle: string, issuer = "https://idp.corp.example") {
  const document = exampleDocument(issuer);
  document.spec.authentication.issuers[0]!.caBundle = caBundle;
  const { policy, problems } = validatePolicyObject(document, Date.now());
  return {
    valid: policy !== undefined,
    problems: problems.filter((p) => p.path === AT).map((p) => `${p.severity}: ${p.message}`),
  };
}

describe("issuer caBundle", () => {
  it("accepts one CA certificate, and several with comment lines between (a typical bundle file)", () => {
    expect(check(caA)).toEqual({ valid: true, problems: [] });
    expect(check(`# private-ca-a\n${caA}\n# private-ca-b\n${caB}`)).toEqual({ valid: true, problems: [] });
  });

  it("is PEM text, not base64 of it as in a webhook's clientConfig.caBundle", () => {
    expect(check(Buffer.from(caA).toString("base64"))).toEqual({
      valid: false,
      problems: ["error: holds no PEM certificate (-----BEGIN CERTIFICATE-----)"],
    });
  });

  it("refuses a server certificate that is not a CA, naming it", () => {
    expect(check(`${caA}${leaf}`)).toEqual({
      valid: false,
      problems: ["error: certificate 2 (CN=idp.corp.example) is not a CA certificate"],
    });
  });

  it("refuses a block that does not parse as X.509", () => {
    const body = caA.split("\n").slice(1, -2).join("\n");
    const corrupted = caA.replace(
      body,
      body.replace(/[A-Za-z]/g, (c) => (c === "A" ? "B" : "A")),
    );
    expect(check(corrupted)).toEqual({
      valid: false,
      problems: ["error: certificate 1 does not parse as X.509"],
    });
  });

  it("refuses a private key pasted with the certificate, without echoing it", () => {
    const result = check(`${leaf}${leafKey}`);
    expect(result.valid).toBe(false);
    expect(result.problems).toEqual([
      "error: holds a PRIVATE KEY block: only CA certificates (-----BEGIN CERTIFICATE-----) belong here",
    ]);
  });

  it("refuses a certificate cut off before its END line", () => {
    expect(check(`${caA}${caB.slice(0, caB.indexOf("-----END"))}`)).toEqual({
      valid: false,
      problems: ["error: has a certificate without its -----END CERTIFICATE----- line"],
    });
  });

  it("warns about an expired CA (fetches through it would fail) but keeps the policy valid", async () => {
    const expired = await readFile(EXPIRED_CA, "utf8");
    expect(check(`${caA}${expired}`)).toEqual({
      valid: true,
      problems: ["warning: certificate 2 expired on Jan  2 00:00:00 2020 GMT"],
    });
  });

  it("warns that it has no effect when the keys come over plain http (a loopback issuer)", () => {
    expect(check(caA, "http://127.0.0.1:9000")).toEqual({
      valid: true,
      problems: ["warning: has no effect: the keys are fetched over plain http"],
    });
  });

  it("is bounded by the schema to 64 KiB", () => {
    expect(LIMITS.caBundle).toBe(65536);
    const document = exampleDocument("https://idp.corp.example");
    document.spec.authentication.issuers[0]!.caBundle = caA.repeat(Math.ceil(65537 / caA.length));
    const { policy, problems } = validatePolicyObject(document, Date.now());
    expect(policy).toBeUndefined();
    expect(problems).toEqual([expect.objectContaining({ severity: "error", path: AT })]);
  });
});
