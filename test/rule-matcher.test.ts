import { describe, expect, it } from "vitest";
import { PathTemplateError, parsePathTemplate, starletteRegexSource } from "../policy/path-template.ts";
import { compileRules, ruleCovers } from "../policy/rule-matcher.ts";

interface TestRule {
  name: string;
  paths: string[];
  methods?: string[];
}

function rule(name: string, paths: string[], methods?: string[]): TestRule {
  return methods === undefined ? { name, paths } : { name, paths, methods };
}

/** The name of the rule that matches, or undefined. */
function matcher(rules: TestRule[]) {
  const m = compileRules(rules);
  return (path: string, method = "GET") => m.match(method, path)?.rule.name;
}

describe("compileRules: Starlette path semantics", () => {
  const admin = matcher([rule("admin", ["/admin"]), rule("item", ["/admin/{item}"])]);

  it("matches the decoded path exactly and case-sensitively", () => {
    expect(admin("/admin")).toBe("admin");
    expect(admin("/ADMIN")).toBeUndefined();
    expect(admin("/Admin/x")).toBeUndefined();
  });

  it("routes a decoded %2F as a real slash, as FastAPI does", () => {
    // /admin%2Fx arrives decoded as /admin/x
    expect(admin("/admin/x")).toBe("item");
  });

  it("does not normalise: no dot segments, no slash merging, ; and \\ are literal", () => {
    expect(admin("//admin")).toBeUndefined();
    expect(admin("/./admin")).toBeUndefined();
    expect(admin("/x/../admin")).toBeUndefined();
    expect(admin("/admin;x")).toBeUndefined();
    expect(admin("/admin\\x")).toBeUndefined();
    expect(admin("/admin/a;b")).toBe("item");
    expect(admin("/admin/a\\b")).toBe("item");
    expect(admin("admin")).toBeUndefined();
    expect(admin("")).toBeUndefined();
  });

  it("a rule's trailing slashes are insignificant: every trailing-slash form falls under the first rule", () => {
    // /admin/ and /admin// are redirected by Starlette to a route on /admin, or served by one on /admin/.
    expect(admin("/admin/")).toBe("admin");
    expect(admin("/admin//")).toBe("admin");
    expect(admin("/admin/x/")).toBe("item");
    const slashy = matcher([rule("slash", ["/x/"]), rule("bare", ["/x"])]);
    expect(slashy("/x")).toBe("slash");
    expect(slashy("/x/")).toBe("slash");
    const bareFirst = matcher([rule("bare", ["/x"]), rule("slash", ["/x/"])]);
    expect(bareFirst("/x/")).toBe("bare");
    const onlySlash = matcher([rule("slash", ["/x/"])]);
    expect(onlySlash("/x")).toBe("slash");
    expect(onlySlash("/x//")).toBe("slash");
  });

  it("never lets a trailing-slash form fall through to a later, wider rule", () => {
    const m = matcher([
      rule("admin", ["/admin"]),
      rule("reports", ["/reports/"]),
      rule("order", ["/orders/{id:int}"]),
      rule("static", ["/static/{p:path}"]),
      rule("rest", ["/{p:path}"]),
    ]);
    for (const path of ["/admin", "/admin/", "/admin//", "/admin///"]) expect(m(path), path).toBe("admin");
    for (const path of ["/reports", "/reports/", "/reports//"]) expect(m(path), path).toBe("reports");
    expect(m("/orders/7/")).toBe("order");
    expect(m("/orders/x/")).toBe("rest");
    expect(m("/static")).toBe("static");
    expect(m("/static/")).toBe("static");
    expect(m("/administrator/")).toBe("rest");
    expect(m("/admin/x")).toBe("rest");
    // A tail captures what Starlette would give it.
    const tails = compileRules([rule("static", ["/static/{p:path}"])]);
    expect(tails.match("GET", "/static")?.params).toEqual({ p: "" });
    expect(tails.match("GET", "/static/")?.params).toEqual({ p: "" });
    expect(tails.match("GET", "/static//")?.params).toEqual({ p: "/" });
    expect(tails.match("GET", "/static/a/")?.params).toEqual({ p: "a/" });
  });

  it("never treats / as empty, and strips // down to nothing", () => {
    const root = matcher([rule("root", ["/"])]);
    expect(root("/")).toBe("root");
    expect(root("//")).toBeUndefined();
    const nothing = matcher([rule("a", ["/a"])]);
    expect(nothing("/")).toBeUndefined();
    const tail = matcher([rule("all", ["/{p:path}"])]);
    expect(tail("/")).toBe("all");
    expect(tail("//")).toBe("all");
  });

  it("reproduces Python's $ before a final newline, and . never matching one", () => {
    const m = matcher([rule("admin", ["/admin"]), rule("files", ["/files/{p:path}"]), rule("s", ["/s/{x}"])]);
    expect(m("/admin\n")).toBe("admin");
    expect(m("/admin\n\n")).toBeUndefined();
    expect(m("/files/a\n")).toBe("files");
    expect(m("/files/a\nb")).toBeUndefined();
    expect(m("/s/a\nb")).toBe("s");
  });
});

describe("compileRules: converters", () => {
  const m = compileRules([
    rule("uuid", ["/u/{id:uuid}"]),
    rule("int", ["/n/{n:int}"]),
    rule("float", ["/f/{x:float}"]),
    rule("str", ["/s/{s}"]),
    rule("path", ["/p/{rest:path}"]),
  ]);
  const at = (path: string) => {
    const hit = m.match("GET", path);
    return hit && { name: hit.rule.name, params: { ...hit.params } };
  };

  it("uuid: hex of either case, hyphens optional (Starlette 1.x)", () => {
    const id = "01234567-89ab-CDEF-0123-456789abcdef";
    expect(at(`/u/${id}`)).toEqual({ name: "uuid", params: { id } });
    expect(at("/u/0123456789abcdef0123456789abcdef")?.name).toBe("uuid");
    expect(at("/u/01234567-89ab-cdef-0123-456789abcde")).toBeUndefined();
    expect(at("/u/01234567-89ab-cdef-0123-456789abcdefa")).toBeUndefined();
    expect(at("/u/g1234567-89ab-cdef-0123-456789abcdef")).toBeUndefined();
    expect(at("/u/01234567--89ab-cdef-0123-456789abcdef")).toBeUndefined();
  });

  it("int: ASCII digits only", () => {
    expect(at("/n/42")).toEqual({ name: "int", params: { n: "42" } });
    expect(at("/n/007")?.name).toBe("int");
    expect(at("/n/-1")).toBeUndefined();
    expect(at("/n/1.0")).toBeUndefined();
    expect(at("/n/١٢")).toBeUndefined(); // Arabic-Indic digits: Python's [0-9] is ASCII
    expect(at("/n/")).toBeUndefined();
  });

  it("float: digits with an optional fraction", () => {
    expect(at("/f/1.5")).toEqual({ name: "float", params: { x: "1.5" } });
    expect(at("/f/3")?.name).toBe("float");
    expect(at("/f/1.")).toBeUndefined();
    expect(at("/f/.5")).toBeUndefined();
    expect(at("/f/1e5")).toBeUndefined();
    expect(at("/f/1.2.3")).toBeUndefined();
  });

  it("str: any non-empty segment; path: everything below the prefix, even nothing", () => {
    expect(at("/s/héllo wörld")).toEqual({ name: "str", params: { s: "héllo wörld" } });
    expect(at("/s/")).toBeUndefined();
    expect(at("/s/a/b")).toBeUndefined();
    expect(at("/p/")).toEqual({ name: "path", params: { rest: "" } });
    expect(at("/p/a/b/../c")).toEqual({ name: "path", params: { rest: "a/b/../c" } });
    expect(at("/p")).toEqual({ name: "path", params: { rest: "" } }); // via the /p/ redirect variant
  });
});

describe("compileRules: rule order and methods", () => {
  it("lets the lowest-index rule win, whatever the specificity", () => {
    const m = matcher([rule("any", ["/a/{x}"]), rule("literal", ["/a/b"]), rule("tail", ["/{p:path}"])]);
    expect(m("/a/b")).toBe("any");
    expect(m("/a/b/c")).toBe("tail");
    const reversed = matcher([rule("tail", ["/{p:path}"]), rule("literal", ["/a/b"])]);
    expect(reversed("/a/b")).toBe("tail");
  });

  it("reports the index, the template that matched, and the parameters", () => {
    const m = compileRules([rule("a", ["/x"]), rule("b", ["/y", "/orders/{order_id}/items/{n:int}"])]);
    const hit = m.match("GET", "/orders/o-1/items/3");
    expect(hit).toEqual({
      rule: { name: "b", paths: ["/y", "/orders/{order_id}/items/{n:int}"] },
      index: 1,
      template: "/orders/{order_id}/items/{n:int}",
      params: { order_id: "o-1", n: "3" },
    });
    expect(m.match("GET", "/x")).toEqual({
      rule: { name: "a", paths: ["/x"] },
      index: 0,
      template: "/x",
      params: {},
    });
  });

  it("keeps parameters called __proto__ as ordinary keys", () => {
    const hit = compileRules([rule("p", ["/{__proto__}"])]).match("GET", "/x");
    expect(Object.keys(hit?.params ?? {})).toEqual(["__proto__"]);
    expect(Object.getOwnPropertyDescriptor(hit?.params, "__proto__")?.value).toBe("x");
  });

  it("applies methods, with GET implying HEAD", () => {
    const m = matcher([
      rule("read", ["/o"], ["GET"]),
      rule("write", ["/o"], ["POST", "PUT"]),
      rule("other", ["/o"]),
    ]);
    expect(m("/o", "GET")).toBe("read");
    expect(m("/o", "HEAD")).toBe("read");
    expect(m("/o", "POST")).toBe("write");
    expect(m("/o", "PUT")).toBe("write");
    expect(m("/o", "DELETE")).toBe("other");
    expect(m("/o", "get")).toBe("other");
    expect(m("/o", "PURGE")).toBe("other");
  });

  it("matches unknown methods only against rules without methods", () => {
    const m = matcher([rule("read", ["/o"], ["GET"])]);
    expect(m("/o", "PURGE")).toBeUndefined();
    expect(m("/o", "")).toBeUndefined();
    expect(m("/o", "POST")).toBeUndefined();
  });

  it("reads an empty methods list as no method at all", () => {
    const m = matcher([rule("none", ["/o"], []), rule("rest", ["/{p:path}"])]);
    expect(m("/o", "GET")).toBe("rest");
    expect(m("/o", "PURGE")).toBe("rest");
  });

  it("checks the method in the redirect pass too", () => {
    const m = matcher([rule("get", ["/x"], ["GET"]), rule("post", ["/x/"], ["POST"])]);
    expect(m("/x/", "GET")).toBe("get");
    expect(m("/x", "POST")).toBe("post");
    expect(m("/x", "DELETE")).toBeUndefined();
  });

  it("rejects an invalid template at compile time", () => {
    expect(() => compileRules([rule("bad", ["/a/{x:pth}"])])).toThrow(PathTemplateError);
  });
});

describe("compileRules: mixed segments", () => {
  const m = compileRules([
    rule("json", ["/files/{name}.json"]),
    rule("versioned", ["/v{version:int}/x"]),
    rule("pair", ["/r/{a:int}-{b:int}"]),
    rule("files", ["/files/{name}"]),
  ]);

  it("matches literal text around parameters inside a segment", () => {
    expect(m.match("GET", "/files/a.b.json")).toMatchObject({ index: 0, params: { name: "a.b" } });
    expect(m.match("GET", "/files/.json")?.index).toBe(3);
    expect(m.match("GET", "/files/a.yaml")?.index).toBe(3);
    expect(m.match("GET", "/v12/x")).toMatchObject({ index: 1, params: { version: "12" } });
    expect(m.match("GET", "/vx/x")).toBeUndefined();
    expect(m.match("GET", "/r/1-22")).toMatchObject({ index: 2, params: { a: "1", b: "22" } });
    expect(m.match("GET", "/r/1-")).toBeUndefined();
  });
});

describe("compileRules: hostile input", () => {
  const m = compileRules([
    rule("deep", ["/a/{b}/{c}/{d}/e"]),
    rule("mixed", ["/m/{a}.{b}.{c}x"]),
    rule("digits", ["/d/{a:float}{b:int}{c:float}y"]),
    rule("tail", ["/t/{p:path}"]),
    rule("uuid", ["/u/{id:uuid}z"]),
  ]);

  it("answers long and degenerate paths without blowing up", () => {
    const long = 20_000;
    expect(m.match("GET", `/m/${".".repeat(long)}`)).toBeUndefined();
    expect(m.match("GET", `/d/${"1".repeat(long)}`)).toBeUndefined();
    expect(m.match("GET", `/u/${"a".repeat(long)}`)).toBeUndefined();
    expect(m.match("GET", "/".repeat(long))).toBeUndefined();
    expect(m.match("GET", `/t/${"x/".repeat(long)}`)?.rule.name).toBe("tail");
    expect(m.match("GET", `/a/${"b/".repeat(long)}`)).toBeUndefined();
    expect(m.match("GET", `/m/${"a.".repeat(long)}x`)?.rule.name).toBe("mixed");
  });

  it("never throws on arbitrary strings", () => {
    let seed = 42;
    const random = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    const alphabet = ["/", "a", "1", ".", "-", "x", "\n", "\0", "\ud800", "é", "%", "{", "}"];
    for (let i = 0; i < 2000; i++) {
      let path = "";
      const length = Math.floor(random() * 30);
      for (let j = 0; j < length; j++) path += alphabet[Math.floor(random() * alphabet.length)];
      expect(() => m.match(i % 2 === 0 ? "GET" : "BREW", path)).not.toThrow();
    }
  });
});

describe("compileRules against a regex reference of Starlette's routing", () => {
  // The matcher's contract written the naive way: each compile_path regex in order, Python's `$` (which
  // also matches before a final "\n") and `.` (everything but "\n"), and a rule also taking the
  // trailing-slash forms that Starlette serves or redirects to its route, however the app declares it.
  function reference(templates: string[]) {
    const toRegex = (t: string) =>
      new RegExp(starletteRegexSource(parsePathTemplate(t)).replaceAll("(?<p>.*)", "(?<p>[^\\n]*)"));
    const onlySlashes = (s: string) => /^\/+$/.test(s);
    const rules = templates.map((t) => {
      const tail = parsePathTemplate(t).tail !== undefined;
      const stripped = tail || onlySlashes(t) ? undefined : toRegex(t.replace(/\/+$/, ""));
      return { exact: toRegex(t), stripped, tail };
    });
    // Rule i takes s when its regex matches s, or (no tail) both agree with trailing "/"s stripped,
    // or (a tail) s plus the "/" that redirect_slashes appends.
    const takes = (r: (typeof rules)[number], s: string) =>
      r.exact.test(s) ||
      (r.stripped !== undefined && !onlySlashes(s) && r.stripped.test(s.replace(/\/+$/, ""))) ||
      (r.tail && !s.endsWith("/") && r.exact.test(`${s}/`));
    return (path: string) => {
      const s = path === "" ? "/" : path;
      const i = rules.findIndex((r) => takes(r, s) || (s.endsWith("\n") && takes(r, s.slice(0, -1))));
      return i === -1 ? undefined : i;
    };
  }

  it("agrees on every path of a generated corpus", () => {
    const templates = [
      "/",
      "/a",
      "/a/",
      "/a/{x:int}",
      "/a/{x:float}/b",
      "/a/{x}/b/",
      "/{x}/b",
      "/b/{id:uuid}",
      "/b/v{n:int}.{m:int}",
      "/b/{name}.json",
      "/c//d",
      "/c/{p:path}",
      "/d/{s}/{p:path}",
      "/{p:path}",
    ];
    const pieces = [
      "",
      "a",
      "b",
      "c",
      "d",
      "1",
      "1.5",
      "v1.2",
      "x.json",
      ".json",
      "0123456789abcdef0123456789abcdef",
      "\n",
      ";",
    ];
    const ref = reference(templates);
    // Every rule is the single template at its index, so the rule index is the route index.
    const m = compileRules(templates.map((t, i) => rule(`r${i}`, [t])));
    // The tail template sits last, so drop it for half the corpus to see the other misses too.
    const withoutTail = templates.slice(0, -1);
    const refWithoutTail = reference(withoutTail);
    const mWithoutTail = compileRules(withoutTail.map((t, i) => rule(`r${i}`, [t])));
    let checked = 0;
    const visit = (path: string, depth: number) => {
      expect(m.match("GET", path)?.index, JSON.stringify(path)).toBe(ref(path));
      expect(mWithoutTail.match("GET", path)?.index, JSON.stringify(path)).toBe(refWithoutTail(path));
      checked++;
      if (depth === 4) return;
      for (const piece of pieces) visit(`${path}/${piece}`, depth + 1);
    };
    visit("", 0);
    expect(checked).toBeGreaterThan(20_000);
  });
});

describe("ruleCovers: when an earlier rule leaves a later one nothing to decide", () => {
  const covers = (general: string, specific: string) =>
    ruleCovers(parsePathTemplate(general), parsePathTemplate(specific));

  it("takes trailing '/'s as the matcher does, and a tail's prefix without its '/'", () => {
    expect(covers("/x", "/x/")).toBe(true);
    expect(covers("/x/", "/x")).toBe(true);
    expect(covers("/x//", "/x")).toBe(true);
    expect(covers("/a/{id}", "/a/b/")).toBe(true);
    expect(covers("/s/{p:path}", "/s")).toBe(true);
    expect(covers("/s/{p:path}", "/s/")).toBe(true);
    expect(covers("/x", "/x/y")).toBe(false);
    expect(covers("/x/", "/x/{p:path}")).toBe(false);
    expect(covers("/s/{p:path}", "/t")).toBe(false);
    expect(covers("/", "/x")).toBe(false);
    expect(covers("/x", "/")).toBe(false);
  });

  it("never calls a rule covered that decides some path of a generated corpus", () => {
    const templates = [
      "/",
      "/a",
      "/a/",
      "/a//",
      "/a/b",
      "/a/b/",
      "/a/{x}",
      "/a/{x}/",
      "/a/{x:int}",
      "/a/{x}/b",
      "/a/{p:path}",
      "/{x}",
      "/{x}/",
      "/{p:path}",
    ];
    const pieces = ["", "a", "b", "1", "x.json"];
    const paths: string[] = [];
    const visit = (path: string, depth: number) => {
      paths.push(path);
      if (depth < 4) for (const piece of pieces) visit(`${path}/${piece}`, depth + 1);
    };
    visit("", 0);
    let covered = 0;
    for (const general of templates) {
      for (const specific of templates) {
        if (!covers(general, specific)) continue;
        covered++;
        const m = compileRules([rule("general", [general]), rule("specific", [specific])]);
        for (const path of paths)
          expect(
            m.match("GET", path)?.rule.name,
            `${general} then ${specific}: ${JSON.stringify(path)}`,
          ).not.toBe("specific");
      }
    }
    expect(covered).toBeGreaterThan(templates.length);
  });
});
