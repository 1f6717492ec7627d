// `npm run bench`: every benchmark in bench/, one after another, each in a process of its own (so one
// bench's JIT state, heap and timers never colour another's). Arguments after `--` go to every bench;
// `npm run bench -- proxy` runs only the benches whose file name contains "proxy".
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { join } from "node:path";

const here = import.meta.dirname;
const args = process.argv.slice(2);
const filters = args.filter((arg) => !arg.startsWith("-") && !/^\d/.test(arg));
const passed = args.filter((arg) => !filters.includes(arg));

const benches = readdirSync(here)
  .filter((file) => file.endsWith(".ts") && file !== "run.ts")
  .filter((file) => filters.length === 0 || filters.some((filter) => file.includes(filter)))
  .sort();

let failed = 0;
for (const file of benches) {
  console.log(`\n== bench/${file}`);
  const result = spawnSync(process.execPath, [join(here, file), ...passed], { stdio: "inherit" });
  if (result.status !== 0) {
    failed++;
    console.log(`bench/${file} failed (${result.status ?? result.signal})`);
  }
}
process.exitCode = failed === 0 ? 0 : 1;
