import { describe, expect, it } from "vitest";
import {
  PathTemplateError,
  parsePathTemplate,
  starletteRegexSource,
  templateCovers,
} from "../policy/path-template.ts";

function parseError(template: string): PathTemplateError {
  try {
    parsePathTemplate(template);
  } catch (e) {
    if (e instanceof PathTemplateError) return e;
    throw e;
  }
  throw new Error(`${template} parsed`);
}

describe("parsePathTemplate", () => {
  it("splits literal segments, keeping empty ones", () => {
    const t = parsePathTemplate("/a//b/");
    expect(t.segments).toEqual([
      { kind: "literal", text: "a" },
      { kind: "literal", text: "" },
      { kind: "literal", text: "b" },
      { kind: "literal", text: "" },
    ]);
    expect(t.tail).toBeUndefined();
    expect(parsePathTemplate("/").segments).toEqual([{ kind: "literal", text: "" }]);
  });

  it("reads parameters with the str default and explicit converters", () => {
    const t = parsePathTemplate("/orders/{order_id}/items/{n:int}/{ratio:float}/{id:uuid}/{s:str}");
    expect(t.params).toEqual(["order_id", "n", "ratio", "id", "s"]);
    expect(t.segments[1]).toEqual({ kind: "param", name: "order_id", converter: "str" });
    expect(t.segments[3]).toEqual({ kind: "param", name: "n", converter: "int" });
    expect(t.segments[4]).toEqual({ kind: "param", name: "ratio", converter: "float" });
    expect(t.segments[5]).toEqual({ kind: "param", name: "id", converter: "uuid" });
  });

  it("takes a whole last {name:path} segment as the tail", () => {
    const t = parsePathTemplate("/static/{rest:path}");
    expect(t.segments).toEqual([{ kind: "literal", text: "static" }]);
    expect(t.tail).toBe("rest");
    expect(t.params).toEqual(["rest"]);
    expect(parsePathTemplate("/{p:path}").segments).toEqual([]);
  });

  it("keeps literal text and parameters mixed in one segment", () => {
    const t = parsePathTemplate("/files/{name}.json/v{version:int}");
    expect(t.segments[1]).toMatchObject({
      kind: "mixed",
      parts: [
        { kind: "param", name: "name", converter: "str" },
        { kind: "literal", text: ".json" },
      ],
    });
    expect(t.segments[2]).toMatchObject({
      kind: "mixed",
      parts: [
        { kind: "literal", text: "v" },
        { kind: "param", name: "version", converter: "int" },
      ],
    });
  });

  it.each([
    ["", 'must start with "/"', 0],
    ["orders", 'must start with "/"', 0],
    ["/a/{x:pth}", 'unknown converter "pth"', 6],
    ["/a/{x:}", 'unknown converter ""', 6],
    ["/a/{id}/b/{id:int}", 'duplicate parameter "id"', 11],
    ["/a/{id", 'unclosed "{"', 3],
    ["/a/id}", 'unexpected "}"', 5],
    ["/a/{}", 'invalid parameter name ""', 4],
    ["/a/{1x}", 'invalid parameter name "1x"', 4],
    ["/a/{a-b}", 'invalid parameter name "a-b"', 4],
    ["/a/{p:path}/edit", '"path" converter must be the last segment', 3],
    ["/a/x{p:path}", '"path" converter must be a whole segment', 4],
    ["/a/{x}{p:path}", '"path" converter must be a whole segment', 6],
  ])("rejects %j: %s", (template, message, offset) => {
    const e = parseError(template);
    expect(e.message).toBe(message);
    expect(e.template).toBe(template);
    expect(e.offset).toBe(offset);
    expect(e.name).toBe("PathTemplateError");
  });

  it("builds the regex Starlette's compile_path builds", () => {
    expect(starletteRegexSource(parsePathTemplate("/a.b/{x:int}/{rest:path}"))).toBe(
      "^/a\\.b/(?<x>[0-9]+)/(?<rest>.*)$",
    );
  });
});

describe("SegmentPattern", () => {
  const pattern = (template: string) => {
    const segment = parsePathTemplate(template).segments[0];
    if (segment?.kind !== "mixed") throw new Error("not mixed");
    return segment.pattern;
  };

  function captures(template: string, text: string): string[] | undefined {
    const p = pattern(template);
    const out = new Int32Array(2 * p.captureCount);
    if (!p.match(text, 0, text.length, out, 0)) return undefined;
    const values: string[] = [];
    for (let i = 0; i < out.length; i += 2) values.push(text.slice(out[i], out[i + 1]));
    return values;
  }

  it("captures what Python's backtracking re captures", () => {
    // Python: re.match(r"^(?P<a>[^/]+)\.(?P<b>[^/]+)$", "x.y.z").groupdict() == {"a": "x.y", "b": "z"}
    expect(captures("/{a}.{b}", "x.y.z")).toEqual(["x.y", "z"]);
    expect(captures("/{a}{b}", "abc")).toEqual(["ab", "c"]);
    expect(captures("/{n:int}{m:int}", "12345")).toEqual(["1234", "5"]);
    expect(captures("/{f:float}{n:int}", "1.25")).toEqual(["1.2", "5"]);
    expect(captures("/{f:float}.{n:int}", "1.2.3")).toEqual(["1.2", "3"]);
    expect(captures("/{f:float}x", "10.5x")).toEqual(["10.5"]);
    expect(captures("/{f:float}x", "10.x")).toBeUndefined();
    expect(captures("/v{version:int}", "v2")).toEqual(["2"]);
    expect(captures("/v{version:int}", "v")).toBeUndefined();
    expect(captures("/v{version:int}", "v2a")).toBeUndefined();
    expect(captures("/{id:uuid}.json", "0123456789abcdef0123456789ABCDEF.json")).toEqual([
      "0123456789abcdef0123456789ABCDEF",
    ]);
    expect(captures("/{id:uuid}.json", "01234567-89ab-cdef-0123-456789abcdef.json")).toEqual([
      "01234567-89ab-cdef-0123-456789abcdef",
    ]);
    expect(captures("/{id:uuid}.json", "01234567-89ab-cdef-0123-456789abcdeg.json")).toBeUndefined();
  });

  it("matches only inside the given range", () => {
    const p = pattern("/{name}.json");
    expect(p.match("/a.json/b", 1, 7, undefined, 0)).toBe(true);
    expect(p.match("/a.json/b", 1, 6, undefined, 0)).toBe(false);
  });

  it("stays linear on hostile segments", () => {
    // A backtracking regex needs ~n^3 steps here; the table needs ~n per part.
    const hostile = ".".repeat(20_000);
    expect(pattern("/{a}.{b}.{c}x").match(hostile, 0, hostile.length, undefined, 0)).toBe(false);
    const digits = "1".repeat(20_000);
    expect(captures("/{a:float}{b:int}{c:float}", digits)).toEqual([digits.slice(0, -2), "1", "1"]);
  });
});

describe("templateCovers", () => {
  const covers = (general: string, specific: string) =>
    templateCovers(parsePathTemplate(general), parsePathTemplate(specific));

  it("covers identical templates, whatever the parameter names", () => {
    expect(covers("/a/b", "/a/b")).toBe(true);
    expect(covers("/a/{x}", "/a/{y}")).toBe(true);
    expect(covers("/f/{n}.json", "/f/{m}.json")).toBe(true);
    expect(covers("/s/{p:path}", "/s/{q:path}")).toBe(true);
  });

  it("lets a parameter cover literals it matches and narrower converters", () => {
    expect(covers("/a/{x}", "/a/b")).toBe(true);
    expect(covers("/a/{x}", "/a/{n:int}")).toBe(true);
    expect(covers("/a/{x}", "/a/{id:uuid}")).toBe(true);
    expect(covers("/a/{x}", "/a/{name}.json")).toBe(true);
    expect(covers("/a/{x:float}", "/a/{n:int}")).toBe(true);
    expect(covers("/a/{x:float}", "/a/1.5")).toBe(true);
    expect(covers("/a/{x:int}", "/a/42")).toBe(true);
    expect(covers("/a/{x:uuid}", "/a/01234567-89ab-cdef-0123-456789abcdef")).toBe(true);
    expect(covers("/a/{name}.json", "/a/x.json")).toBe(true);
  });

  it("does not let narrower converters or literals cover wider ones", () => {
    expect(covers("/a/b", "/a/{x}")).toBe(false);
    expect(covers("/a/{x:int}", "/a/{x}")).toBe(false);
    expect(covers("/a/{x:int}", "/a/{x:float}")).toBe(false);
    expect(covers("/a/{x:int}", "/a/4x")).toBe(false);
    expect(covers("/a/{x:int}", "/a/{n:int}.json")).toBe(false);
    expect(covers("/a/{x}", "/a/")).toBe(false);
    expect(covers("/a/{name}.json", "/a/x.yaml")).toBe(false);
    expect(covers("/a/{name}.json", "/a/{x}")).toBe(false);
  });

  it("lets a path tail cover everything below its prefix, and nothing else", () => {
    expect(covers("/s/{p:path}", "/s/")).toBe(true);
    expect(covers("/s/{p:path}", "/s/a")).toBe(true);
    expect(covers("/s/{p:path}", "/s/a/b/{c:int}")).toBe(true);
    expect(covers("/s/{p:path}", "/s/a/{q:path}")).toBe(true);
    expect(covers("/{p:path}", "/")).toBe(true);
    expect(covers("/{p:path}", "/a/{b}")).toBe(true);
    expect(covers("/s/{p:path}", "/s")).toBe(false);
    expect(covers("/s/{p:path}", "/t/a")).toBe(false);
    expect(covers("/s/a/{p:path}", "/s/{q:path}")).toBe(false);
    expect(covers("/s/{x}", "/s/{p:path}")).toBe(false);
  });

  it("compares segment by segment, so lengths must agree without a tail", () => {
    expect(covers("/a/{x}", "/a/b/c")).toBe(false);
    expect(covers("/a/{x}/c", "/a/b")).toBe(false);
  });
});
