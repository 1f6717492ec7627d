// readCredential on requests as they arrive on the wire: raw bytes over a socket to a node:http
// server, so duplicate headers and odd spellings reach it exactly as a client sent them.
import { once } from "node:events";
import { createServer, type Server } from "node:http";
import { type AddressInfo, connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type Credential,
  MAX_TOKEN_LENGTH,
  parseAuthorization,
  readCredential,
} from "../proxy/authn/credential.ts";

let server: Server;
let port: number;

beforeAll(async () => {
  server = createServer((req, res) => {
    const target = req.url ?? "";
    const question = target.indexOf("?");
    const credential = readCredential(req, question === -1 ? "" : target.slice(question + 1));
    res.setHeader("content-type", "application/json").end(JSON.stringify(credential));
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  port = (server.address() as AddressInfo).port;
});

afterAll(() => {
  server.closeAllConnections();
  server.close();
});

/** Sends `headerLines` verbatim and returns what readCredential made of them. */
async function credentialOf(headerLines: string[], target = "/orders"): Promise<Credential> {
  const socket = connect(port, "127.0.0.1");
  await once(socket, "connect");
  socket.end(
    [`GET ${target} HTTP/1.1`, "Host: 127.0.0.1", "Connection: close", ...headerLines, "", ""].join("\r\n"),
  );
  const chunks: Buffer[] = [];
  for await (const chunk of socket) chunks.push(chunk as Buffer);
  const response = Buffer.concat(chunks).toString("utf8");
  expect(response.startsWith("HTTP/1.1 200")).toBe(true);
  return JSON.parse(response.slice(response.indexOf("\r\n\r\n") + 4)) as Credential;
}

const TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl-_";
const multiple = { kind: "invalid", reason: "multiple_credentials", status: 400, error: "invalid_request" };
const malformed = {
  kind: "invalid",
  reason: "malformed_authorization",
  status: 400,
  error: "invalid_request",
};

describe("readCredential", () => {
  it("finds none when nothing is sent", async () => {
    expect(await credentialOf([])).toEqual({ kind: "none" });
    expect(await credentialOf([], "/orders?page=2&token=x")).toEqual({ kind: "none" });
  });

  it.each([
    [`Authorization: Bearer ${TOKEN}`],
    [`authorization: bearer ${TOKEN}`],
    [`AUTHORIZATION: BEARER ${TOKEN}`],
    [`Authorization: BeArEr    ${TOKEN}`],
    [`Authorization:   Bearer ${TOKEN}   `],
    [`Authorization: Bearer ${TOKEN}==`],
  ])("reads %s", async (line) => {
    const credential = await credentialOf([line]);
    expect(credential).toEqual({ kind: "bearer", token: line.trim().split(/ +/).at(-1) });
  });

  it("refuses two Authorization headers, whatever their spelling or content", async () => {
    expect(await credentialOf([`Authorization: Bearer ${TOKEN}`, `Authorization: Bearer ${TOKEN}`])).toEqual(
      multiple,
    );
    expect(await credentialOf([`Authorization: Bearer ${TOKEN}`, "authorization: Bearer other"])).toEqual(
      multiple,
    );
    expect(await credentialOf([`Authorization: Bearer ${TOKEN}`, "Authorization: "])).toEqual(multiple);
    expect(
      await credentialOf(["Authorization: Basic dXNlcjpwYXNz", `Authorization: Bearer ${TOKEN}`]),
    ).toEqual(multiple);
  });

  it("refuses a header together with an access_token query parameter", async () => {
    expect(await credentialOf([`Authorization: Bearer ${TOKEN}`], `/orders?access_token=${TOKEN}`)).toEqual(
      multiple,
    );
    expect(
      await credentialOf([`Authorization: Bearer ${TOKEN}`], `/orders?a=1&access%5Ftoken=${TOKEN}`),
    ).toEqual(multiple);
  });

  it("refuses a token in the URL even alone", async () => {
    const inQuery = { kind: "invalid", reason: "token_in_query", status: 400, error: "invalid_request" };
    expect(await credentialOf([], `/orders?access_token=${TOKEN}`)).toEqual(inQuery);
    expect(await credentialOf([], "/orders?x=1&access_token=")).toEqual(inQuery);
    expect(await credentialOf([], `/orders?%61ccess_token=${TOKEN}`)).toEqual(inQuery);
    // Other names are not credentials.
    expect(await credentialOf([], `/orders?access_tokens=${TOKEN}&ACCESS_TOKEN=1&token=2`)).toEqual({
      kind: "none",
    });
  });

  it("answers another scheme with a bare 401 challenge", async () => {
    const otherScheme = { kind: "invalid", reason: "unsupported_scheme", status: 401 };
    expect(await credentialOf(["Authorization: Basic dXNlcjpwYXNz"])).toEqual(otherScheme);
    expect(await credentialOf([`Authorization: DPoP ${TOKEN}`])).toEqual(otherScheme);
    expect(await credentialOf(["Authorization: Negotiate"])).toEqual(otherScheme);
    expect(await credentialOf([`Authorization: Bearerx ${TOKEN}`])).toEqual(otherScheme);
  });

  it.each([
    ["Authorization: "],
    ["Authorization: Bearer"],
    ["Authorization: Bearer "],
    [`Authorization: Bearer ${TOKEN} extra`],
    [`Authorization: Bearer ${TOKEN},${TOKEN}`],
    [`Authorization: Bearer\t${TOKEN}`],
    [`Authorization: Bearer "${TOKEN}"`],
    [`Authorization: Bearer =${TOKEN}`],
    [`Authorization: Bearer ${TOKEN}=x`],
    ["Authorization: Bearer a%20b"],
    [`Authorization: Bearer: ${TOKEN}`],
  ])("refuses the malformed %j with 400", async (line) => {
    expect(await credentialOf([line])).toEqual(malformed);
  });

  it("refuses an over-long token as an invalid token (401), not a bad request", async () => {
    const tooLong = { kind: "invalid", reason: "token_too_long", status: 401, error: "invalid_token" };
    const atLimit = "a".repeat(MAX_TOKEN_LENGTH);
    expect(await credentialOf([`Authorization: Bearer ${atLimit}`])).toEqual({
      kind: "bearer",
      token: atLimit,
    });
    expect(await credentialOf([`Authorization: Bearer ${atLimit}a`])).toEqual(tooLong);
    // Refused on length before its characters are looked at.
    expect(
      await credentialOf([`Authorization: Bearer ${"\u00e9".repeat(MAX_TOKEN_LENGTH / 2 + 100)}`]),
    ).toEqual(tooLong);
    expect(await credentialOf([`Authorization: Bearer ${" ".repeat(100)}${atLimit}`])).toEqual(tooLong);
  });

  it("takes a token the lookup finds without scanning it, with what was found, and scans every other one", () => {
    const asked: string[] = [];
    const found = { verified: true };
    const lookup = (token: string) => {
      asked.push(token);
      return token === TOKEN ? found : undefined;
    };
    expect(parseAuthorization(`Bearer ${TOKEN}`, lookup)).toEqual({
      kind: "bearer",
      token: TOKEN,
      known: found,
    });
    expect(parseAuthorization(`Bearer ${TOKEN}x`, lookup)).toEqual({ kind: "bearer", token: `${TOKEN}x` });
    expect(parseAuthorization('Bearer "x"', lookup)).toEqual(malformed);
    expect(asked).toEqual([TOKEN, `${TOKEN}x`, '"x"']);
  });
});
