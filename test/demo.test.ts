// `npm start` end to end: the demo brings up the IdP, the FastAPI app and the proxy, shows the table,
// and (with PORTCULLIS_DEMO_EXIT=1) stops all of them and exits 0.
import { spawn } from "node:child_process";
import { join } from "node:path";
import { expect, it } from "vitest";
import { processExists } from "./support/supervised-process.ts";

const repoRoot = join(import.meta.dirname, "..");

it("shows 200, 401, 403 and 429 through the proxy and leaves no process behind", async () => {
  // Its own process group, so every process the demo started can be looked for afterwards.
  const demo = spawn("npm", ["start"], {
    cwd: repoRoot,
    env: { ...process.env, PORTCULLIS_DEMO_EXIT: "1", NO_COLOR: "1" },
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  demo.stdout.on("data", (chunk: Buffer) => {
    output += chunk.toString("utf8");
  });
  demo.stderr.on("data", (chunk: Buffer) => {
    output += chunk.toString("utf8");
  });
  const group = demo.pid ?? -1;
  try {
    const code = await new Promise<number | null>((resolve) => demo.once("exit", resolve));
    expect(code, output).toBe(0);
  } finally {
    if (processExists(-group)) process.kill(-group, "SIGKILL");
  }
  const row = (request: string, as: string) =>
    output.split("\n").find((line) => new RegExp(`^${request}\\s+${as}\\s`).test(line)) ?? "";
  expect(row("GET /healthz", "anonymous")).toMatch(/ 200 /);
  expect(row("GET /orders", "anonymous")).toMatch(/ 401 /);
  expect(row("GET /orders", "reader")).toMatch(/ 200 .*sub=reader roles=reader/);
  expect(row("POST /orders", "reader")).toMatch(/ 403 /);
  expect(row("DELETE /orders/2", "admin")).toMatch(/ 200 /);
  // The writer's burst of 14 meets writes-per-client (burst 10, one token spent above): real 429s.
  expect(row("POST /orders x14", "writer")).toMatch(/ \d+x 201, \d+x 429 .*Retry-After: 1/);
  expect(output).toContain("curl -s -u reader:reader-secret");
  expect(output).toContain("stopped: proxy, FastAPI app and IdP");
  // kill(-pgid, 0) fails with ESRCH once no process of the group is left.
  expect(processExists(-group)).toBe(false);
});
