// Differential tests against the real thing: Starlette 1.x's Router (redirect_slashes=True) decides
// which route each decoded path reaches, and Python's urllib.parse.unquote (what uvicorn uses) decodes
// each raw path; compileRules and parseRequestTarget must agree on every case of a generated corpus.

import { execFile } from "node:child_process";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { ensureVenv } from "../examples/fastapi/venv.ts";
import { compileRules } from "../policy/rule-matcher.ts";
import { parseRequestTarget } from "../proxy/request-target.ts";

type RouteOutcome =
  | { status: 200; index: number; params: Record<string, string> }
  | { status: 307; location: string; index: number }
  | { status: 404 };

interface Answers {
  routes: RouteOutcome[];
  unquoted: string[];
}

const script = join(import.meta.dirname, "starlette_routes.py");

function askPython(python: string, request: object): Promise<Answers> {
  return new Promise((resolve, reject) => {
    const child = execFile(python, [script], { maxBuffer: 256 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`${error.message}\n${stderr}`));
      else resolve(JSON.parse(stdout) as Answers);
    });
    child.stdin?.end(JSON.stringify(request));
  });
}

/** Every "/"-joined combination of pieces, up to `depth` segments. */
/** The path Starlette's redirect_slashes tries: trailing "/"s stripped, or one "/" appended. */
function redirectVariant(path: string): string {
  return path.endsWith("/") ? path.replace(/\/+$/, "") : `${path}/`;
}

function corpus(pieces: readonly string[], depth: number): string[] {
  const out: string[] = [];
  const visit = (path: string, level: number) => {
    if (level > 0) out.push(path);
    if (level === depth) return;
    for (const piece of pieces) visit(`${path}/${piece}`, level + 1);
  };
  visit("", 0);
  return out;
}

const TEMPLATES = [
  "/",
  "/admin",
  "/admin/{item}",
  "/orders",
  "/orders/{order_id:int}",
  "/orders/{order_id:int}/items/{item_id:uuid}",
  "/prices/{p:float}",
  "/files/{name}.json",
  "/files/{name}",
  "/v{major:int}.{minor:int}/status",
  "/v{version:int}/{rest:path}",
  "/static/{rest:path}",
  "/a/{x}/",
  "/a//b",
  "/{x}/{y}/{z}",
  "/{anything:path}",
];

const PIECES = [
  "",
  "admin",
  "ADMIN",
  "orders",
  "files",
  "static",
  "a",
  "b",
  "v2",
  "v2.10",
  "1",
  "007",
  "1.5",
  "1.",
  "x.json",
  ".json",
  "0123abcd-0123-4567-89ab-0123456789AB",
  "0123abcd012345670123456789abcdef",
  "admin;x",
  "a\\b",
  ".",
  "..",
  "%2F",
  "é",
  "a b",
  "\n",
  "?",
];

const HANDPICKED = [
  "",
  "/",
  "//",
  "///",
  "//admin",
  "/admin\n",
  "/admin\n\n",
  "/admin/\n",
  "/static/a\nb",
  "/static/a\n",
  "/files/a.b.json",
  "/v1.2/status/",
  "/orders/1/items/0123abcd-0123-4567-89ab-0123456789ab/",
];

describe("compileRules against Starlette's Router", () => {
  let python = "";
  beforeAll(async () => {
    python = await ensureVenv();
  });

  it.each([
    ["with a catch-all route last", TEMPLATES],
    ["without the catch-all", TEMPLATES.slice(0, -1)],
  ])("routes every path of the corpus to the same rule (%s)", async (_, templates) => {
    const paths = [...HANDPICKED, ...corpus(PIECES, 3)];
    // Each path's redirect_slashes variant is asked too: the two forms are one resource, decided by
    // the first rule that Starlette routes either form to.
    const variants = paths.map(redirectVariant);
    const { routes } = await askPython(python, { templates, paths: [...paths, ...variants] });
    expect(routes).toHaveLength(2 * paths.length);
    // One template per rule, so a rule's index is Starlette's route index.
    const matcher = compileRules(templates.map((t, i) => ({ name: `r${i}`, paths: [t] })));
    const counts = { 200: 0, 307: 0, 404: 0, earlier: 0 };
    paths.forEach((path, i) => {
      const starlette = routes[i] as RouteOutcome;
      const variant = routes[paths.length + i] as RouteOutcome;
      const ours = matcher.match("GET", path);
      const where = `${JSON.stringify(path)} -> ${JSON.stringify(starlette)}, its other form -> ${JSON.stringify(variant)}`;
      counts[starlette.status]++;
      const exact = starlette.status === 200 ? starlette.index : Number.POSITIVE_INFINITY;
      const other = path !== "/" && variant.status === 200 ? variant.index : Number.POSITIVE_INFINITY;
      if (starlette.status === 404) {
        expect(ours, where).toBeUndefined();
      } else if (other < exact) {
        // An earlier rule covers the other form: it decides this one too (Starlette alone would
        // route it to a later, wider route, or redirect it).
        counts.earlier++;
        expect(ours?.index, where).toBe(other);
      } else if (starlette.status === 200) {
        expect(ours?.index, where).toBe(starlette.index);
        expect(ours?.params, where).toEqual(starlette.params);
      } else {
        expect(ours?.index, where).toBe(starlette.index);
      }
    });
    // The corpus exercises every outcome, not just one.
    expect(counts.earlier).toBeGreaterThan(10);
    expect(counts[200]).toBeGreaterThan(1000);
    expect(counts[307]).toBeGreaterThan(20);
    if (templates.length < TEMPLATES.length) expect(counts[404]).toBeGreaterThan(1000);
  });
});

describe("a rule on /admin and the app's admin handler, declared either way", () => {
  let python = "";
  beforeAll(async () => {
    python = await ensureVenv();
  });

  // The policy: the admin area first, then a wide rule for everything else.
  const matcher = compileRules([
    { name: "admin", paths: ["/admin"] },
    { name: "rest", paths: ["/{rest:path}"] },
  ]);

  it.each([
    ["as /admin", ["/admin", "/orders"]],
    ["as / under an /admin router prefix, i.e. /admin/", ["/admin/", "/orders"]],
  ])(
    "decides every form the app's admin handler serves under the admin rule (declared %s)",
    async (_, app) => {
      const forms = ["/admin", "/admin/", "/admin//", "/admin///"];
      const { routes } = await askPython(python, { templates: app, paths: forms });
      let served = 0;
      forms.forEach((form, i) => {
        const outcome = routes[i] as RouteOutcome;
        // What Starlette serves of these forms, it serves from the admin handler (route 0), directly
        // or by redirect...
        if (outcome.status !== 404) {
          served++;
          expect(outcome.index, form).toBe(0);
        }
        // ...so the policy decides every form under the admin rule, never the wide one.
        expect(matcher.match("GET", form)?.rule.name, form).toBe("admin");
      });
      expect(served).toBeGreaterThanOrEqual(2);
    },
  );
});

describe("parseRequestTarget against urllib.parse.unquote", () => {
  let python = "";
  beforeAll(async () => {
    python = await ensureVenv();
  });

  const RAW_PIECES = [
    "a",
    "%61",
    "%2F",
    "%2f",
    "%2e",
    "%2E%2E",
    ".",
    "..",
    "%",
    "%%",
    "%4",
    "%zz",
    "%C3%A9",
    "%c3",
    "%e9",
    "%ED%A0%80",
    "%C0%AF",
    "%F0%9F%90%8D",
    "%EF%BF%BD",
    "%00",
    "%0a",
    "%7F",
    "%20",
    ";x",
    "\\",
    "",
  ];

  it("decodes every raw path the way uvicorn does, and refuses exactly the ambiguous ones", async () => {
    const raws = corpus(RAW_PIECES, 3);
    const { unquoted } = await askPython(python, { unquote: raws });
    expect(unquoted).toHaveLength(raws.length);
    let accepted = 0;
    raws.forEach((raw, i) => {
      const python = unquoted[i] as string;
      const replaced = (python.match(/\uFFFD/g) ?? []).length > (raw.match(/%EF%BF%BD/gi) ?? []).length;
      const control = [...python].some((c) => c.charCodeAt(0) < 0x20 || c === "\u007f");
      const dot = python.split("/").some((s) => s === "." || s === "..");
      const ours = parseRequestTarget(raw);
      const where = `${JSON.stringify(raw)} -> ${JSON.stringify(python)}`;
      expect(ours.ok, where).toBe(!(replaced || control || dot));
      if (ours.ok) {
        accepted++;
        expect(ours.path, where).toBe(python);
      }
    });
    expect(accepted).toBeGreaterThan(1000);
    expect(accepted).toBeLessThan(raws.length);
  });
});
