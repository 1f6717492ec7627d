import { describe, expect, it } from "vitest";
import { parseRequestTarget } from "../policy/request-target.ts";
import { compileRules } from "../policy/rule-matcher.ts";

function pathOf(target: string): string {
  const parsed = parseRequestTarget(target);
  if (!parsed.ok) throw new Error(`${JSON.stringify(target)} refused: ${parsed.reason}`);
  return parsed.path;
}

function refused(target: string): boolean {
  return !parseRequestTarget(target).ok;
}

describe("parseRequestTarget: what is accepted", () => {
  it("splits the raw path and the query at the first ?", () => {
    expect(parseRequestTarget("/orders/1?x=1&y=%2F?z")).toEqual({
      ok: true,
      path: "/orders/1",
      rawPath: "/orders/1",
      query: "x=1&y=%2F?z",
    });
    expect(parseRequestTarget("/a?")).toEqual({ ok: true, path: "/a", rawPath: "/a", query: "" });
    expect(parseRequestTarget("/")).toEqual({ ok: true, path: "/", rawPath: "/", query: "" });
  });

  it("decodes every valid %XX once, like urllib.parse.unquote", () => {
    expect(pathOf("/%61dmin")).toBe("/admin");
    expect(pathOf("/%41%62")).toBe("/Ab");
    expect(pathOf("/%2541")).toBe("/%41"); // once: %25 -> %, and the 41 stays
    expect(pathOf("/caf%C3%A9")).toBe("/café");
    expect(pathOf("/caf%c3%a9")).toBe("/café");
    expect(pathOf("/%F0%9F%90%8D")).toBe("/🐍");
    expect(pathOf("/%EF%BF%BD")).toBe("/\uFFFD"); // an encoded U+FFFD is valid UTF-8
    expect(pathOf("/a%20b")).toBe("/a b");
    expect(pathOf("/a%3Fb%23c")).toBe("/a?b#c");
  });

  it("keeps invalid % sequences literally, as Python does", () => {
    expect(pathOf("/100%")).toBe("/100%");
    expect(pathOf("/a%4")).toBe("/a%4");
    expect(pathOf("/a%zz")).toBe("/a%zz");
    expect(pathOf("/a%%41")).toBe("/a%A");
    expect(pathOf("/a%4%41")).toBe("/a%4A");
  });

  it("keeps the raw path for forwarding, unchanged", () => {
    const parsed = parseRequestTarget("/admin%2Fx?q=%2e");
    expect(parsed).toEqual({ ok: true, path: "/admin/x", rawPath: "/admin%2Fx", query: "q=%2e" });
  });

  it("decodes %2F to a slash, so /admin%2Fx routes like /admin/x", () => {
    const m = compileRules([
      { name: "admin", paths: ["/admin"] },
      { name: "item", paths: ["/admin/{item}"] },
    ]);
    expect(m.match("GET", pathOf("/admin%2Fx"))?.rule.name).toBe("item");
    expect(m.match("GET", pathOf("/admin%2F"))?.rule.name).toBe("admin"); // Starlette: 307 to /admin
    expect(m.match("GET", pathOf("/%61dmin"))?.rule.name).toBe("admin");
    expect(m.match("GET", pathOf("//admin"))).toBeUndefined();
    expect(m.match("GET", pathOf("/ADMIN"))).toBeUndefined();
    expect(m.match("GET", pathOf("/admin;x"))).toBeUndefined();
  });

  it("keeps backslashes, semicolons and leading double slashes literal", () => {
    expect(pathOf("/a;b=c")).toBe("/a;b=c");
    expect(pathOf("/a\\b")).toBe("/a\\b");
    expect(pathOf("/a%5Cb")).toBe("/a\\b");
    expect(pathOf("//admin")).toBe("//admin");
    expect(pathOf("/...")).toBe("/...");
    expect(pathOf("/a..b/.c")).toBe("/a..b/.c");
  });
});

describe("parseRequestTarget: what is refused", () => {
  it.each([
    ["", "empty"],
    ["*", "asterisk-form"],
    ["http://evil/admin", "absolute-form"],
    ["HTTP://evil/admin", "absolute-form, upper case"],
    ["example.com:443", "authority-form"],
    ["?a=1", "query only"],
  ])("refuses %j (%s): only origin-form", (target) => {
    expect(parseRequestTarget(target)).toEqual({ ok: false, reason: "request target must be origin-form" });
  });

  it("refuses a raw # anywhere (h11 keeps it in the path, httptools drops it)", () => {
    expect(refused("/admin#x")).toBe(true);
    expect(refused("/public#/../admin")).toBe(true);
    expect(refused("/a?b#c")).toBe(true);
    expect(refused("/a%23b")).toBe(false);
  });

  it("refuses dot segments, raw or encoded", () => {
    for (const target of [
      "/./admin",
      "/../admin",
      "/a/..",
      "/a/.",
      "/a/./b",
      "/%2e/admin",
      "/%2E%2E/admin",
      "/a/.%2e/b",
      "/a%2F..%2Fadmin",
      "/a%2f.",
    ]) {
      expect(parseRequestTarget(target), target).toEqual({ ok: false, reason: "dot segment in path" });
    }
  });

  it("refuses control characters, raw or encoded", () => {
    for (const target of ["/admin%0a", "/admin%0A", "/a%00b", "/a%0d%0a", "/a%7f", "/a%1F", "/a%09"]) {
      expect(parseRequestTarget(target), target).toEqual({ ok: false, reason: "control character in path" });
    }
    for (const target of ["/admin\n", "/a\0b", "/a\tb", "/a\x7f"]) {
      expect(parseRequestTarget(target), JSON.stringify(target)).toEqual({
        ok: false,
        reason: "invalid character in path",
      });
    }
  });

  it("refuses raw bytes outside printable ASCII in the path and the query", () => {
    expect(refused("/a b")).toBe(true);
    expect(refused("/café")).toBe(true);
    expect(refused("/a\u00ff")).toBe(true);
    expect(refused("/🐍")).toBe(true);
    expect(refused("/a?q=café")).toBe(true);
    expect(refused("/a?q=a b")).toBe(true);
    expect(refused("/a?q=\n")).toBe(true);
    expect(refused("/a?q=%0a")).toBe(false); // the query is forwarded raw and never authorised
  });

  it("refuses percent-encoded bytes that are not UTF-8", () => {
    for (const target of [
      "/%ff",
      "/caf%e9",
      "/%C3",
      "/%C3%28",
      "/%C0%AF", // overlong "/"
      "/%ED%A0%80", // a UTF-16 surrogate
      "/%F4%90%80%80", // above U+10FFFF
      "/%80",
    ]) {
      expect(parseRequestTarget(target), target).toEqual({ ok: false, reason: "path is not UTF-8" });
    }
  });
});

describe("parseRequestTarget: hostile input", () => {
  it("handles long targets in one pass", () => {
    const encoded = "/%41".repeat(20_000);
    expect(pathOf(encoded)).toBe("/A".repeat(20_000));
    expect(pathOf(`/${"%".repeat(50_000)}`)).toBe(`/${"%".repeat(50_000)}`);
    expect(refused(`${"/a".repeat(20_000)}/..`)).toBe(true);
  });

  it("never throws on arbitrary strings", () => {
    let seed = 7;
    const random = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    const alphabet = [
      "/",
      "%",
      "2",
      "e",
      "E",
      "f",
      "F",
      "0",
      "a",
      ".",
      "?",
      "#",
      "\n",
      "\ud800",
      "é",
      "c3",
      "%c3",
    ];
    for (let i = 0; i < 3000; i++) {
      let target = "";
      const length = Math.floor(random() * 24);
      for (let j = 0; j < length; j++) target += alphabet[Math.floor(random() * alphabet.length)];
      expect(() => parseRequestTarget(target)).not.toThrow();
    }
  });
});
