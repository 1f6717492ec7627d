// WebSocket upgrades through the proxy to the real FastAPI app's /ws echo endpoint.
import { once } from "node:events";
import type { IncomingMessage } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { goodClaims, idpKey, sign } from "./support/authn.ts";
import { rawRequest, type Stack, startStack } from "./support/proxy.ts";

let stack: Stack;
let token: string;

beforeAll(async () => {
  stack = await startStack();
  token = await stack.token("reader");
});

afterAll(async () => {
  await stack?.stop();
});

function open(path: string, headers: Record<string, string>): WebSocket {
  return new WebSocket(`ws://127.0.0.1:${stack.proxy.port}${path}`, { headers });
}

/** The HTTP answer to a refused upgrade. */
async function refusal(
  socket: WebSocket,
): Promise<{ status: number; headers: IncomingMessage["headers"]; body: string }> {
  socket.on("error", () => undefined);
  const [, response] = (await once(socket, "unexpected-response")) as [unknown, IncomingMessage];
  const chunks: Buffer[] = [];
  for await (const chunk of response) chunks.push(chunk as Buffer);
  socket.terminate();
  return {
    status: response.statusCode ?? 0,
    headers: response.headers,
    body: Buffer.concat(chunks).toString(),
  };
}

function nextMessage(socket: WebSocket): Promise<{ data: Buffer; binary: boolean }> {
  return new Promise((done, fail) => {
    socket.once("message", (data: Buffer, binary: boolean) => done({ data, binary }));
    socket.once("close", () => fail(new Error("closed before a message")));
  });
}

describe("WebSocket through the proxy", () => {
  it("relays both ways with the verified identity, spoofed headers removed", async () => {
    const socket = open("/ws", {
      authorization: `Bearer ${token}`,
      "x-auth-subject": "evil",
      "x-auth-roles": "admin",
      "x-request-id": "ws-1",
    });
    const first = nextMessage(socket);
    await once(socket, "open");
    const { identity } = JSON.parse((await first).data.toString()) as {
      identity: { x_auth: Record<string, string[]>; forwarded: Record<string, string[]> };
    };
    expect(identity.x_auth["x-auth-subject"]).toEqual(["reader"]);
    expect(identity.x_auth["x-auth-roles"]).toEqual(["reader"]);
    expect(identity.forwarded["x-request-id"]).toEqual(["ws-1"]);
    expect(identity.forwarded["x-forwarded-for"]).toEqual(["127.0.0.1"]);

    const text = nextMessage(socket);
    socket.send("hello through the proxy");
    expect((await text).data.toString()).toBe("hello through the proxy");
    const payload = Buffer.alloc(256 * 1024, 7);
    const binary = nextMessage(socket);
    socket.send(payload);
    const echoed = await binary;
    expect(echoed.binary).toBe(true);
    expect(echoed.data.equals(payload)).toBe(true);

    socket.close(1000);
    const [code] = await once(socket, "close");
    expect(code).toBe(1000);
    await expect
      .poll(() => stack.proxy.logs.find((line) => line.requestId === "ws-1"))
      .toMatchObject({
        path: "/ws",
        rule: "files",
        decision: "allow",
        status: 101,
      });
  });

  it("refuses an upgrade without a token with 401 and a Bearer challenge", async () => {
    const answer = await refusal(open("/ws", {}));
    expect(answer.status).toBe(401);
    expect(answer.headers["www-authenticate"]).toBe("Bearer");
    expect(answer.headers["content-type"]).toBe("application/problem+json");
    expect(JSON.parse(answer.body)).toMatchObject({ status: 401 });
  });

  it("refuses a bad token with 401 invalid_token and a forbidden route with 403", async () => {
    const bad = await refusal(open("/ws", { authorization: "Bearer a.b.c" }));
    expect(bad.status).toBe(401);
    expect(bad.headers["www-authenticate"]).toBe('Bearer error="invalid_token"');
    const denied = await refusal(open("/internal/ws", { authorization: `Bearer ${token}` }));
    expect(denied.status).toBe(403);
  });

  it("forwards only websocket upgrades: h2c and others get 400", async () => {
    for (const protocol of ["h2c", "foo/1"]) {
      const response = await rawRequest(
        stack.proxy.port,
        `GET /ws HTTP/1.1\nHost: proxy\nAuthorization: Bearer ${token}\nConnection: Upgrade, HTTP2-Settings\nUpgrade: ${protocol}\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA`,
      );
      expect(response.status).toBe(400);
      expect(response.body).not.toContain("identity");
    }
  });

  it("closes the tunnel when the token expires", { timeout: 20_000 }, async () => {
    const exp = Math.floor(Date.now() / 1000) + 2;
    const shortLived = await sign(idpKey(stack.idp), goodClaims(stack.idp, { exp }));
    const socket = open("/ws", { authorization: `Bearer ${shortLived}`, "x-request-id": "ws-expiring" });
    const first = nextMessage(socket);
    await once(socket, "open");
    await first;
    // Still relaying before exp.
    const echo = nextMessage(socket);
    socket.send("still here");
    expect((await echo).data.toString()).toBe("still here");
    const [code] = await once(socket, "close");
    // Destroyed, not closed with a frame: the client sees an abnormal closure.
    expect(code).toBe(1006);
    // At exp, not before (half a second of slack between the wall clock and timers).
    expect(Date.now() / 1000).toBeGreaterThanOrEqual(exp - 0.5);
    await expect
      .poll(() => stack.proxy.logs.find((line) => line.requestId === "ws-expiring"))
      .toMatchObject({
        reason: "token-expired",
      });
  });
});
