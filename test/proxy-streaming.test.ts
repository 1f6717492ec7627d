// Bodies streamed both ways through the proxy to the real FastAPI app: 1 GiB each way, byte-exact,
// with the process's RSS growth bounded (the proxy runs in this process: had it buffered instead of
// applying backpressure, RSS would grow by about the body size).
import { createHash, randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Stack, startStack } from "./support/proxy.ts";

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
// A memory bound, not a timing: generous, and far below the body size.
const RSS_GROWTH_LIMIT = 200 * MiB;

let stack: Stack;
let token: string;

beforeAll(async () => {
  stack = await startStack();
  token = await stack.token("reader");
});

afterAll(async () => {
  await stack?.stop();
});

/** Peak RSS above the level at the start, sampled while `work` runs. */
async function peakRssGrowth<T>(work: () => Promise<T>): Promise<{ result: T; growth: number }> {
  globalThis.gc?.();
  const baseline = process.memoryUsage().rss;
  let peak = baseline;
  const sampler = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage().rss);
  }, 25);
  try {
    const result = await work();
    peak = Math.max(peak, process.memoryUsage().rss);
    return { result, growth: peak - baseline };
  } finally {
    clearInterval(sampler);
  }
}

/** `size` bytes made of one random block repeated, produced only as fast as they are read. */
function uploadBody(size: number): { body: Readable; sha256: () => string } {
  const block = randomBytes(MiB);
  const hash = createHash("sha256");
  let sent = 0;
  const body = new Readable({
    highWaterMark: MiB,
    read() {
      if (sent >= size) {
        this.push(null);
        return;
      }
      const chunk = block.subarray(0, Math.min(block.length, size - sent));
      sent += chunk.length;
      hash.update(chunk);
      this.push(chunk);
    },
  });
  return { body, sha256: () => hash.digest("hex") };
}

/** The app's download body: byte i is i % 256, produced in 64 KiB blocks. */
function expectedDownloadSha256(size: number): string {
  const block = Buffer.alloc(64 * 1024);
  for (let i = 0; i < block.length; i++) block[i] = i % 256;
  const hash = createHash("sha256");
  for (let left = size; left > 0; left -= block.length)
    hash.update(block.subarray(0, Math.min(left, block.length)));
  return hash.digest("hex");
}

async function upload(
  size: number,
  chunked: boolean,
): Promise<{ bytes: number; sha256: string; sent: string }> {
  const { body, sha256 } = uploadBody(size);
  const response = await request(`${stack.proxy.url}/upload`, {
    method: "POST",
    headers: {
      authorization: `Bearer ${token}`,
      "content-type": "application/octet-stream",
      ...(chunked ? {} : { "content-length": String(size) }),
    },
    body,
  });
  expect(response.statusCode).toBe(200);
  const answer = (await response.body.json()) as { bytes: number; sha256: string };
  return { ...answer, sent: sha256() };
}

/**
 * Reads the download, stalling `stallMs` after the first chunk: a proxy that ignored backpressure
 * would buffer what the app sends meanwhile.
 */
async function download(
  size: number,
  chunked: boolean,
  stallMs = 0,
): Promise<{ bytes: number; sha256: string; length?: string }> {
  const response = await request(
    `${stack.proxy.url}/download?size=${size}${chunked ? "&chunked=true" : ""}`,
    {
      headers: { authorization: `Bearer ${token}` },
    },
  );
  expect(response.statusCode).toBe(200);
  const hash = createHash("sha256");
  let bytes = 0;
  for await (const chunk of response.body) {
    if (bytes === 0 && stallMs > 0) await new Promise((done) => setTimeout(done, stallMs));
    hash.update(chunk as Buffer);
    bytes += (chunk as Buffer).length;
  }
  const length = response.headers["content-length"];
  return { bytes, sha256: hash.digest("hex"), ...(typeof length === "string" ? { length } : {}) };
}

describe("streaming through the proxy", () => {
  it("uploads 1 GiB (Content-Length) byte-exact with bounded memory", { timeout: 300_000 }, async () => {
    const { result, growth } = await peakRssGrowth(() => upload(GiB, false));
    expect(result.bytes).toBe(GiB);
    expect(result.sha256).toBe(result.sent);
    expect(growth).toBeLessThan(RSS_GROWTH_LIMIT);
  });

  it("downloads 1 GiB (Content-Length) byte-exact with bounded memory", { timeout: 300_000 }, async () => {
    const { result, growth } = await peakRssGrowth(() => download(GiB, false, 4000));
    expect(result.bytes).toBe(GiB);
    expect(result.length).toBe(String(GiB));
    expect(result.sha256).toBe(expectedDownloadSha256(GiB));
    expect(growth).toBeLessThan(RSS_GROWTH_LIMIT);
  });

  it("streams chunked bodies both ways (no Content-Length)", { timeout: 120_000 }, async () => {
    const size = 64 * MiB + 12_345;
    const sent = await upload(size, true);
    expect(sent.bytes).toBe(size);
    expect(sent.sha256).toBe(sent.sent);
    const received = await download(size, true);
    expect(received.length).toBeUndefined();
    expect(received.bytes).toBe(size);
    expect(received.sha256).toBe(expectedDownloadSha256(size));
  });
});
