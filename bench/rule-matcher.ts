// ns per match of compileRules against the naive way (each rule's Starlette regex tried in order, then
// the redirect_slashes variant), on policies of 10, 100 and 1,000 rules. A plain script, not a test:
//   npx node bench/rule-matcher.ts
import { parsePathTemplate, starletteRegexSource } from "../policy/path-template.ts";
import { compileRules, type RuleMatcher } from "../policy/rule-matcher.ts";
import { median } from "./support/median.ts";

interface BenchRule {
  name: string;
  paths: string[];
  methods?: string[];
}

const UUID = "0f8fad5b-d9cb-469f-a165-70867728950e";

/** Ten rules per resource, shaped like a FastAPI app's routes. */
function resourceRules(r: number): BenchRule[] {
  const base = `/api/v1/res${r}`;
  return [
    { name: `list-${r}`, paths: [base], methods: ["GET"] },
    { name: `create-${r}`, paths: [base], methods: ["POST"] },
    { name: `get-${r}`, paths: [`${base}/{id:int}`], methods: ["GET"] },
    { name: `update-${r}`, paths: [`${base}/{id:int}`], methods: ["PUT", "PATCH", "DELETE"] },
    { name: `item-${r}`, paths: [`${base}/{id:int}/items/{item_id:uuid}`] },
    { name: `export-${r}`, paths: [`${base}/{id:int}/export.{fmt}`], methods: ["GET"] },
    { name: `price-${r}`, paths: [`${base}/by-price/{p:float}`], methods: ["GET"] },
    { name: `search-${r}`, paths: [`${base}/search`, `${base}/search/{term}`] },
    { name: `static-${r}`, paths: [`/static/res${r}/{rest:path}`], methods: ["GET"] },
    { name: `admin-${r}`, paths: [`/admin/res${r}/{rest:path}`] },
  ];
}

function policy(size: number): BenchRule[] {
  const rules: BenchRule[] = [];
  for (let r = 0; rules.length < size; r++) rules.push(...resourceRules(r));
  return rules.slice(0, size);
}

/** The baseline: Starlette's algorithm as written, one regex per template per request. */
function naiveMatcher(rules: readonly BenchRule[]): RuleMatcher<BenchRule> {
  const routes = rules.flatMap((rule, index) =>
    rule.paths.map((template) => ({
      rule,
      index,
      template,
      regex: new RegExp(starletteRegexSource(parsePathTemplate(template))),
      methods:
        rule.methods && new Set(rule.methods.includes("GET") ? [...rule.methods, "HEAD"] : rule.methods),
    })),
  );
  const first = (method: string, path: string) => {
    for (const route of routes) {
      if (route.methods !== undefined && !route.methods.has(method)) continue;
      const m = route.regex.exec(path);
      if (m !== null) {
        const { rule, index, template } = route;
        return { rule, index, template, params: { ...m.groups } };
      }
    }
    return undefined;
  };
  return {
    match(method, path) {
      const exact = first(method, path);
      if (exact !== undefined || path === "/") return exact;
      return first(method, path.endsWith("/") ? path.replace(/\/+$/, "") : `${path}/`);
    },
  };
}

interface Case {
  label: string;
  method: string;
  path: string;
  expected: number | undefined;
}

function cases(size: number): Case[] {
  const resources = size / 10;
  const mid = Math.floor(resources / 2);
  const last = resources - 1;
  return [
    { label: "hit first rule", method: "GET", path: "/api/v1/res0", expected: 0 },
    { label: "hit middle (int)", method: "GET", path: `/api/v1/res${mid}/42`, expected: mid * 10 + 2 },
    {
      label: "hit middle (uuid)",
      method: "POST",
      path: `/api/v1/res${mid}/42/items/${UUID}`,
      expected: mid * 10 + 4,
    },
    {
      label: "hit middle (mixed)",
      method: "GET",
      path: `/api/v1/res${mid}/42/export.csv`,
      expected: mid * 10 + 5,
    },
    {
      label: "hit last rule (path)",
      method: "DELETE",
      path: `/admin/res${last}/users/7/roles`,
      expected: last * 10 + 9,
    },
    { label: "hit via redirect", method: "GET", path: `/api/v1/res${last}/search/`, expected: last * 10 + 7 },
    { label: "miss (unknown)", method: "GET", path: "/api/v2/orders/42", expected: undefined },
    { label: "miss (method)", method: "POST", path: `/api/v1/res${mid}/42/export.csv`, expected: undefined },
  ];
}

let sink = 0;

function cpuNs(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) * 1000;
}

/** CPU ns per call of `run` over `iterations` calls. */
function round(matcher: RuleMatcher<BenchRule>, c: Case, iterations: number): number {
  const start = cpuNs();
  for (let i = 0; i < iterations; i++) sink += matcher.match(c.method, c.path)?.index ?? -1;
  return (cpuNs() - start) / iterations;
}

/**
 * Median CPU ns per match of each matcher. Rounds of ~20 ms alternate between the two, so load from
 * other processes on the machine lands on both alike; CPU time rather than wall time for the same reason.
 */
function compare(a: RuleMatcher<BenchRule>, b: RuleMatcher<BenchRule>, c: Case): [number, number] {
  const iterations = (m: RuleMatcher<BenchRule>) => {
    let n = 100;
    while (round(m, c, n) * n < 5e6 && n < 1e7) n *= 2;
    return Math.max(100, Math.round((2e7 / round(m, c, n)) | 0));
  };
  const na = iterations(a);
  const nb = iterations(b);
  const ta: number[] = [];
  const tb: number[] = [];
  for (let r = 0; r < 9; r++) {
    ta.push(round(a, c, na));
    tb.push(round(b, c, nb));
  }
  return [median(ta), median(tb)];
}

console.log(`node ${process.version}; CPU ns per match, median of 9 alternating rounds of ~20 ms`);
console.log(
  `${"rules".padStart(5)}  ${"case".padEnd(22)} ${"trie ns".padStart(9)} ${"naive ns".padStart(10)} ${"naive/trie".padStart(10)}`,
);
for (const size of [10, 100, 1000]) {
  const rules = policy(size);
  const compileStart = process.hrtime.bigint();
  const trie = compileRules(rules);
  const compileMs = Number(process.hrtime.bigint() - compileStart) / 1e6;
  const naive = naiveMatcher(rules);
  for (const c of cases(size)) {
    // Both must agree before either is timed.
    const a = trie.match(c.method, c.path)?.index;
    const b = naive.match(c.method, c.path)?.index;
    if (a !== c.expected || b !== c.expected) {
      throw new Error(`${size} ${c.label}: trie ${a}, naive ${b}, expected ${c.expected}`);
    }
    const [t, n] = compare(trie, naive, c);
    console.log(
      `${String(size).padStart(5)}  ${c.label.padEnd(22)} ${t.toFixed(0).padStart(9)} ${n.toFixed(0).padStart(10)} ${(n / t).toFixed(1).padStart(9)}x`,
    );
  }
  console.log(`${String(size).padStart(5)}  compileRules: ${compileMs.toFixed(1)} ms`);
}
if (sink === 0.5) console.log(sink);
