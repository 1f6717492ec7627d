// FastAPI/Starlette path templates (`/orders/{order_id}`, `/files/{rest:path}`), parsed into
// "/"-separated segments. Converter regexes are Starlette 1.10's (starlette/convertors.py). None but
// `path` can match "/", so a template's "/"s align one to one with a matching path's.
//
// Deliberately stricter than Starlette's compile_path, which treats any brace text that is not a
// valid `{name}`/`{name:conv}` as literal and lets `{p:path}` sit anywhere (`/{p:path}/edit`): here
// stray braces are errors and `{p:path}` must be the whole last segment, a plain prefix match.

import { converterKind, kindMatchesRange, SegmentPattern } from "./segment-pattern.ts";

export type ParamConverter = "str" | "int" | "float" | "uuid";
export type Converter = ParamConverter | "path";

/** Starlette 1.10's convertor regexes, verbatim: the reference the matcher reproduces. */
export const CONVERTER_REGEX: Readonly<Record<Converter, string>> = {
  str: "[^/]+",
  path: ".*",
  int: "[0-9]+",
  float: "[0-9]+(\\.[0-9]+)?",
  uuid: "[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}",
};

export interface LiteralPart {
  readonly kind: "literal";
  readonly text: string;
}

export interface ParamPart {
  readonly kind: "param";
  readonly name: string;
  readonly converter: ParamConverter;
}

export type SegmentPart = LiteralPart | ParamPart;

/** Text and parameters mixed in one segment: `{name}.json`, `v{version:int}`. */
export interface MixedSegment {
  readonly kind: "mixed";
  readonly parts: readonly SegmentPart[];
  readonly pattern: SegmentPattern;
}

/** What lies between two "/"s; an empty segment is the literal "". */
export type Segment = LiteralPart | ParamPart | MixedSegment;

export interface PathTemplate {
  readonly source: string;
  /** The segments after the leading "/", without the `{name:path}` tail. */
  readonly segments: readonly Segment[];
  /** Name of the trailing `{name:path}` parameter, matching everything after the last "/". */
  readonly tail: string | undefined;
  /** Every parameter name, in order of appearance. */
  readonly params: readonly string[];
}

export class PathTemplateError extends Error {
  override readonly name = "PathTemplateError";
  readonly template: string;
  /** Offset in the template where the problem was found. */
  readonly offset: number;

  constructor(message: string, template: string, offset: number) {
    super(message);
    this.template = template;
    this.offset = offset;
  }
}

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;
const PARAM_CONVERTERS: ReadonlySet<string> = new Set(["str", "int", "float", "uuid"]);

export function parsePathTemplate(template: string): PathTemplate {
  if (!template.startsWith("/")) throw new PathTemplateError('must start with "/"', template, 0);
  const segments: Segment[] = [];
  const params: string[] = [];
  let tail: string | undefined;
  let parts: SegmentPart[] = [];
  let literal = "";
  let i = 1;
  while (i <= template.length) {
    const c = template[i];
    if (c === undefined || c === "/") {
      if (literal !== "" || parts.length === 0) parts.push({ kind: "literal", text: literal });
      segments.push(toSegment(parts));
      parts = [];
      literal = "";
      i++;
      continue;
    }
    if (c === "}") throw new PathTemplateError('unexpected "}"', template, i);
    if (c !== "{") {
      literal += c;
      i++;
      continue;
    }
    const close = template.indexOf("}", i);
    if (close === -1) throw new PathTemplateError('unclosed "{"', template, i);
    const body = template.slice(i + 1, close);
    const colon = body.indexOf(":");
    const name = colon === -1 ? body : body.slice(0, colon);
    const converter = colon === -1 ? "str" : body.slice(colon + 1);
    if (!IDENTIFIER.test(name)) {
      throw new PathTemplateError(`invalid parameter name ${JSON.stringify(name)}`, template, i + 1);
    }
    if (params.includes(name)) {
      throw new PathTemplateError(`duplicate parameter ${JSON.stringify(name)}`, template, i + 1);
    }
    params.push(name);
    if (converter === "path") {
      if (literal !== "" || parts.length > 0) {
        throw new PathTemplateError('"path" converter must be a whole segment', template, i);
      }
      if (close !== template.length - 1) {
        throw new PathTemplateError('"path" converter must be the last segment', template, i);
      }
      tail = name;
      break;
    }
    if (!PARAM_CONVERTERS.has(converter)) {
      throw new PathTemplateError(`unknown converter ${JSON.stringify(converter)}`, template, i + 2 + colon);
    }
    if (literal !== "") parts.push({ kind: "literal", text: literal });
    literal = "";
    parts.push({ kind: "param", name, converter: converter as ParamConverter });
    i = close + 1;
  }
  return { source: template, segments, tail, params };
}

function toSegment(parts: SegmentPart[]): Segment {
  const only = parts[0];
  if (parts.length === 1 && only !== undefined) return only;
  return { kind: "mixed", parts, pattern: new SegmentPattern(parts) };
}

/**
 * True when every path `specific` matches is also matched by `general` (over the paths the proxy
 * accepts, which hold no control characters). Conservative: false when unsure.
 */
export function templateCovers(general: PathTemplate, specific: PathTemplate): boolean {
  const g = general.segments;
  const s = specific.segments;
  if (general.tail === undefined) {
    if (specific.tail !== undefined || g.length !== s.length) return false;
  } else {
    // The tail matches anything after the "/" ending the prefix: the specific template needs that "/".
    const needed = g.length + 1;
    if (specific.tail === undefined ? s.length < needed : s.length + 1 < needed) return false;
  }
  for (let k = 0; k < g.length; k++) {
    const gs = g[k];
    const ss = s[k];
    if (gs === undefined || ss === undefined || !segmentCovers(gs, ss)) return false;
  }
  return true;
}

function segmentCovers(general: Segment, specific: Segment): boolean {
  switch (general.kind) {
    case "literal":
      return specific.kind === "literal" && specific.text === general.text;
    case "param":
      if (specific.kind === "literal") return converterMatches(general.converter, specific.text);
      if (specific.kind === "param") return converterCovers(general.converter, specific.converter);
      // A mixed segment is never empty and never holds "/": exactly what str matches.
      return general.converter === "str" || sameShape(general, specific);
    case "mixed":
      if (specific.kind === "literal") return general.pattern.test(specific.text);
      return sameShape(general, specific);
  }
}

function converterMatches(converter: ParamConverter, text: string): boolean {
  return !text.includes("/") && kindMatchesRange(converterKind(converter), text, 0, text.length);
}

function converterCovers(general: ParamConverter, specific: ParamConverter): boolean {
  return general === specific || general === "str" || (general === "float" && specific === "int");
}

/** Structurally equal segments (parameter names aside) match the same strings. */
function sameShape(a: Segment, b: Segment): boolean {
  const pa = a.kind === "mixed" ? a.parts : [a];
  const pb = b.kind === "mixed" ? b.parts : [b];
  return (
    pa.length === pb.length &&
    pa.every((p, k) => {
      const q = pb[k];
      if (q === undefined || p.kind !== q.kind) return false;
      return p.kind === "literal"
        ? q.kind === "literal" && p.text === q.text
        : q.kind === "param" && p.converter === q.converter;
    })
  );
}

/** The regex Starlette's compile_path builds for this template (for baselines and tests). */
export function starletteRegexSource(template: PathTemplate): string {
  let source = "^";
  for (const segment of template.segments) {
    source += "/";
    const parts = segment.kind === "mixed" ? segment.parts : [segment];
    for (const part of parts) {
      source +=
        part.kind === "literal"
          ? escapeRegex(part.text)
          : `(?<${part.name}>${CONVERTER_REGEX[part.converter]})`;
    }
  }
  if (template.tail !== undefined) source += `/(?<${template.tail}>${CONVERTER_REGEX.path})`;
  return `${source}$`;
}

function escapeRegex(text: string): string {
  return text.replace(/[\\^$.*+?()[\]{}|/-]/g, "\\$&");
}
