// First-match-wins route rules, matched the way Starlette routes: case-sensitive, no normalisation.
// A rule's trailing "/"s are insignificant: the app may declare its route either way (a FastAPI
// router's "/" under a prefix is `/admin/`), and Starlette's redirect_slashes sends the other form
// (`/admin/`, `/admin//`, or `/admin` for a route on `/admin/`) to that route. So a rule path without a
// `{name:path}` tail matches a request path when both agree with their trailing "/"s stripped, and a
// tail also matches its prefix without the "/" (`/static` for `/static/{rest:path}`); the first rule
// that matches any of these forms wins, so such a form never falls through to a later, wider rule.
// Paths made only of "/"s are matched exactly (Starlette never redirects "/").
//
// Rules compile into one segment trie per distinct method view (rules without `methods` are in all
// of them), so a match costs about one walk down the path, not one regex per rule. Each node knows the
// lowest rule index below it, so the search skips every branch that cannot beat the best match so far.
// Python's `$` also matches before a final "\n" and its `.` never matches "\n": both are reproduced,
// though the proxy rejects control characters before matching.

import {
  type MixedSegment,
  type ParamConverter,
  type PathTemplate,
  parsePathTemplate,
  type Segment,
  templateCovers,
} from "./path-template.ts";
import { converterKind, kindMatchesRange, type SegmentPattern } from "./segment-pattern.ts";

export interface RuleMatch<R> {
  readonly rule: R;
  /** The rule's position in the list. */
  readonly index: number;
  /** The path template that matched. */
  readonly template: string;
  /** Captured parameters as raw strings (Starlette would convert int/float/uuid values). */
  readonly params: Readonly<Record<string, string>>;
}

export interface RuleMatcher<R> {
  /** `path` is percent-decoded, without the query. Never throws. */
  match(method: string, path: string): RuleMatch<R> | undefined;
}

export interface MatchableRule {
  name: string;
  paths: readonly string[];
  methods?: readonly string[];
}

const NONE = 0x7fffffff;
const SLASH = 47;
const NEWLINE = 10;

interface Terminal<R> {
  readonly index: number;
  readonly template: string;
  readonly names: readonly string[];
  readonly rule: R;
  /** The shared, frozen result when there is nothing to capture. */
  readonly fixed: RuleMatch<R> | undefined;
}

interface ParamEdge<R> {
  readonly converter: ParamConverter;
  readonly kind: number;
  readonly node: TrieNode<R>;
}

interface MixedEdge<R> {
  readonly key: string;
  readonly pattern: SegmentPattern;
  readonly node: TrieNode<R>;
}

interface LiteralEntry<R> {
  readonly hash: number;
  readonly key: string;
  readonly node: TrieNode<R>;
}

interface TrieNode<R> {
  literalKeys: string[];
  literalNodes: TrieNode<R>[];
  /**
   * Literal children in an open-addressing table keyed by segmentHash(), so a lookup needs neither
   * a slice of the path nor a Map; `literalMask` is its size - 1.
   */
  literalTable: (LiteralEntry<R> | undefined)[];
  literalMask: number;
  params: ParamEdge<R>[];
  mixed: MixedEdge<R>[];
  /** Lowest-index rule whose template ends here. */
  end: Terminal<R> | undefined;
  /**
   * Lowest-index rule with a `{name:path}` tail starting after the "/" that leads here; it also matches
   * a path ending at this node (redirect_slashes appends the "/", and the tail captures "").
   */
  tail: Terminal<R> | undefined;
  minIndex: number;
}

function newNode<R>(): TrieNode<R> {
  return {
    literalKeys: [],
    literalNodes: [],
    literalTable: [],
    literalMask: -1,
    params: [],
    mixed: [],
    end: undefined,
    tail: undefined,
    minIndex: NONE,
  };
}

/** The hash the search computes while it scans a segment for its end. */
function segmentHash(text: string): number {
  let h = 0;
  for (let i = 0; i < text.length; i++) h = (Math.imul(h, 31) + text.charCodeAt(i)) | 0;
  return h;
}

function literalTable<R>(
  keys: readonly string[],
  nodes: readonly TrieNode<R>[],
): (LiteralEntry<R> | undefined)[] {
  let size = 1;
  while (size < 2 * keys.length) size *= 2;
  const table: (LiteralEntry<R> | undefined)[] = new Array(size).fill(undefined);
  keys.forEach((key, k) => {
    const hash = segmentHash(key);
    let i = hash & (size - 1);
    while (table[i] !== undefined) i = (i + 1) & (size - 1);
    table[i] = { hash, key, node: nodes[k] as TrieNode<R> };
  });
  return table;
}

function mixedKey(segment: MixedSegment): string {
  return JSON.stringify(segment.parts.map((p) => (p.kind === "literal" ? p.text : { c: p.converter })));
}

function terminal<R>(rule: R, index: number, template: string, names: readonly string[]): Terminal<R> {
  const fixed =
    names.length === 0 ? Object.freeze({ rule, index, template, params: Object.freeze({}) }) : undefined;
  return { index, template, names, rule, fixed };
}

/**
 * The segments a template is matched by: without a tail, trailing empty segments (trailing "/"s) go,
 * unless nothing but empty segments would remain (`/`, `//`: matched exactly).
 */
function matchedSegments(template: PathTemplate): readonly Segment[] {
  const { segments } = template;
  if (template.tail !== undefined) return segments;
  let end = segments.length;
  while (end > 0 && isEmptyLiteral(segments[end - 1])) end--;
  return end === 0 ? segments : segments.slice(0, end);
}

function isEmptyLiteral(segment: Segment | undefined): boolean {
  return segment?.kind === "literal" && segment.text === "";
}

/**
 * True when every request path `specific` matches as a rule is matched by `general` as a rule: both
 * with their trailing "/"s cut as the matcher cuts them, and a tail's prefix without its "/"
 * (`/s/{p:path}` takes `/s`) counted. Conservative like templateCovers: false when unsure.
 */
export function ruleCovers(general: PathTemplate, specific: PathTemplate): boolean {
  const g = { ...general, segments: matchedSegments(general) };
  const s = { ...specific, segments: matchedSegments(specific) };
  if (templateCovers(g, s)) return true;
  // The tail's prefix form: `/s` and `/s/` for `/s/{p:path}`.
  return (
    general.tail !== undefined &&
    specific.tail === undefined &&
    s.segments.length === g.segments.length &&
    templateCovers({ ...g, tail: undefined }, s)
  );
}

function insert<R>(root: TrieNode<R>, rule: R, index: number, source: string): void {
  const template = parsePathTemplate(source);
  let node = root;
  for (const segment of matchedSegments(template)) {
    let child: TrieNode<R> | undefined;
    if (segment.kind === "literal") {
      const at = node.literalKeys.indexOf(segment.text);
      child = at === -1 ? undefined : node.literalNodes[at];
      if (child === undefined) {
        child = newNode();
        node.literalKeys.push(segment.text);
        node.literalNodes.push(child);
      }
    } else if (segment.kind === "param") {
      child = node.params.find((e) => e.converter === segment.converter)?.node;
      if (child === undefined) {
        child = newNode();
        node.params.push({
          converter: segment.converter,
          kind: converterKind(segment.converter),
          node: child,
        });
      }
    } else {
      const key = mixedKey(segment);
      child = node.mixed.find((e) => e.key === key)?.node;
      if (child === undefined) {
        child = newNode();
        node.mixed.push({ key, pattern: segment.pattern, node: child });
      }
    }
    node = child;
  }
  // Rules are inserted in order, so the first terminal placed at a spot is the one that wins there.
  if (template.tail === undefined) node.end ??= terminal(rule, index, source, template.params);
  else node.tail ??= terminal(rule, index, source, template.params);
}

/** Fills minIndex bottom-up, orders edges best-first, and builds the literal tables. */
function finish<R>(node: TrieNode<R>): number {
  let min = Math.min(node.end?.index ?? NONE, node.tail?.index ?? NONE);
  for (const child of node.literalNodes) min = Math.min(min, finish(child));
  for (const edge of node.params) min = Math.min(min, finish(edge.node));
  for (const edge of node.mixed) min = Math.min(min, finish(edge.node));
  node.params.sort((a, b) => a.node.minIndex - b.node.minIndex);
  node.mixed.sort((a, b) => a.node.minIndex - b.node.minIndex);
  if (node.literalKeys.length > 0) {
    node.literalTable = literalTable(node.literalKeys, node.literalNodes);
    node.literalMask = node.literalTable.length - 1;
  }
  node.minIndex = min;
  return min;
}

function maxCaptures(rules: readonly MatchableRule[]): number {
  let max = 0;
  for (const rule of rules) {
    for (const path of rule.paths) max = Math.max(max, parsePathTemplate(path).params.length);
  }
  return max;
}

/**
 * Rules allowing `method`: those without `methods`, those listing it, and GET rules for HEAD. An empty
 * list allows nothing (Starlette would read it as every method): validation should refuse it.
 */
function allows(rule: MatchableRule, method: string | undefined): boolean {
  if (rule.methods === undefined) return true;
  if (method === undefined) return false;
  return rule.methods.includes(method) || (method === "HEAD" && rule.methods.includes("GET"));
}

function buildTrie<R extends MatchableRule>(rules: readonly R[], method: string | undefined): TrieNode<R> {
  const root = newNode<R>();
  rules.forEach((rule, index) => {
    if (!allows(rule, method)) return;
    for (const path of rule.paths) insert(root, rule, index, path);
  });
  finish(root);
  return root;
}

class TrieMatcher<R extends MatchableRule> implements RuleMatcher<R> {
  readonly #byMethod: Map<string, TrieNode<R>>;
  readonly #otherMethods: TrieNode<R>;
  // Search state, reused by every call: match() never re-enters itself.
  readonly #captures: Int32Array;
  readonly #bestCaptures: Int32Array;
  #bestIndex = NONE;
  #best: Terminal<R> | undefined;
  #bestPath = "";
  #lastNewline = -1;
  /** Where the path's segments end for this search: before its trailing "/"s (see #searchFrom). */
  #limit = 0;

  constructor(rules: readonly R[]) {
    const methods = new Set<string>();
    for (const rule of rules) {
      for (const m of rule.methods ?? []) methods.add(m);
      if (rule.methods?.includes("GET")) methods.add("HEAD");
    }
    this.#otherMethods = buildTrie(rules, undefined);
    this.#byMethod = new Map();
    // Methods that select the same rules share one trie.
    const bySelection = new Map<string, TrieNode<R>>();
    for (const method of methods) {
      const selection = rules.map((r) => (allows(r, method) ? "1" : "0")).join("");
      let trie = bySelection.get(selection);
      if (trie === undefined) {
        trie = buildTrie(rules, method);
        bySelection.set(selection, trie);
      }
      this.#byMethod.set(method, trie);
    }
    const slots = 2 * maxCaptures(rules);
    this.#captures = new Int32Array(slots);
    this.#bestCaptures = new Int32Array(slots);
  }

  match(method: string, path: string): RuleMatch<R> | undefined {
    const root = this.#byMethod.get(method) ?? this.#otherMethods;
    this.#bestIndex = NONE;
    this.#best = undefined;
    // Starlette appends "/" to an empty path (no HTTP request has one; the CLI may pass it).
    this.#searchPath(root, path === "" ? "/" : path);
    return this.#result();
  }

  /** Matches `path` as Python's `re.match("^...$")` would: also without a final "\n". */
  #searchPath(root: TrieNode<R>, path: string): void {
    this.#searchFrom(root, path);
    if (path.charCodeAt(path.length - 1) === NEWLINE) this.#searchFrom(root, path.slice(0, -1));
  }

  #searchFrom(root: TrieNode<R>, path: string): void {
    if (path.charCodeAt(0) !== SLASH) return;
    this.#lastNewline = -2;
    // One walk covers every trailing-"/" form: segments end before the trailing "/"s, where rules'
    // trailing "/"s were cut too; tails still capture to the very end.
    let limit = path.length;
    while (limit > 0 && path.charCodeAt(limit - 1) === SLASH) limit--;
    this.#limit = limit === 0 ? path.length : limit;
    this.#search(root, path, 1, 0);
  }

  /** `pos` starts a segment (just after a "/"); `count` captures are on the stack so far. */
  #search(node: TrieNode<R>, path: string, pos: number, count: number): void {
    if (node.minIndex >= this.#bestIndex) return;
    const tail = node.tail;
    if (tail !== undefined && tail.index < this.#bestIndex && this.#newlineFreeFrom(path, pos)) {
      this.#captures[2 * count] = pos;
      this.#captures[2 * count + 1] = path.length;
      this.#record(tail, path, count + 1);
    }
    const limit = this.#limit;
    let end = pos;
    if (node.literalMask === -1) {
      end = path.indexOf("/", pos);
      if (end === -1 || end > limit) end = limit;
    } else {
      // Hash the segment while looking for its end, for the literal table.
      let hash = 0;
      for (; end < limit; end++) {
        const c = path.charCodeAt(end);
        if (c === SLASH) break;
        hash = (Math.imul(hash, 31) + c) | 0;
      }
      const child = literalChild(node, path, pos, end, hash);
      if (child !== undefined) this.#descend(child, path, end, end === limit, count);
    }
    const last = end === limit;

    for (const edge of node.params) {
      if (edge.node.minIndex >= this.#bestIndex) break;
      if (!kindMatchesRange(edge.kind, path, pos, end)) continue;
      this.#captures[2 * count] = pos;
      this.#captures[2 * count + 1] = end;
      this.#descend(edge.node, path, end, last, count + 1);
    }
    for (const edge of node.mixed) {
      if (edge.node.minIndex >= this.#bestIndex) break;
      if (!edge.pattern.match(path, pos, end, this.#captures, 2 * count)) continue;
      this.#descend(edge.node, path, end, last, count + edge.pattern.captureCount);
    }
  }

  #descend(child: TrieNode<R>, path: string, end: number, last: boolean, count: number): void {
    if (!last) {
      this.#search(child, path, end + 1, count);
      return;
    }
    const t = child.end;
    if (t !== undefined && t.index < this.#bestIndex) this.#record(t, path, count);
    // A tail after this node takes what follows: "" for `/static` or `/static/`, "/" for `/static//`.
    const tail = child.tail;
    if (tail !== undefined && tail.index < this.#bestIndex && this.#newlineFreeFrom(path, end)) {
      this.#captures[2 * count] = Math.min(end + 1, path.length);
      this.#captures[2 * count + 1] = path.length;
      this.#record(tail, path, count + 1);
    }
  }

  /** Python's `.` stops at "\n", so a tail matches only when none follows. */
  #newlineFreeFrom(path: string, pos: number): boolean {
    if (this.#lastNewline === -2) this.#lastNewline = path.lastIndexOf("\n");
    return this.#lastNewline < pos;
  }

  #record(t: Terminal<R>, path: string, count: number): void {
    this.#bestIndex = t.index;
    this.#best = t;
    this.#bestPath = path;
    for (let i = 0; i < 2 * count; i++) this.#bestCaptures[i] = this.#captures[i] ?? 0;
  }

  #result(): RuleMatch<R> | undefined {
    const best = this.#best;
    if (best === undefined) return undefined;
    if (best.fixed !== undefined) return best.fixed;
    const params: Record<string, string> = {};
    const caps = this.#bestCaptures;
    for (let i = 0; i < best.names.length; i++) {
      const name = best.names[i] as string;
      const value = this.#bestPath.slice(caps[2 * i], caps[2 * i + 1]);
      // A parameter may legally be called __proto__; plain assignment would not create it.
      if (name === "__proto__") {
        Object.defineProperty(params, name, { value, enumerable: true, writable: true, configurable: true });
      } else {
        params[name] = value;
      }
    }
    return { rule: best.rule, index: best.index, template: best.template, params };
  }
}

function literalChild<R>(
  node: TrieNode<R>,
  path: string,
  pos: number,
  end: number,
  hash: number,
): TrieNode<R> | undefined {
  const table = node.literalTable;
  const length = end - pos;
  for (let i = hash & node.literalMask; ; i = (i + 1) & node.literalMask) {
    const entry = table[i];
    if (entry === undefined) return undefined;
    if (entry.hash === hash && entry.key.length === length && path.startsWith(entry.key, pos))
      return entry.node;
  }
}

/** Compiles rules into a matcher; throws PathTemplateError on an invalid template. */
export function compileRules<R extends MatchableRule>(rules: readonly R[]): RuleMatcher<R> {
  return new TrieMatcher(rules);
}
