// Runs the real `portcullis` CLI (node policy/cli.ts ...) as a child process, as CI would.

import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { expect } from "vitest";

const run = promisify(execFile);
const repoRoot = join(import.meta.dirname, "../..");

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export async function portcullis(...args: string[]): Promise<CliResult> {
  try {
    const { stdout, stderr } = await run(process.execPath, [join(repoRoot, "policy/cli.ts"), ...args], {
      cwd: repoRoot,
    });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const failed = e as { code: number; stdout: string; stderr: string };
    return { code: failed.code, stdout: failed.stdout, stderr: failed.stderr };
  }
}

/**
 * Each invocation is an input or usage error: exit 2, the message on stderr's first line, no stack
 * trace, and (unless told otherwise) nothing on stdout.
 */
export async function expectInputErrors(
  expectations: readonly [string[], RegExp][],
  options: { emptyStdout?: boolean } = {},
): Promise<void> {
  for (const [args, message] of expectations) {
    const { code, stdout, stderr } = await portcullis(...args);
    expect({ args, code }).toEqual({ args, code: 2 });
    expect(stderr.split("\n")[0]).toMatch(message);
    expect(stderr).not.toMatch(/\n\s+at /);
    if (options.emptyStdout !== false) expect(stdout).toBe("");
  }
}
