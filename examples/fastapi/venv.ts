// The Python environment the example app runs in: `.venv/` at the repository root, created on
// first use and re-installed whenever requirements.txt, the portcullis-fastapi package it installs from
// sdk/python, or that package's test requirements change. PORTCULLIS_PYTHON overrides it.
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join, relative, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

export const repoRoot = resolve(import.meta.dirname, "../..");
export const requirementsFile = join(import.meta.dirname, "requirements.txt");
/** The Python package apps use behind the sidecar (`portcullis-fastapi`), installed from source. */
export const sdkDir = join(repoRoot, "sdk", "python");
/** pytest, httpx2 and build for the package's own tests (test/fastapi-package.test.ts). */
const sdkTestRequirements = join(sdkDir, "requirements-test.txt");

const venvDir = join(repoRoot, ".venv");
const venvPython = join(venvDir, "bin", "python");
const stampFile = join(venvDir, "portcullis-requirements.sha256");
// Test files run in parallel processes: only one of them may create or install the venv.
const lockFile = join(repoRoot, ".cache", "venv.lock");
const staleLockMs = 15 * 60_000;

let pending: Promise<string> | undefined;

/**
 * Path of a python executable that has examples/fastapi/requirements.txt (with portcullis-fastapi) and
 * sdk/python/requirements-test.txt installed.
 */
export function ensureVenv(): Promise<string> {
  const override = process.env.PORTCULLIS_PYTHON;
  if (override) return Promise.resolve(override);
  pending ??= prepare().catch((error: unknown) => {
    pending = undefined;
    throw error;
  });
  return pending;
}

async function prepare(): Promise<string> {
  const wanted = await requirementsHash();
  if (await isCurrent(wanted)) return venvPython;
  return withLock(async () => {
    if (await isCurrent(wanted)) return venvPython;
    if (!existsSync(venvPython)) await run("python3", ["-m", "venv", "--clear", venvDir]);
    await rm(stampFile, { force: true });
    // cwd: pip resolves the requirements' `./sdk/python` against its working directory.
    await run(
      venvPython,
      [
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "-r",
        requirementsFile,
        "-r",
        sdkTestRequirements,
      ],
      repoRoot,
    );
    await writeFile(stampFile, `${wanted}\n`);
    return venvPython;
  });
}

/** The files whose content decides what the venv holds: requirements and the package's sources. */
export async function venvInputs(): Promise<string[]> {
  return [requirementsFile, sdkTestRequirements, ...(await packageSources())];
}

/** What goes into the portcullis-fastapi wheel: pyproject.toml, README.md and src/ (no bytecode). */
async function packageSources(): Promise<string[]> {
  const files = [join(sdkDir, "pyproject.toml"), join(sdkDir, "README.md")];
  const visit = async (dir: string): Promise<void> => {
    for (const entry of (await readdir(dir, { withFileTypes: true })).sort((a, b) =>
      a.name < b.name ? -1 : 1,
    )) {
      if (entry.name === "__pycache__") continue;
      const path = join(dir, entry.name);
      if (entry.isDirectory()) await visit(path);
      else files.push(path);
    }
  };
  await visit(join(sdkDir, "src"));
  return files;
}

async function requirementsHash(): Promise<string> {
  const hash = createHash("sha256");
  for (const file of await venvInputs()) {
    hash.update(`${relative(repoRoot, file)}\0`);
    hash.update(await readFile(file));
    hash.update("\0");
  }
  return hash.digest("hex");
}

async function isCurrent(wanted: string): Promise<boolean> {
  if (!existsSync(venvPython)) return false;
  const stamp = await readFile(stampFile, "utf8").catch(() => "");
  return stamp.trim() === wanted;
}

async function withLock<T>(work: () => Promise<T>): Promise<T> {
  await mkdir(join(repoRoot, ".cache"), { recursive: true });
  for (;;) {
    try {
      await writeFile(lockFile, String(process.pid), { flag: "wx" });
      break;
    } catch (error) {
      if (!isErrno(error, "EEXIST")) throw error;
      if (await isStale()) await rm(lockFile, { force: true });
      else await sleep(250);
    }
  }
  try {
    return await work();
  } finally {
    await rm(lockFile, { force: true });
  }
}

// A lock left by a process that died (or that is implausibly old) must not block forever.
async function isStale(): Promise<boolean> {
  const [holder, info] = await Promise.all([
    readFile(lockFile, "utf8").catch(() => ""),
    stat(lockFile).catch(() => undefined),
  ]);
  if (info === undefined) return false;
  if (Date.now() - info.mtimeMs > staleLockMs) return true;
  const pid = Number.parseInt(holder, 10);
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return false;
  } catch (error) {
    return isErrno(error, "ESRCH");
  }
}

function isErrno(error: unknown, code: string): boolean {
  return error instanceof Error && "code" in error && error.code === code;
}

function run(command: string, args: readonly string[], cwd?: string): Promise<void> {
  return new Promise((done, fail) => {
    execFile(command, args, { maxBuffer: 16 * 1024 * 1024, cwd }, (error, _stdout, stderr) => {
      if (error) fail(new Error(`${command} ${args.join(" ")} failed: ${error.message}\n${stderr}`));
      else done();
    });
  });
}
