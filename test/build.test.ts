// The compiled build (`npm run build`, what the image runs): every program loads and works from
// JavaScript alone, with Node's type stripping switched off, so no .ts import survived compilation.
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const repoRoot = join(import.meta.dirname, "..");
// Inside the repository, so the compiled files resolve node_modules as the image's do.
let outDir: string;

beforeAll(() => {
  outDir = mkdtempSync(join(repoRoot, ".build-"));
  execFileSync(
    process.execPath,
    [join(repoRoot, "node_modules/typescript/bin/tsc"), "-p", "tsconfig.build.json", "--outDir", outDir],
    {
      cwd: repoRoot,
      stdio: "pipe",
    },
  );
}, 120_000);

afterAll(() => {
  if (outDir) rmSync(outDir, { recursive: true, force: true });
});

function runCompiled(args: readonly string[]) {
  return spawnSync(process.execPath, ["--no-experimental-strip-types", ...args], {
    cwd: repoRoot,
    encoding: "utf8",
    timeout: 30_000,
  });
}

describe("the compiled build", () => {
  it.each([
    ["proxy/main.js", "usage: portcullis-proxy"],
    ["operator/main.js", "usage: portcullis-operator"],
  ])("loads %s and every module it imports", (entry, usage) => {
    const result = runCompiled([join(outDir, entry), "--help"]);
    expect(result.stderr).toBe("");
    expect(result.stdout).toContain(usage);
    expect(result.status).toBe(0);
  });

  it("loads the Redis bucket store, which the proxy imports only when --redis-url is set", () => {
    const module = join(outDir, "proxy/redis-buckets.js");
    const result = runCompiled([
      "--input-type=module",
      "-e",
      `const m = await import(${JSON.stringify(module)}); console.log(typeof m.connectRedisBuckets);`,
    ]);
    expect(result.stderr).toBe("");
    expect(result.stdout.trim()).toBe("function");
  });

  it("loads neither Node's bundled undici nor the Redis client for the proxy (memory in every pod)", () => {
    const main = join(outDir, "proxy/main.js");
    const result = runCompiled([
      "--input-type=module",
      "-e",
      [
        `await import(${JSON.stringify(main)});`,
        `const { createRequire } = await import("node:module");`,
        "const cjs = Object.keys(createRequire(import.meta.url).cache);",
        "console.log(JSON.stringify({",
        "  bundledUndici: process.moduleLoadList.some((m) => m.includes('deps/undici')),",
        "  redis: cjs.some((file) => file.includes('/node_modules/@redis/')),",
        "  npmUndici: cjs.some((file) => file.includes('/node_modules/undici/')),",
        "}));",
      ].join("\n"),
    ]);
    expect(result.stderr).toBe("");
    // npm undici is the proxy's HTTP client; its presence shows the probe sees CJS modules at all.
    expect(JSON.parse(result.stdout)).toEqual({ bundledUndici: false, redis: false, npmUndici: true });
  });

  it("validates the example policy with the compiled CLI", () => {
    const result = runCompiled([join(outDir, "policy/cli.js"), "validate", "examples/fastapi/policy.yaml"]);
    expect(result.status).toBe(0);
    expect(result.stdout).toContain("OK");
  });
});
