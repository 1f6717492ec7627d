// A port that was free a moment ago (the kernel picks it), for processes that need a concrete --port.
import { once } from "node:events";
import { createServer } from "node:net";

export async function freePort(host = "127.0.0.1"): Promise<number> {
  const server = createServer();
  server.listen(0, host);
  await once(server, "listening");
  const address = server.address();
  server.close();
  await once(server, "close");
  if (address === null || typeof address === "string") throw new Error("no TCP address for probe server");
  return address.port;
}
