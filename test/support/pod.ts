// Runs a pod's containers as local processes, as a kubelet would, from the Deployment the API server
// holds (envtest has no kubelet). What cannot be verbatim on one machine is mapped and nothing else:
// container ports become free loopback ports (one pod's ports would clash with the next), ConfigMap
// volumes become directories laid out the way the kubelet projects them (`..data` symlink swaps), and
// images become the repository's programs (the proxy image runs proxy/main.ts; the app image runs
// examples/fastapi with the venv's python).

import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { V1ConfigMap, V1Container, V1Deployment, V1EnvVar, V1Secret } from "@kubernetes/client-node";
import { ensureVenv } from "../../examples/fastapi/venv.ts";
import { freePort } from "../../examples/free-port.ts";
import { type SupervisedProcess, startSupervisedProcess } from "./supervised-process.ts";

const root = join(import.meta.dirname, "..", "..");

/** A ConfigMap volume as the kubelet projects it: files behind `..data`, swapped atomically on update. */
export class ProjectedConfigMap {
  readonly dir: string;
  #generation = 0;
  constructor(dir: string) {
    this.dir = dir;
    mkdirSync(dir, { recursive: true });
  }
  write(data: Record<string, string>): void {
    const version = `..${Date.now()}_${++this.#generation}`;
    mkdirSync(join(this.dir, version));
    for (const [key, value] of Object.entries(data)) writeFileSync(join(this.dir, version, key), value);
    const next = join(this.dir, "..data_tmp");
    rmSync(next, { force: true });
    symlinkSync(version, next);
    renameSync(next, join(this.dir, "..data"));
    for (const key of Object.keys(data)) {
      try {
        symlinkSync(join("..data", key), join(this.dir, key));
      } catch {
        // already linked through ..data
      }
    }
  }
}

export interface LocalPod {
  /** Container port (as declared in the pod spec) -> the local port it really listens on. */
  readonly ports: ReadonlyMap<number, number>;
  readonly processes: ReadonlyMap<string, SupervisedProcess>;
  /** The ConfigMap volumes by volume name, for updates the way the kubelet delivers them. */
  readonly volumes: ReadonlyMap<string, ProjectedConfigMap>;
  /** The local port of a named or numbered container port. */
  port(nameOrNumber: string | number): number;
  stop(): Promise<void>;
}

export interface RunPodOptions {
  deployment: V1Deployment;
  configMaps: ReadonlyMap<string, V1ConfigMap>;
  /** Secrets of the pod's namespace by name, for env valueFrom.secretKeyRef (as the kubelet reads them). */
  secrets?: ReadonlyMap<string, V1Secret>;
  /** Maps a container's image to the local command that stands in for it. */
  images: (container: V1Container) => { command: string; args: string[]; cwd?: string };
}

/** The repository's stand-ins for the example's images. */
export async function exampleImages(): Promise<RunPodOptions["images"]> {
  const python = await ensureVenv();
  return (container) => {
    if (container.name === "portcullis") {
      // The image's portcullis-proxy (Dockerfile) is proxy/main.ts here.
      if (JSON.stringify(container.command) !== JSON.stringify(["portcullis-proxy"])) {
        throw new Error(`the sidecar runs ${JSON.stringify(container.command)}, not portcullis-proxy`);
      }
      return { command: process.execPath, args: [join(root, "proxy/main.ts"), ...(container.args ?? [])] };
    }
    const [program, ...rest] = [...(container.command ?? []), ...(container.args ?? [])];
    if (program !== "python") throw new Error(`no local stand-in for ${container.name}'s ${program}`);
    return { command: python, args: rest, cwd: join(root, "examples/fastapi") };
  };
}

export async function runPod(options: RunPodOptions): Promise<LocalPod> {
  const spec = options.deployment.spec?.template.spec;
  if (!spec) throw new Error("the Deployment has no pod template");
  const dir = mkdtempSync(join(tmpdir(), "portcullis-pod-"));
  // Native sidecars (init containers with restartPolicy Always) start first, like the kubelet does.
  const sidecars = (spec.initContainers ?? []).filter((c) => c.restartPolicy === "Always");
  const containers = [...sidecars, ...spec.containers];

  const ports = new Map<number, number>();
  const named = new Map<string, number>();
  for (const container of containers) {
    for (const port of container.ports ?? []) {
      ports.set(port.containerPort, await freePort());
      if (port.name) named.set(port.name, port.containerPort);
    }
  }
  const volumes = new Map<string, ProjectedConfigMap>();
  for (const volume of spec.volumes ?? []) {
    const configMap = volume.configMap?.name ? options.configMaps.get(volume.configMap.name) : undefined;
    if (!configMap) continue;
    const projected = new ProjectedConfigMap(join(dir, "volumes", volume.name));
    projected.write(configMap.data ?? {});
    volumes.set(volume.name, projected);
  }

  // Rewrites a container's argument: declared ports -> local ports, mount paths -> volume dirs.
  const localize = (container: V1Container, value: string): string => {
    let out = value.replace(/(^|[:=])(\d{2,5})\b/g, (whole, sep: string, digits: string) => {
      const local = ports.get(Number(digits));
      return local === undefined ? whole : `${sep}${local}`;
    });
    for (const mount of container.volumeMounts ?? []) {
      const volume = volumes.get(mount.name);
      if (volume && out.startsWith(mount.mountPath)) out = volume.dir + out.slice(mount.mountPath.length);
    }
    return out;
  };

  const processes = new Map<string, SupervisedProcess>();
  const pod: LocalPod = {
    ports,
    processes,
    volumes,
    port(nameOrNumber) {
      const declared = typeof nameOrNumber === "number" ? nameOrNumber : named.get(nameOrNumber);
      const local = declared === undefined ? undefined : ports.get(declared);
      if (local === undefined) throw new Error(`the pod declares no port ${nameOrNumber}`);
      return local;
    },
    async stop() {
      await Promise.all([...processes.values()].map((p) => p.stop(5000)));
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    for (const container of containers) {
      const { command, args, cwd } = options.images(container);
      const env: Record<string, string> = { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/" };
      for (const variable of container.env ?? []) {
        const value = variable.value ?? secretValue(options.secrets, variable);
        if (value !== undefined) env[variable.name] = value;
      }
      const child = startSupervisedProcess(
        container.name,
        command,
        args.map((a) => localize(container, a)),
        join(dir, `${container.name}.log`),
        { cwd, env },
      );
      processes.set(container.name, child);
    }
  } catch (error) {
    await pod.stop();
    throw error;
  }
  return pod;
}

/** env valueFrom.secretKeyRef as the kubelet resolves it: a missing optional Secret or key sets nothing. */
function secretValue(
  secrets: ReadonlyMap<string, V1Secret> | undefined,
  variable: V1EnvVar,
): string | undefined {
  const ref = variable.valueFrom?.secretKeyRef;
  if (ref === undefined) return undefined;
  const data = secrets?.get(ref.name ?? "")?.data?.[ref.key];
  if (data === undefined) {
    if (ref.optional) return undefined;
    throw new Error(
      `secret ${ref.name}/${ref.key} for ${variable.name} is missing (the kubelet would not start the pod)`,
    );
  }
  return Buffer.from(data, "base64").toString("utf8");
}
