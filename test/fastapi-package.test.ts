// portcullis-fastapi (sdk/python): its pytest suite in the repository's venv; a wheel built with
// `python -m build` that pip installs into a fresh venv, where the README's quick start runs under
// uvicorn; and its defaults held against the policy schema's.
import { execFile } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startUpstream, type Upstream } from "../examples/fastapi/upstream.ts";
import { ensureVenv, sdkDir } from "../examples/fastapi/venv.ts";
import { Assertion, IdentityHeaders, Sidecar } from "../policy/schema.ts";

interface Run {
  code: number;
  output: string;
}

function run(
  file: string,
  args: readonly string[],
  cwd: string,
  env: Record<string, string> = {},
): Promise<Run> {
  return new Promise((done) => {
    execFile(
      file,
      args,
      { cwd, env: { ...process.env, PYTHONDONTWRITEBYTECODE: "1", ...env }, maxBuffer: 32 * 1024 * 1024 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === "number" ? error.code : 1;
        done({ code, output: `${stdout}${stderr}` });
      },
    );
  });
}

let python = "";
let dir = "";

beforeAll(async () => {
  python = await ensureVenv();
  dir = await mkdtemp(join(tmpdir(), "portcullis-fastapi-package-"));
}, 600_000);

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("portcullis-fastapi", () => {
  it("passes its pytest suite", async () => {
    const { code, output } = await run(python, ["-m", "pytest", "-q"], sdkDir);
    expect(code, output).toBe(0);
    expect(output).toMatch(/^\d+ passed\b/m);
    expect(output).not.toMatch(/\d+ (failed|errors?)\b/);
  }, 180_000);

  it("defaults to the policy schema's header names and the sidecar's admin port", async () => {
    const { code, output } = await run(
      python,
      [
        "-c",
        "import json; from portcullis_fastapi import IdentitySettings as I, AssertionSettings as A; s = I(); a = A(audience='x'); print(json.dumps([s.subject_header, s.roles_header, s.scopes_header, s.client_id_header, s.issuer_header, a.header, a.jwks_url]))",
      ],
      sdkDir,
      { PYTHONPATH: join(sdkDir, "src") },
    );
    expect(code, output).toBe(0);
    const { subject, roles, scopes, clientId, issuer } = IdentityHeaders.properties;
    expect(JSON.parse(output)).toEqual([
      subject.default,
      roles.default,
      scopes.default,
      clientId.default,
      issuer.default,
      Assertion.properties.header.default,
      `http://127.0.0.1:${Sidecar.properties.adminPort.default}/jwks.json`,
    ]);
  });

  describe("the built wheel in a fresh venv", () => {
    let wheel = "";
    let app: Upstream | undefined;

    afterAll(async () => {
      await app?.stop();
    });

    it("builds a typed wheel with python -m build", async () => {
      const dist = join(dir, "dist");
      const built = await run(python, ["-m", "build", "--wheel", "--outdir", dist, sdkDir], sdkDir);
      expect(built.code, built.output).toBe(0);
      const wheels = readdirSync(dist).filter((name) => name.endsWith(".whl"));
      expect(wheels).toEqual(["portcullis_fastapi-0.1.0-py3-none-any.whl"]);
      wheel = join(dist, wheels[0]!);
      const listed = await run(
        python,
        [
          "-c",
          "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); print('\\n'.join(z.namelist())); print(z.read('portcullis_fastapi-0.1.0.dist-info/METADATA').decode())",
          wheel,
        ],
        dir,
      );
      expect(listed.code, listed.output).toBe(0);
      expect(listed.output).toContain("portcullis_fastapi/py.typed");
      expect(listed.output).toContain("portcullis_fastapi/__init__.py");
      expect(listed.output).not.toMatch(/^tests\//m);
      expect(listed.output).toMatch(/^Requires-Dist: pyjwt\[crypto\]>=2\.8$/im);
      expect(listed.output).toMatch(/^Requires-Dist: fastapi>=0\.110$/m);
    }, 300_000);

    it("pip installs into a fresh venv, where the README's quick start runs under uvicorn", async () => {
      expect(wheel).not.toBe("");
      const venv = join(dir, "venv");
      const made = await run(python, ["-m", "venv", venv], dir);
      expect(made.code, made.output).toBe(0);
      const fresh = join(venv, "bin", "python");
      // The README's own install line, with the wheel in place of the index's copy.
      const installed = await run(fresh, ["-m", "pip", "install", "--quiet", wheel, "uvicorn"], dir);
      expect(installed.code, installed.output).toBe(0);

      const readme = readFileSync(join(sdkDir, "README.md"), "utf8");
      const quickStart = /## Quick start[\s\S]*?```python\n([\s\S]*?)```/.exec(readme)?.[1];
      expect(quickStart).toContain("setup(app)");
      expect(quickStart?.split("\n").filter((line) => line.trim() !== "").length).toBeLessThanOrEqual(12);
      const appDir = join(dir, "quickstart");
      await mkdir(appDir);
      await writeFile(join(appDir, "main.py"), quickStart ?? "");
      app = await startUpstream({
        app: { python: fresh, dir: appDir, target: "main:app" },
        readyPath: "/docs",
      });

      const me = await fetch(`${app.url}/me`, {
        headers: { "X-Auth-Subject": "alice", "X-Auth-Roles": "reader" },
      });
      expect(me.status).toBe(200);
      expect(await me.json()).toEqual({ sub: "alice", roles: ["reader"] });

      const anonymous = await fetch(`${app.url}/me`);
      expect(anonymous.status).toBe(401);
      expect(anonymous.headers.get("content-type")).toBe("application/problem+json");
      expect(await anonymous.json()).toMatchObject({ type: "https://portcullis.dev/problems/no-identity" });

      const reader = { "X-Auth-Subject": "alice", "X-Auth-Roles": "reader" };
      const refused = await fetch(`${app.url}/orders/7`, { method: "DELETE", headers: reader });
      expect(refused.status).toBe(403);
      const admin = { "X-Auth-Subject": "carol", "X-Auth-Roles": "admin,reader" };
      const deleted = await fetch(`${app.url}/orders/7`, { method: "DELETE", headers: admin });
      expect(await deleted.json()).toEqual({ deleted: 7 });

      const openapi = (await (await fetch(`${app.url}/openapi.json`)).json()) as {
        components: { securitySchemes: Record<string, unknown> };
        paths: Record<string, Record<string, Record<string, unknown>>>;
      };
      expect(openapi.components.securitySchemes.Portcullis).toMatchObject({ type: "http", scheme: "bearer" });
      expect(openapi.paths["/orders/{order_id}"]?.delete?.["x-portcullis-roles"]).toEqual([
        { allRoles: ["admin"] },
      ]);
    }, 300_000);
  });
});
