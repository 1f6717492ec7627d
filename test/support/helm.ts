// The helm binary built by test/helm/build.sh (PORTCULLIS_HELM overrides), run as a real CLI.
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { cacheRoot } from "../setup/cache.ts";

const run = promisify(execFile);
const HELM_VERSION = "4.3.1";

export function helmBinary(): string {
  const fromEnv = process.env.PORTCULLIS_HELM;
  if (fromEnv) return fromEnv;
  const binary = join(cacheRoot(), `helm-v${HELM_VERSION}`, "helm");
  if (!existsSync(binary)) throw new Error(`${binary} is missing: run test/helm/build.sh`);
  return binary;
}

export async function helm(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(helmBinary(), args, { maxBuffer: 16 * 1024 * 1024 });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const failed = e as { code: number; stdout: string; stderr: string };
    return { code: failed.code, stdout: failed.stdout, stderr: failed.stderr };
  }
}
