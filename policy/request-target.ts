// The request target (Node's `req.url`) -> the path FastAPI will route, decoded exactly as uvicorn
// decodes it (`urllib.parse.unquote`: each valid %XX once, anything else literal, then UTF-8), or a
// refusal when the bytes could mean different paths to different parsers. The proxy authorises
// `path` and forwards `rawPath` (+ query) untouched, so the app decodes the same bytes to the same path.

import { isUtf8 } from "node:buffer";

export type RequestTarget =
  | { ok: true; path: string; rawPath: string; query: string }
  | { ok: false; reason: string };

const PERCENT = 37;
const SLASH = 47;
const DOT = 46;
const HASH = 35;

function refuse(reason: string): RequestTarget {
  return { ok: false, reason };
}

function hexValue(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 65 && c <= 70) return c - 55;
  if (c >= 97 && c <= 102) return c - 87;
  return -1;
}

function isControl(c: number): boolean {
  return c < 0x20 || c === 0x7f;
}

/** Whether the segment path[start, end) is "." or "..". */
function isDotSegment(path: string, start: number, end: number): boolean {
  const length = end - start;
  if (length === 1) return path.charCodeAt(start) === DOT;
  return length === 2 && path.charCodeAt(start) === DOT && path.charCodeAt(start + 1) === DOT;
}

function hasDotSegment(path: string): boolean {
  let start = 1;
  for (let i = 1; i <= path.length; i++) {
    if (i === path.length || path.charCodeAt(i) === SLASH) {
      if (isDotSegment(path, start, i)) return true;
      start = i + 1;
    }
  }
  return false;
}

// Decoding scratch, reused across requests (a path is at most Node's 16 KiB header limit anyway).
let bytes = Buffer.allocUnsafe(1024);

/** urllib.parse.unquote on an ASCII string, or undefined when the bytes are not UTF-8. */
function percentDecode(raw: string): string | undefined {
  if (bytes.length < raw.length) bytes = Buffer.allocUnsafe(Math.max(raw.length, 2 * bytes.length));
  let n = 0;
  for (let i = 0; i < raw.length; i++) {
    const c = raw.charCodeAt(i);
    if (c === PERCENT && i + 2 < raw.length) {
      const hi = hexValue(raw.charCodeAt(i + 1));
      const lo = hexValue(raw.charCodeAt(i + 2));
      if (hi >= 0 && lo >= 0) {
        bytes[n++] = hi * 16 + lo;
        i += 2;
        continue;
      }
    }
    bytes[n++] = c;
  }
  const decoded = bytes.subarray(0, n);
  // Python would substitute U+FFFD; what the app would then route is a guess, so refuse instead.
  if (!isUtf8(decoded)) return undefined;
  return decoded.toString("utf8");
}

export function parseRequestTarget(target: string): RequestTarget {
  if (target.charCodeAt(0) !== SLASH) return refuse("request target must be origin-form");
  let question = -1;
  let percent = false;
  for (let i = 0; i < target.length; i++) {
    const c = target.charCodeAt(i);
    if (c === HASH) return refuse("fragment in request target");
    if (question === -1) {
      if (c === 63) {
        question = i;
        continue;
      }
      // Non-ASCII must be percent-encoded: uvicorn decodes the raw path as ASCII.
      if (c < 0x21 || c > 0x7e) return refuse("invalid character in path");
      if (c === PERCENT) percent = true;
    } else if (c < 0x21 || c > 0x7e) {
      return refuse("invalid character in query");
    }
  }
  const rawPath = question === -1 ? target : target.slice(0, question);
  const query = question === -1 ? "" : target.slice(question + 1);
  let path = rawPath;
  if (percent) {
    const decoded = percentDecode(rawPath);
    if (decoded === undefined) return refuse("path is not UTF-8");
    for (let i = 0; i < decoded.length; i++) {
      if (isControl(decoded.charCodeAt(i))) return refuse("control character in path");
    }
    path = decoded;
  }
  if (hasDotSegment(path)) return refuse("dot segment in path");
  return { ok: true, path, rawPath, query };
}
