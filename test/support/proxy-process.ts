// proxy/main.ts as its own process, as the sidecar container runs it: JSON log lines collected, the
// bound addresses read from its "listening" line.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";

const repoRoot = join(import.meta.dirname, "..", "..");
const SETPRIV = "/usr/bin/setpriv";

export type LogLine = Record<string, unknown>;

export interface ProxyProcess {
  url: string;
  adminUrl: string;
  lines: LogLine[];
  /** Waits (polling) for a line matching `predicate`; throws with the output on exit or timeout. */
  waitForLine(predicate: (line: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /** SIGTERM, then SIGKILL after 10 s; resolves with the exit code. */
  stop(): Promise<number | null>;
}

export async function startProxyProcess(args: readonly string[]): Promise<ProxyProcess> {
  const argv = [
    join(repoRoot, "proxy/main.ts"),
    "--listen",
    "127.0.0.1:0",
    "--admin",
    "127.0.0.1:0",
    ...args,
  ];
  // setpriv's parent-death signal: a killed test run leaves no proxy behind.
  const [file, fileArgs] = existsSync(SETPRIV)
    ? [SETPRIV, ["--pdeathsig", "KILL", "--", process.execPath, ...argv]]
    : [process.execPath, argv];
  const child: ChildProcess = spawn(file, fileArgs, { cwd: repoRoot, stdio: ["ignore", "pipe", "pipe"] });
  const lines: LogLine[] = [];
  let output = "";
  createInterface({ input: child.stdout! }).on("line", (text) => {
    output += `${text}\n`;
    try {
      lines.push(JSON.parse(text) as LogLine);
    } catch {
      lines.push({ unparsed: text });
    }
  });
  child.stderr!.on("data", (chunk: Buffer) => {
    output += chunk.toString("utf8");
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));

  async function waitForLine(predicate: (line: LogLine) => boolean, timeoutMs = 15_000): Promise<LogLine> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = lines.find(predicate);
      if (found) return found;
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`proxy exited (${child.exitCode ?? child.signalCode}):\n${output}`);
      }
      if (Date.now() > deadline) throw new Error(`no such log line within ${timeoutMs} ms:\n${output}`);
      await sleep(50);
    }
  }

  const listening = await waitForLine((line) => line.msg === "listening");
  return {
    url: `http://${String(listening.listen)}`,
    adminUrl: `http://${String(listening.admin)}`,
    lines,
    waitForLine,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
        await exited;
        clearTimeout(timer);
      }
      return child.exitCode;
    },
  };
}
