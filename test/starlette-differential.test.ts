// Differential tests against the real thing: Starlette 1.x's Router (redirect_slashes=True) decides
// which rule's route each decoded path reaches (the app may declare a route with or without its
// trailing "/"), and Python's urllib.parse.unquote (what uvicorn uses) decodes each raw path;
// compileRules and parseRequestTarget must agree on every case of a generated corpus.

import { execFile } from "node:child_process";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { ensureVenv } from "../examples/fastapi/venv.ts";
import { parseRequestTarget } from "../policy/request-target.ts";
import { compileRules } from "../policy/rule-matcher.ts";

interface Owner {
  index: number | null;
  status?: 200 | 307;
  params?: Record<string, string>;
}

/** One way an app may declare a rule's route: a Starlette Route, or a FastAPI router's "/" under a prefix. */
type Declaration = { route: string } | { prefix: string };

interface Answers {
  unquoted: string[];
  owners: Owner[];
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
  "/reports/",
  "/orders",
  "/orders/{order_id:int}",
  "/orders/{order_id:int}/items/{item_id:uuid}",
  "/users/{user_id:int}/",
  "/prices/{p:float}",
  "/files/{name}.json",
  "/files/{name}",
  "/v{major:int}.{minor:int}/status",
  "/v{version:int}/{rest:path}",
  "/static/{rest:path}",
  "/a/{x}/",
  "/a//b",
  "/b//",
  "/{x}/{y}/{z}",
  "/{anything:path}",
];

// Control characters ("\n" among them) are left out: the proxy refuses them before matching (see the
// unquote test below); rule-matcher.test.ts still holds the matcher to Python's `$` before a "\n".
const PIECES = [
  "",
  "admin",
  "reports",
  "orders",
  "users",
  "files",
  "static",
  "a",
  "b",
  "v2.10",
  "007",
  "1.5",
  "x.json",
  "0123abcd-0123-4567-89ab-0123456789AB",
  "0123abcd012345670123456789abcdef",
  "admin;x",
  "é",
  "ADMIN",
  "v2",
  "1",
  "1.",
  ".json",
  "a\\b",
  ".",
  "..",
  "%2F",
  "a b",
  "?",
];

const HANDPICKED = [
  "",
  "/",
  "//",
  "///",
  "//admin",
  "/admin////",
  "/reports///",
  "/users/7//",
  "/static",
  "/static//",
  "/files/a.b.json",
  "/v1.2/status/",
  "/orders/1/items/0123abcd-0123-4567-89ab-0123456789ab/",
];

/**
 * The ways an app may declare a rule's route: as the rule writes it, and with its trailing "/"
 * toggled (a FastAPI router's "/" under the rule's path as prefix, or the path without its trailing
 * "/"s). A `{name:path}` tail, and a path of only "/"s, have one form.
 */
function declarations(template: string): Declaration[] {
  const asWritten = { route: template };
  if (template.includes(":path}") || /^\/+$/.test(template)) return [asWritten];
  // The other form first, so Starlette serves the trailing-slash forms from it where it can.
  if (template.endsWith("/")) return [{ route: template.replace(/\/+$/, "") }, asWritten];
  return [{ prefix: template }, asWritten];
}

describe("compileRules against Starlette's Router, each rule's route declared both ways", () => {
  let python = "";
  beforeAll(async () => {
    python = await ensureVenv();
  });

  it.each([
    ["with a catch-all rule last", TEMPLATES],
    ["without the catch-all", TEMPLATES.slice(0, -1)],
  ])(
    "decides every path under the first rule whose route Starlette would serve or redirect it to (%s)",
    async (_, templates) => {
      const paths = [...HANDPICKED, ...corpus(PIECES, 3)];
      const { owners } = await askPython(python, { owners: { rules: templates.map(declarations), paths } });
      expect(owners).toHaveLength(paths.length);
      const matcher = compileRules(templates.map((t, i) => ({ name: `r${i}`, paths: [t] })));
      const counts = { served: 0, redirected: 0, none: 0 };
      paths.forEach((path, i) => {
        const owner = owners[i] as Owner;
        const ours = matcher.match("GET", path);
        const where = `${JSON.stringify(path)} -> ${JSON.stringify(owner)}`;
        expect(ours?.index ?? null, where).toBe(owner.index);
        if (owner.params !== undefined) expect(ours?.params, where).toEqual(owner.params);
        if (owner.index === null) counts.none++;
        else if (owner.status === 200) counts.served++;
        else counts.redirected++;
      });
      // The corpus exercises every outcome, not just one.
      expect(counts.served).toBeGreaterThan(1000);
      expect(counts.redirected).toBeGreaterThan(1000);
      if (templates.length < TEMPLATES.length) expect(counts.none).toBeGreaterThan(1000);
    },
  );

  it('a FastAPI router\'s "/" under a prefix and a route on the bare path both own /admin/, so a wider rule never does', async () => {
    const paths = ["/admin", "/admin/", "/reports", "/reports/", "/reports//"];
    const rules = [[{ prefix: "/admin" }], [{ route: "/reports" }], [{ route: "/{rest:path}" }]];
    const { owners } = await askPython(python, { owners: { rules, paths } });
    expect(owners.map((o) => [o.index, o.status])).toEqual([
      [0, 307],
      [0, 200],
      [1, 200],
      [1, 307],
      [1, 307],
    ]);
    const matcher = compileRules([
      { name: "admin", paths: ["/admin"] },
      { name: "reports", paths: ["/reports"] },
      { name: "rest", paths: ["/{rest:path}"] },
    ]);
    expect(paths.map((p) => matcher.match("GET", p)?.rule.name)).toEqual([
      "admin",
      "admin",
      "reports",
      "reports",
      "reports",
    ]);
  });
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
