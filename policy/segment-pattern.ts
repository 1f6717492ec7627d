// Matching one "/"-free path segment against a sequence of literals and Starlette converters, in
// O(segment length x parts) whatever the input. A backtracking regex would do the same job, but
// `{a}.{b}x` against a 16 KiB segment of dots is quadratic there (and worse with more parameters).
//
// A backward pass marks, per part, the offsets from which the remaining parts can match to the end.
// Captures are then chosen forward, each part taking its longest end from which the rest can finish:
// exactly the groups Python's backtracking `re` reports, since every converter tries longer ends first.

import type { ParamConverter, SegmentPart } from "./path-template.ts";

const STR = 0;
const INT = 1;
const FLOAT = 2;
const UUID = 3;
const LITERAL = 4;

const KIND_OF: Readonly<Record<ParamConverter, number>> = { str: STR, int: INT, float: FLOAT, uuid: UUID };

function isDigit(c: number): boolean {
  return c >= 48 && c <= 57;
}

function isHex(c: number): boolean {
  return (c >= 48 && c <= 57) || (c >= 65 && c <= 70) || (c >= 97 && c <= 102);
}

/** Length of the run of ASCII digits in s[from, end). */
function digitRun(s: string, from: number, end: number): number {
  let p = from;
  while (p < end && isDigit(s.charCodeAt(p))) p++;
  return p - from;
}

const UUID_GROUPS = [8, 4, 4, 4, 12] as const;

/** The single end offset of a Starlette uuid starting at `from` (hyphens optional), or -1. */
export function uuidEnd(s: string, from: number, end: number): number {
  let p = from;
  for (let g = 0; g < UUID_GROUPS.length; g++) {
    if (g > 0 && p < end && s.charCodeAt(p) === 45) p++;
    const stop = p + (UUID_GROUPS[g] ?? 0);
    if (stop > end) return -1;
    for (; p < stop; p++) if (!isHex(s.charCodeAt(p))) return -1;
  }
  return p;
}

/** A converter as the small integer the hot paths switch on (comparing names would compare strings). */
export function converterKind(converter: ParamConverter): number {
  return KIND_OF[converter];
}

/** Whether the converter of `kind` matches all of s[start, end) (a range without "/"). */
export function kindMatchesRange(kind: number, s: string, start: number, end: number): boolean {
  switch (kind) {
    case STR:
      return end > start;
    case INT:
      return end > start && digitRun(s, start, end) === end - start;
    case FLOAT: {
      const whole = digitRun(s, start, end);
      if (whole === 0) return false;
      const dot = start + whole;
      if (dot === end) return true;
      if (s.charCodeAt(dot) !== 46) return false;
      const fraction = digitRun(s, dot + 1, end);
      return fraction > 0 && dot + 1 + fraction === end;
    }
    case UUID:
      return uuidEnd(s, start, end) === end;
    default:
      return false;
  }
}

// Shared scratch for the feasibility table: matching never re-enters itself, so one buffer serves all.
let table = new Uint8Array(256);

function tableFor(size: number): Uint8Array {
  if (table.length < size) table = new Uint8Array(Math.max(size, table.length * 2));
  return table;
}

export class SegmentPattern {
  readonly captureCount: number;
  readonly #kinds: readonly number[];
  readonly #literals: readonly string[];

  constructor(parts: readonly SegmentPart[]) {
    this.#kinds = parts.map((p) => (p.kind === "literal" ? LITERAL : KIND_OF[p.converter]));
    this.#literals = parts.map((p) => (p.kind === "literal" ? p.text : ""));
    this.captureCount = parts.filter((p) => p.kind === "param").length;
  }

  /** Whether the pattern matches all of `text`. */
  test(text: string): boolean {
    return !text.includes("/") && this.match(text, 0, text.length, undefined, 0);
  }

  /**
   * Whether the pattern matches all of s[start, end), a range without "/". On a match, writes each
   * parameter's [start, end) offsets into `captures` from index `at` on.
   */
  match(s: string, start: number, end: number, captures: Int32Array | undefined, at: number): boolean {
    const kinds = this.#kinds;
    const parts = kinds.length;
    const n = end - start;
    const width = n + 1;
    // Row k: offsets (relative to start) from which parts k.. match to the end; row `parts` is the
    // end itself; the extra last row is scratch for float.
    const f = tableFor((parts + 2) * width);
    const scratch = (parts + 1) * width;
    f.fill(0, 0, (parts + 2) * width);
    f[parts * width + n] = 1;
    for (let k = parts - 1; k >= 0; k--) {
      const row = k * width;
      const next = row + width;
      switch (kinds[k]) {
        case LITERAL: {
          const text = this.#literals[k] ?? "";
          for (let p = 0; p + text.length <= n; p++) {
            if (f[next + p + text.length] === 1 && s.startsWith(text, start + p)) f[row + p] = 1;
          }
          break;
        }
        case STR: {
          let any = 0;
          for (let p = n - 1; p >= 0; p--) {
            any |= f[next + p + 1] ?? 0;
            f[row + p] = any;
          }
          break;
        }
        case INT:
          digitsThen(f, row, next, s, start, n);
          break;
        case FLOAT: {
          digitsThen(f, scratch, next, s, start, n);
          // A fraction exists only after the whole digit run: from p, the part ends at runEnd or
          // earlier (like int), or after "." + digits from runEnd.
          let runEnd = n;
          for (let p = n - 1; p >= 0; p--) {
            if (!isDigit(s.charCodeAt(start + p))) {
              runEnd = p;
              continue;
            }
            const fraction =
              runEnd < n && s.charCodeAt(start + runEnd) === 46 && f[scratch + runEnd + 1] === 1;
            f[row + p] = f[scratch + p] === 1 || fraction ? 1 : 0;
          }
          break;
        }
        case UUID:
          for (let p = 0; p < n; p++) {
            const q = uuidEnd(s, start + p, end);
            if (q !== -1 && f[next + q - start] === 1) f[row + p] = 1;
          }
          break;
      }
    }
    if (f[0] !== 1) return false;
    if (captures !== undefined) this.#capture(f, width, s, start, n, captures, at);
    return true;
  }

  #capture(f: Uint8Array, width: number, s: string, start: number, n: number, out: Int32Array, at: number) {
    let p = 0;
    let c = at;
    for (let k = 0; k < this.#kinds.length; k++) {
      const next = (k + 1) * width;
      const kind = this.#kinds[k];
      let q = -1;
      if (kind === LITERAL) {
        q = p + (this.#literals[k] ?? "").length;
      } else if (kind === UUID) {
        q = uuidEnd(s, start + p, start + n) - start;
      } else {
        const longest = kind === STR ? n : p + digitRun(s, start + p, start + n);
        let fractionEnd = -1;
        if (kind === FLOAT && longest < n && s.charCodeAt(start + longest) === 46) {
          fractionEnd = longest + 1 + digitRun(s, start + longest + 1, start + n);
        }
        for (let e = fractionEnd; e > longest + 1 && q === -1; e--) if (f[next + e] === 1) q = e;
        for (let e = longest; e > p && q === -1; e--) if (f[next + e] === 1) q = e;
      }
      if (kind !== LITERAL) {
        out[c++] = start + p;
        out[c++] = start + q;
      }
      p = q;
    }
  }
}

/** row[p] = 1 when s[p..] starts with one or more digits ending where `next` is 1. */
function digitsThen(f: Uint8Array, row: number, next: number, s: string, start: number, n: number): void {
  for (let p = n - 1; p >= 0; p--) {
    if (isDigit(s.charCodeAt(start + p)) && (f[next + p + 1] === 1 || f[row + p + 1] === 1)) f[row + p] = 1;
  }
}
