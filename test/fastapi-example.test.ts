// The example upstream, run for real under uvicorn: the contract the proxy tests rely on.

import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { startUpstream, type Upstream } from "../examples/fastapi/upstream.ts";
import type { EchoedIdentity } from "./support/proxy.ts";

let upstream: Upstream;

beforeAll(async () => {
  upstream = await startUpstream();
});

afterAll(async () => {
  await upstream?.stop();
});

async function getJson(
  path: string,
  init?: RequestInit,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(`${upstream.url}${path}`, init);
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

// fetch would merge repeated headers and normalise names: write the request bytes ourselves.
async function rawRequest(head: string): Promise<{ status: number; body: string }> {
  const socket = connect(upstream.port, "127.0.0.1");
  await once(socket, "connect");
  socket.end(`${head.trim().split("\n").join("\r\n")}\r\nHost: upstream\r\nConnection: close\r\n\r\n`);
  const chunks: Buffer[] = [];
  for await (const chunk of socket) chunks.push(chunk as Buffer);
  const text = Buffer.concat(chunks).toString("utf8");
  const status = Number(text.slice(9, 12));
  return { status, body: text.slice(text.indexOf("\r\n\r\n") + 4) };
}

function expectedDownload(size: number): Buffer {
  const bytes = Buffer.alloc(size);
  for (let i = 0; i < size; i++) bytes[i] = i % 256;
  return bytes;
}

const sha256 = (data: Uint8Array) => createHash("sha256").update(data).digest("hex");

describe("orders-api under uvicorn", () => {
  it("answers /healthz", async () => {
    const { status, body } = await getJson("/healthz");
    expect(status).toBe(200);
    expect(body.status).toBe("ok");
  });

  it("lists, creates, reads and deletes orders", async () => {
    const list = await getJson("/orders");
    expect(list.status).toBe(200);
    expect(list.body.orders).toContainEqual({ id: 1, item: "espresso beans", quantity: 2 });

    const created = await getJson("/orders", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ item: "grinder", quantity: 3 }),
    });
    expect(created.status).toBe(201);
    const order = created.body.order as { id: number; item: string; quantity: number };
    expect(order).toMatchObject({ item: "grinder", quantity: 3 });

    expect((await getJson(`/orders/${order.id}`)).body.order).toEqual(order);
    const deleted = await getJson(`/orders/${order.id}`, { method: "DELETE" });
    expect(deleted).toMatchObject({ status: 200, body: { deleted: order.id } });

    const gone = await getJson(`/orders/${order.id}`);
    expect(gone.status).toBe(404);
    expect(gone.body.identity).toMatchObject({ path: `/orders/${order.id}` });
  });

  it("rejects a non-integer order id and an invalid order, still echoing the identity", async () => {
    const badId = await getJson("/orders/abc");
    expect(badId.status).toBe(422);
    expect(badId.body.identity).toBeDefined();
    const badOrder = await getJson("/orders", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ quantity: 0 }),
    });
    expect(badOrder.status).toBe(422);
  });

  it("echoes every copy of x-auth-* headers and every spoofed variant exactly as received", async () => {
    const { status, body } = await rawRequest(`
GET /orders?limit=5 HTTP/1.1
X-Auth-Subject: alice
x-auth-subject: mallory
X_Auth_Subject: evil-underscore
x.auth.subject: evil-dots
X-Auth-Roles: reader
X-Forwarded-For: 203.0.113.7
X-Request-Id: req-1
Authorization: Bearer very-secret-token`);
    expect(status).toBe(200);
    expect(body).not.toContain("very-secret-token");
    const identity = (JSON.parse(body) as { identity: EchoedIdentity }).identity;
    expect(identity.x_auth).toEqual({ "x-auth-subject": ["alice", "mallory"], "x-auth-roles": ["reader"] });
    expect(identity.raw_headers).toContainEqual(["x_auth_subject", "evil-underscore"]);
    expect(identity.raw_headers).toContainEqual(["x.auth.subject", "evil-dots"]);
    expect(identity.raw_headers.map(([name]) => name).indexOf("x-auth-subject")).toBeLessThan(
      identity.raw_headers.map(([name]) => name).indexOf("x_auth_subject"),
    );
    expect(identity.authorization).toBe("Bearer");
    expect(identity.forwarded["x-forwarded-for"]).toEqual(["203.0.113.7"]);
    expect(identity.forwarded["x-request-id"]).toEqual(["req-1"]);
    expect(identity.forwarded.traceparent).toEqual([]);
    // uvicorn's proxy-headers middleware trusts X-Forwarded-For from loopback (the sidecar).
    expect(identity.client?.[0]).toBe("203.0.113.7");
    expect(identity.query_string).toBe("limit=5");
  });

  it("shows the decoded path the app routed next to the raw path it was sent", async () => {
    const { status, body } = await getJson("/admin/%61b%2Fc?x=1");
    expect(status).toBe(200);
    expect(body).toMatchObject({ area: "admin", rest: "ab/c" });
    expect(body.identity).toMatchObject({
      path: "/admin/ab/c",
      raw_path: "/admin/%61b%2Fc",
      query_string: "x=1",
    });
    expect((await getJson("/internal/metrics")).body).toMatchObject({ area: "internal", rest: "metrics" });
  });

  it("counts and hashes a streamed upload of a few MB", async () => {
    const data = randomBytes(5 * 1024 * 1024 + 17);
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        for (let offset = 0; offset < data.length; offset += 256 * 1024) {
          controller.enqueue(data.subarray(offset, offset + 256 * 1024));
        }
        controller.close();
      },
    });
    const response = await fetch(`${upstream.url}/upload`, { method: "POST", body, duplex: "half" });
    expect(response.status).toBe(200);
    expect(await response.json()).toMatchObject({ bytes: data.length, sha256: sha256(data) });
  });

  it("streams a deterministic download with Content-Length or chunked", async () => {
    const size = 3 * 1024 * 1024 + 123;
    const sized = await fetch(`${upstream.url}/download?size=${size}`);
    expect(sized.headers.get("content-length")).toBe(String(size));
    const bytes = new Uint8Array(await sized.arrayBuffer());
    expect(bytes.length).toBe(size);
    expect(sha256(bytes)).toBe(sha256(expectedDownload(size)));

    const chunked = await fetch(`${upstream.url}/download?size=1000&chunked=true`);
    expect(chunked.headers.get("transfer-encoding")).toBe("chunked");
    expect(Buffer.from(await chunked.arrayBuffer()).equals(expectedDownload(1000))).toBe(true);
  });

  it("answers /slow after sleeping", async () => {
    const { status, body } = await getJson("/slow?seconds=0.2");
    expect(status).toBe(200);
    expect(body.slept).toBe(0.2);
  });

  it("sends the identity on WebSocket connect, then echoes text and binary frames", async () => {
    const socket = new WebSocket(`${upstream.url.replace("http", "ws")}/ws?room=1`, {
      headers: { "X-Auth-Subject": "alice" },
    });
    const messages: { data: WebSocket.RawData; isBinary: boolean }[] = [];
    const waiters: (() => void)[] = [];
    socket.on("message", (data, isBinary) => {
      messages.push({ data, isBinary });
      waiters.shift()?.();
    });
    const next = async () => {
      if (messages.length === 0) await new Promise<void>((resolve) => waiters.push(resolve));
      return messages.shift()!;
    };
    await once(socket, "open");

    const hello = JSON.parse(String((await next()).data)) as { identity: EchoedIdentity };
    expect(hello.identity).toMatchObject({
      path: "/ws",
      query_string: "room=1",
      x_auth: { "x-auth-subject": ["alice"] },
    });

    socket.send("ping");
    const text = await next();
    expect(text.isBinary).toBe(false);
    expect(String(text.data)).toBe("ping");
    socket.send(Buffer.from([0, 1, 2, 255]));
    const binary = await next();
    expect(binary.isBinary).toBe(true);
    expect(Buffer.from(binary.data as Buffer)).toEqual(Buffer.from([0, 1, 2, 255]));

    socket.close();
    await once(socket, "close");
  });
});
