// A child process for test fixtures that cannot outlive the test process: it is killed on
// normal exit (exit handler) and, via setpriv's parent-death signal, when the test process
// itself is killed (vitest tearing down a fork, SIGKILL, a crash).
import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, existsSync, openSync, readFileSync } from "node:fs";

const SETPRIV = "/usr/bin/setpriv";

export interface SupervisedProcess {
  readonly name: string;
  readonly pid: number;
  readonly logPath: string;
  /** Resolves with a description ("code 1", "signal SIGKILL") once the process has exited and been reaped. */
  readonly exited: Promise<string>;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
  stop(graceMs?: number): Promise<void>;
  /** The last lines of its combined stdout/stderr, for error messages. */
  logTail(lines?: number): string;
}

const live = new Set<ChildProcess>();

process.on("exit", () => {
  for (const child of live) child.kill("SIGKILL");
});

export function startSupervisedProcess(
  name: string,
  command: string,
  args: readonly string[],
  logPath: string,
  options: { cwd?: string | undefined; env?: NodeJS.ProcessEnv } = {},
): SupervisedProcess {
  const log = openSync(logPath, "a");
  // setpriv execs the command in place, so the pid we hold is the command's own.
  const [file, argv] = existsSync(SETPRIV)
    ? [SETPRIV, ["--pdeathsig", "KILL", "--", command, ...args]]
    : [command, [...args]];
  let child: ChildProcess;
  try {
    child = spawn(file, argv, {
      stdio: ["ignore", log, log],
      cwd: options.cwd,
      env: options.env ?? process.env,
    });
  } finally {
    closeSync(log);
  }
  const pid = child.pid;
  if (pid === undefined) throw new Error(`${name}: could not spawn ${command}`);
  live.add(child);
  const exited = new Promise<string>((resolve) => {
    const done = (how: string) => {
      live.delete(child);
      resolve(how);
    };
    child.once("exit", (code, signal) => done(signal ? `signal ${signal}` : `code ${code}`));
    child.once("error", (error) => done(`spawn error: ${error.message}`));
  });
  const isRunning = () => live.has(child);

  return {
    name,
    pid,
    logPath,
    exited,
    async stop(graceMs = 10_000) {
      if (!isRunning()) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
      try {
        await exited;
      } finally {
        clearTimeout(timer);
      }
    },
    logTail(lines = 40) {
      try {
        return readFileSync(logPath, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
      } catch {
        return "(no log)";
      }
    },
  };
}

/** True when a process with this pid exists (and is not a zombie we still have to reap). */
export function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    if (error instanceof Error && "code" in error && error.code === "EPERM") return true;
    return false;
  }
}
