// Certificates and keys for a throw-away control plane, made with the openssl CLI (node:crypto
// can generate keys but cannot issue X.509 certificates). One CA signs the serving certificate
// and every client certificate, like envtest.
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);
const VALIDITY_DAYS = "7";

export interface ControlPlanePki {
  readonly caCertPath: string;
  readonly caKeyPath: string;
  readonly servingCertPath: string;
  readonly servingKeyPath: string;
  readonly serviceAccountKeyPath: string;
  readonly serviceAccountPublicKeyPath: string;
  /** Client certificate of the admin user, in group system:masters. */
  readonly admin: ClientCertificate;
}

export interface ClientCertificate {
  readonly certPath: string;
  readonly keyPath: string;
}

async function openssl(args: readonly string[]): Promise<void> {
  try {
    await run("openssl", args);
  } catch (error) {
    const stderr = error instanceof Error && "stderr" in error ? String(error.stderr) : "";
    throw new Error(`openssl ${args[0]} failed: ${stderr || String(error)}`);
  }
}

async function ecKey(path: string): Promise<void> {
  await openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path]);
}

// A distinguished name for `openssl req -subj`: `/`, `+`, `=` and `\` must be escaped.
function subject(commonName: string, organizations: readonly string[]): string {
  const escaped = (value: string) => value.replace(/[\\/+=]/g, (c) => `\\${c}`);
  return `${organizations.map((o) => `/O=${escaped(o)}`).join("")}/CN=${escaped(commonName)}`;
}

async function signedCertificate(
  dir: string,
  name: string,
  subj: string,
  extensions: readonly string[],
  issuer: { certPath: string; keyPath: string } | "self",
): Promise<ClientCertificate> {
  const keyPath = join(dir, `${name}.key`);
  const csrPath = join(dir, `${name}.csr`);
  const extPath = join(dir, `${name}.ext`);
  const certPath = join(dir, `${name}.crt`);
  await ecKey(keyPath);
  await openssl(["req", "-new", "-utf8", "-key", keyPath, "-subj", subj, "-out", csrPath]);
  await writeFile(extPath, `[v3]\n${extensions.join("\n")}\n`);
  const signer =
    issuer === "self"
      ? ["-signkey", keyPath]
      : [
          "-CA",
          issuer.certPath,
          "-CAkey",
          issuer.keyPath,
          "-set_serial",
          `0x${randomBytes(16).toString("hex")}`,
        ];
  await openssl([
    "x509",
    "-req",
    "-in",
    csrPath,
    ...signer,
    "-days",
    VALIDITY_DAYS,
    "-sha256",
    "-extfile",
    extPath,
    "-extensions",
    "v3",
    "-out",
    certPath,
  ]);
  return { certPath, keyPath };
}

/** A self-signed CA (`<fileName>.crt`, `<fileName>.key` in `dir`), e.g. a private CA an IdP's certificate chains to. */
export async function issueCertificateAuthority(
  dir: string,
  fileName = "ca",
  commonName = "portcullis-test-ca",
): Promise<ClientCertificate> {
  return signedCertificate(
    dir,
    fileName,
    subject(commonName, []),
    ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"],
    "self",
  );
}

export async function issueControlPlanePki(dir: string): Promise<ControlPlanePki> {
  const ca = await issueCertificateAuthority(dir);
  const caIssuer = { certPath: ca.certPath, keyPath: ca.keyPath };
  const serving = await signedCertificate(
    dir,
    "apiserver",
    subject("kube-apiserver", []),
    [
      "basicConstraints=critical,CA:FALSE",
      "keyUsage=critical,digitalSignature",
      "extendedKeyUsage=serverAuth",
      // 10.0.0.1 and kubernetes.default.svc: the in-cluster names of the apiserver.
      "subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc",
    ],
    caIssuer,
  );
  const admin = await issueClientCertificate(dir, caIssuer, "admin", "portcullis-admin", ["system:masters"]);

  // RSA like a real cluster's service-account signer, so tests can verify tokens as clients would.
  const serviceAccountKeyPath = join(dir, "service-account.key");
  const serviceAccountPublicKeyPath = join(dir, "service-account.pub");
  await openssl([
    "genpkey",
    "-algorithm",
    "RSA",
    "-pkeyopt",
    "rsa_keygen_bits:2048",
    "-out",
    serviceAccountKeyPath,
  ]);
  await openssl(["pkey", "-in", serviceAccountKeyPath, "-pubout", "-out", serviceAccountPublicKeyPath]);

  return {
    caCertPath: ca.certPath,
    caKeyPath: ca.keyPath,
    servingCertPath: serving.certPath,
    servingKeyPath: serving.keyPath,
    serviceAccountKeyPath,
    serviceAccountPublicKeyPath,
    admin,
  };
}

/** A client certificate for `user` in `groups` (the apiserver reads CN as user, each O as a group). */
export async function issueClientCertificate(
  dir: string,
  ca: { certPath: string; keyPath: string },
  fileName: string,
  user: string,
  groups: readonly string[],
): Promise<ClientCertificate> {
  return signedCertificate(
    dir,
    fileName,
    subject(user, groups),
    [
      "basicConstraints=critical,CA:FALSE",
      "keyUsage=critical,digitalSignature",
      "extendedKeyUsage=clientAuth",
    ],
    ca,
  );
}

/** A serving certificate for these subjectAltNames (e.g. `IP:10.0.0.1`, `DNS:kubernetes`), signed by `ca`. */
export async function issueServingCertificate(
  dir: string,
  ca: { certPath: string; keyPath: string },
  fileName: string,
  commonName: string,
  subjectAltNames: readonly string[],
): Promise<ClientCertificate> {
  return signedCertificate(
    dir,
    fileName,
    subject(commonName, []),
    [
      "basicConstraints=critical,CA:FALSE",
      "keyUsage=critical,digitalSignature",
      "extendedKeyUsage=serverAuth",
      `subjectAltName=${subjectAltNames.join(",")}`,
    ],
    ca,
  );
}
