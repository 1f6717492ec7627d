// The images the real node runs, built on the host without a Docker daemon and cached by the hash
// of their inputs:
//   - the project's image, by carrying out the repository's Dockerfile (dockerfile.ts) on top of a
//     base made of the Node 24 binary the `node` devDependency brings;
//   - the FastAPI example (examples/fastapi) with the Python the venv was made from;
//   - the kubelet's sandbox ("pause") image, a static C program.
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { chmod, cp, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join, relative, resolve } from "node:path";
import { promisify } from "node:util";
import { ensureVenv, venvInputs } from "../../examples/fastapi/venv.ts";
import { cacheRoot } from "../setup/cache.ts";
import { parseDockerfile, type Stage } from "./dockerfile.ts";
import {
  copyLibrariesFor,
  copyWithLibraries,
  type ImageConfig,
  linkInto,
  writeBaseFiles,
  writeOciArchive,
} from "./oci.ts";

const exec = promisify(execFile);
const repoRoot = resolve(import.meta.dirname, "..", "..");

export interface ImageArchive {
  /** The name the node knows it by (`ctr images import` keeps it). */
  name: string;
  path: string;
  config: ImageConfig;
}

/** The names the chart, the operator's default and examples/fastapi/deployment.yaml use. */
export const IMAGE_NAMES = {
  portcullis: "ghcr.io/portcullis-dev/portcullis:0.1.0",
  fastapi: "ghcr.io/portcullis-dev/orders-api:0.1.0",
  pause: "localhost/pause:3.10",
} as const;

/** The PATH of Debian-based official images, which the Dockerfile's base has. */
const DEBIAN_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

async function hashInputs(paths: readonly string[], extra: readonly string[] = []): Promise<string> {
  const hash = createHash("sha256");
  for (const item of extra) hash.update(`${item}\0`);
  const visit = async (path: string): Promise<void> => {
    const info = await stat(path);
    if (info.isDirectory()) {
      for (const entry of (await readdir(path)).sort()) await visit(join(path, entry));
      return;
    }
    hash.update(`${relative(repoRoot, path)}\0`);
    hash.update(await readFile(path));
  };
  for (const path of paths) await visit(path);
  return hash.digest("hex").slice(0, 16);
}

/** Builds into the cache unless an archive for these inputs is there already. */
async function cached(
  kind: string,
  inputsHash: string,
  build: (rootfs: string) => Promise<ImageConfig>,
  name: string,
): Promise<ImageArchive> {
  const dir = join(cacheRoot(), "images");
  const path = join(dir, `${kind}-${inputsHash}.tar`);
  const configPath = `${path}.config.json`;
  if (existsSync(path) && existsSync(configPath)) {
    return { name, path, config: JSON.parse(await readFile(configPath, "utf8")) as ImageConfig };
  }
  await mkdir(dir, { recursive: true });
  // Older archives of the same kind are of no further use.
  for (const entry of await readdir(dir))
    if (entry.startsWith(`${kind}-`)) await rm(join(dir, entry), { force: true });
  const rootfs = await mkdtemp(join(dir, `.rootfs-${kind}-`));
  try {
    const config = await build(rootfs);
    await writeOciArchive(rootfs, name, config, path);
    await writeFile(configPath, JSON.stringify(config));
    return { name, path, config };
  } finally {
    await rm(rootfs, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// The project's image, from the Dockerfile

const NODE_BINARY = join(repoRoot, "node_modules", "node", "bin", "node");

/** The base the Dockerfile names (node:24-*): Node 24 at /usr/local/bin/node, /usr/bin/env for shebangs. */
async function nodeBase(rootfs: string, base: string): Promise<string[]> {
  if (!/^node:24([.-]|$)/.test(base)) {
    throw new Error(`Dockerfile: FROM ${base}: test/realnode/images.ts builds node:24 bases only`);
  }
  await copyWithLibraries(rootfs, [
    { from: NODE_BINARY, to: "/usr/local/bin/node" },
    { from: "/usr/bin/env", to: "/usr/bin/env" },
  ]);
  await writeBaseFiles(rootfs, [
    { name: "node", id: 1000 },
    { name: "nonroot", id: 65532 },
  ]);
  return [DEBIAN_PATH];
}

/** A build stage's result: the repository after its RUN steps (npm ci is the host's own install). */
async function runBuildStage(stage: Stage): Promise<string> {
  let workdir = "/";
  for (const instruction of stage.instructions) {
    if (instruction.kind === "WORKDIR") workdir = instruction.path;
    if (instruction.kind !== "RUN") continue;
    for (const argv of instruction.commands) {
      const [command, ...args] = argv;
      if (command === "npm" && args[0] === "ci") continue;
      if (command === "node") {
        await exec(process.execPath, args, { cwd: repoRoot, maxBuffer: 16 * 1024 * 1024 });
        continue;
      }
      throw new Error(
        `Dockerfile stage ${stage.name}: RUN ${argv.join(" ")} is not carried out by images.ts`,
      );
    }
  }
  return workdir;
}

async function runFinalStageCommand(argv: readonly string[], rootfs: string, workdir: string): Promise<void> {
  const [command, ...args] = argv;
  const here = join(rootfs, workdir);
  if (command === "npm" && args[0] === "ci") {
    await exec("npm", args.length ? ["ci", ...args.slice(1)] : ["ci"], {
      cwd: here,
      maxBuffer: 16 * 1024 * 1024,
      env: { ...process.env, npm_config_prefer_offline: "true" },
    });
    return;
  }
  // The host's npm cache is not the image's: nothing to clean.
  if (command === "npm" && args[0] === "cache" && args[1] === "clean") return;
  if (command === "chmod" && args[0] === "+x") {
    for (const file of args.slice(1)) await chmod(join(here, file), 0o755);
    return;
  }
  if (command === "ln" && args[0] === "-s" && args.length === 3 && args[1] && args[2]) {
    await linkInto(rootfs, args[1], args[2]);
    return;
  }
  throw new Error(
    `Dockerfile: RUN ${argv.join(" ")} is not carried out by test/realnode/images.ts; teach it there`,
  );
}

/** Carries out the Dockerfile's last stage into rootfs and returns the image config it declares. */
export async function buildFromDockerfile(rootfs: string, dockerfileText: string): Promise<ImageConfig> {
  const stages = parseDockerfile(dockerfileText);
  const final = stages.at(-1);
  if (!final) throw new Error("Dockerfile: no stage");
  const env = await nodeBase(rootfs, final.base);
  const config: ImageConfig = { Env: env };
  let workdir = "/";
  for (const instruction of final.instructions) {
    switch (instruction.kind) {
      case "WORKDIR":
        workdir = instruction.path;
        config.WorkingDir = workdir;
        await mkdir(join(rootfs, workdir), { recursive: true });
        break;
      case "ENV":
        config.Env = [
          ...config.Env.filter((e) => !e.startsWith(`${instruction.name}=`)),
          `${instruction.name}=${instruction.value}`,
        ];
        break;
      case "COPY": {
        let sourceRoot = repoRoot;
        let sources = instruction.sources;
        if (instruction.from !== undefined) {
          const stage = stages.find((s) => s.name === instruction.from);
          if (!stage) throw new Error(`Dockerfile: COPY --from=${instruction.from}: no such stage`);
          const stageWorkdir = await runBuildStage(stage);
          sources = sources.map((s) => {
            if (!s.startsWith(`${stageWorkdir}/`))
              throw new Error(`Dockerfile: COPY --from: ${s} is outside ${stageWorkdir}`);
            return s.slice(stageWorkdir.length + 1);
          });
          sourceRoot = repoRoot;
        }
        const destination = join(
          rootfs,
          instruction.destination.startsWith("/") ? "" : workdir,
          instruction.destination,
        );
        await mkdir(destination, { recursive: true });
        for (const source of sources) {
          const from = join(sourceRoot, source);
          const info = await stat(from);
          // Docker copies a directory's contents, a file as itself.
          const to = info.isDirectory() ? destination : join(destination, source.split("/").at(-1) ?? source);
          await cp(from, to, { recursive: true });
        }
        break;
      }
      case "RUN":
        for (const argv of instruction.commands) await runFinalStageCommand(argv, rootfs, workdir);
        break;
      case "USER":
        config.User = instruction.user;
        break;
      case "ENTRYPOINT":
        config.Entrypoint = instruction.argv;
        break;
      case "CMD":
        config.Cmd = instruction.argv;
        break;
    }
  }
  return config;
}

export async function buildPortcullisImage(): Promise<ImageArchive> {
  const dockerfile = join(repoRoot, "Dockerfile");
  const inputs = [
    "Dockerfile",
    "package.json",
    "package-lock.json",
    "tsconfig.json",
    "tsconfig.build.json",
    "policy",
    "proxy",
    "operator",
  ];
  const hash = await hashInputs(
    inputs.map((p) => join(repoRoot, p)),
    [String((await stat(NODE_BINARY)).size)],
  );
  return cached(
    "portcullis",
    hash,
    async (rootfs) => buildFromDockerfile(rootfs, await readFile(dockerfile, "utf8")),
    IMAGE_NAMES.portcullis,
  );
}

// ---------------------------------------------------------------------------------------------
// The FastAPI example: the venv's Python (stdlib and site-packages) and the app, at /app

/** Standard-library parts an API server never loads (and their native modules' X11/Tk libraries). */
const STDLIB_LEFT_OUT = new Set([
  "test",
  "site-packages",
  "idlelib",
  "tkinter",
  "turtledemo",
  "ensurepip",
  "lib2to3",
]);

export async function buildFastapiImage(): Promise<ImageArchive> {
  const python = await ensureVenv();
  const { stdout } = await exec(python, [
    "-c",
    "import sys, sysconfig, json; print(json.dumps({'base': sys.base_prefix, 'version': f'{sys.version_info[0]}.{sys.version_info[1]}', 'purelib': sysconfig.get_paths()['purelib'], 'executable': sys.executable}))",
  ]);
  const info = JSON.parse(stdout) as { base: string; version: string; purelib: string; executable: string };
  const appDir = join(repoRoot, "examples", "fastapi");
  // The venv's inputs (requirements and portcullis-fastapi's sources): its site-packages is copied.
  const hash = await hashInputs([join(appDir, "app.py"), ...(await venvInputs())], [info.base, info.version]);
  return cached(
    "fastapi",
    hash,
    async (rootfs) => {
      const lib = `python${info.version}`;
      const stdlib = join(info.base, "lib", lib);
      const target = join(rootfs, "usr", "local", "lib", lib);
      await cp(stdlib, target, {
        recursive: true,
        filter: (source) => {
          const rel = relative(stdlib, source).split("/");
          return !(rel.length === 1 && STDLIB_LEFT_OUT.has(rel[0] ?? "")) && !source.includes("__pycache__");
        },
      });
      await rm(
        join(target, "lib-dynload", `_tkinter.cpython-${info.version.replace(".", "")}-x86_64-linux-gnu.so`),
        { force: true },
      );
      await cp(info.purelib, join(target, "site-packages"), {
        recursive: true,
        filter: (source) => !source.includes("__pycache__") && !/\/(pip|setuptools)(-[^/]*)?$/.test(source),
      });
      // The interpreter (a pyenv build finds libpython by its RPATH, copied to the same path) and
      // the libraries its native modules load (OpenSSL, libffi, zlib...), from the host.
      await copyWithLibraries(rootfs, [{ from: join(info.base, "bin", lib), to: `/usr/local/bin/${lib}` }]);
      const { stdout: sos } = await exec("find", [target, "-name", "*.so"]);
      await copyLibrariesFor(rootfs, sos.split("\n").filter(Boolean));
      await linkInto(rootfs, lib, "/usr/local/bin/python3");
      await linkInto(rootfs, lib, "/usr/local/bin/python");
      await mkdir(join(rootfs, "app"), { recursive: true });
      await cp(join(appDir, "app.py"), join(rootfs, "app", "app.py"));
      await writeBaseFiles(rootfs, [{ name: "app", id: 10001 }]);
      return {
        Env: [DEBIAN_PATH, "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"],
        WorkingDir: "/app",
        Cmd: ["python", "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", "8000"],
      };
    },
    IMAGE_NAMES.fastapi,
  );
}

// ---------------------------------------------------------------------------------------------
// The sandbox image

const PAUSE_C = `#include <signal.h>
#include <unistd.h>
#include <sys/wait.h>
static void bye(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) { signal(SIGINT, bye); signal(SIGTERM, bye); signal(SIGCHLD, reap); for (;;) pause(); }
`;

export async function buildPauseImage(): Promise<ImageArchive> {
  const hash = createHash("sha256").update(PAUSE_C).digest("hex").slice(0, 16);
  return cached(
    "pause",
    hash,
    async (rootfs) => {
      const source = join(rootfs, "..", `pause-${hash}.c`);
      await writeFile(source, PAUSE_C);
      try {
        await exec("cc", ["-static", "-O2", "-s", "-o", join(rootfs, "pause"), source]);
      } finally {
        await rm(source, { force: true });
      }
      return { Env: [], Entrypoint: ["/pause"] };
    },
    IMAGE_NAMES.pause,
  );
}

// `npm run image`: the project's image as an OCI archive, for `ctr images import` (or `podman load`,
// `skopeo copy oci-archive:...`) where no Docker daemon builds the Dockerfile.
if (import.meta.main) {
  buildPortcullisImage().then(
    (image) => console.log(`${image.name}\n${image.path}`),
    (error: unknown) => {
      console.error(error instanceof Error ? error.message : String(error));
      process.exit(1);
    },
  );
}
