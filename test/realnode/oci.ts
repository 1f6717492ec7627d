// OCI image archives from a root filesystem directory, for `ctr images import` on the real node
// (no registry and no Docker daemon here). One uncompressed layer: the archive never leaves the
// machine, and skipping gzip saves most of the build time.
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream, existsSync } from "node:fs";
import { cp, mkdir, mkdtemp, readFile, rename, rm, stat, symlink, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { promisify } from "node:util";

const exec = promisify(execFile);

export interface ImageConfig {
  Entrypoint?: string[];
  Cmd?: string[];
  Env: string[];
  WorkingDir?: string;
  User?: string;
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

function sha256(data: string): string {
  return createHash("sha256").update(data).digest("hex");
}

/** Writes `out` (an OCI image layout tarball) with `rootfs` as its only layer, files owned by root. */
export async function writeOciArchive(
  rootfs: string,
  name: string,
  config: ImageConfig,
  out: string,
): Promise<void> {
  const layout = await mkdtemp(`${out}.layout-`);
  try {
    const blobs = join(layout, "blobs", "sha256");
    await mkdir(blobs, { recursive: true });
    const layerPath = join(layout, "layer.tar");
    // Sorted, root-owned and with a fixed mtime: the same tree gives the same digest.
    await exec("tar", [
      "--sort=name",
      "--owner=0",
      "--group=0",
      "--numeric-owner",
      "--mtime=@0",
      "-C",
      rootfs,
      "-cf",
      layerPath,
      ".",
    ]);
    const layerDigest = await sha256File(layerPath);
    const layerSize = (await stat(layerPath)).size;
    await rename(layerPath, join(blobs, layerDigest));

    const blob = async (json: unknown) => {
      const text = JSON.stringify(json);
      const digest = sha256(text);
      await writeFile(join(blobs, digest), text);
      return { digest: `sha256:${digest}`, size: Buffer.byteLength(text) };
    };
    const imageConfig = await blob({
      architecture: "amd64",
      os: "linux",
      config,
      rootfs: { type: "layers", diff_ids: [`sha256:${layerDigest}`] },
    });
    const manifest = await blob({
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: { mediaType: "application/vnd.oci.image.config.v1+json", ...imageConfig },
      layers: [
        {
          mediaType: "application/vnd.oci.image.layer.v1.tar",
          digest: `sha256:${layerDigest}`,
          size: layerSize,
        },
      ],
    });
    await writeFile(join(layout, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
    await writeFile(
      join(layout, "index.json"),
      JSON.stringify({
        schemaVersion: 2,
        manifests: [
          {
            mediaType: "application/vnd.oci.image.manifest.v1+json",
            ...manifest,
            annotations: { "org.opencontainers.image.ref.name": name, "io.containerd.image.name": name },
          },
        ],
      }),
    );
    const partial = `${out}.partial`;
    await exec("tar", ["-C", layout, "-cf", partial, "oci-layout", "index.json", "blobs"]);
    await rename(partial, out);
  } finally {
    await rm(layout, { recursive: true, force: true });
  }
}

/** The shared libraries `ldd` names for each file, transitively (ldd already resolves the closure). */
async function sharedLibraries(files: readonly string[]): Promise<string[]> {
  const found = new Set<string>();
  for (const file of files) {
    const { stdout } = await exec("ldd", [file]).catch(() => ({ stdout: "" }));
    for (const match of stdout.matchAll(/(\/\S+) \(0x/g)) if (match[1]) found.add(match[1]);
  }
  return [...found].sort();
}

/** Copies each host file to a path under rootfs, with the shared libraries it loads. */
export async function copyWithLibraries(
  rootfs: string,
  files: readonly { from: string; to: string }[],
): Promise<void> {
  for (const file of files) {
    await mkdir(dirname(join(rootfs, file.to)), { recursive: true });
    await cp(file.from, join(rootfs, file.to), { dereference: true });
  }
  await copyLibrariesFor(
    rootfs,
    files.map((f) => f.from),
  );
}

/** Copies the shared libraries these host files load to the same paths under rootfs. */
export async function copyLibrariesFor(rootfs: string, files: readonly string[]): Promise<void> {
  for (const library of await sharedLibraries(files)) {
    const target = join(rootfs, library);
    if (existsSync(target)) continue;
    await mkdir(dirname(target), { recursive: true });
    await cp(library, target, { dereference: true });
  }
}

/** /etc/passwd, /etc/group and a world-writable /tmp: what a distroless base gives. */
export async function writeBaseFiles(
  rootfs: string,
  users: readonly { name: string; id: number }[],
): Promise<void> {
  await mkdir(join(rootfs, "etc"), { recursive: true });
  const all = [{ name: "root", id: 0 }, ...users];
  await writeFile(
    join(rootfs, "etc", "passwd"),
    all.map((u) => `${u.name}:x:${u.id}:${u.id}::/tmp:/sbin/nologin\n`).join(""),
  );
  await writeFile(join(rootfs, "etc", "group"), all.map((u) => `${u.name}:x:${u.id}:\n`).join(""));
  await writeFile(join(rootfs, "etc", "nsswitch.conf"), "passwd: files\ngroup: files\nhosts: files dns\n");
  await mkdir(join(rootfs, "tmp"), { recursive: true, mode: 0o1777 });
  await exec("chmod", ["1777", join(rootfs, "tmp")]);
}

export async function linkInto(rootfs: string, target: string, linkPath: string): Promise<void> {
  const at = join(rootfs, linkPath);
  await mkdir(dirname(at), { recursive: true });
  await rm(at, { force: true });
  await symlink(target, at);
}

export async function readJson<T>(path: string): Promise<T> {
  return JSON.parse(await readFile(path, "utf8")) as T;
}
