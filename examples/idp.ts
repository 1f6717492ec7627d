// A real OpenID Provider (oidc-provider 9), on loopback unless told otherwise, issuing JWT access
// tokens by client credentials. The demo and the integration tests use it as "the company's IdP";
// with `tls` it serves https, as an IdP behind a private CA does.
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { createServer as createTlsServer } from "node:https";
import type { AddressInfo } from "node:net";
import { calculateJwkThumbprint, exportJWK, generateKeyPair, type JWK } from "jose";
import Provider, { type Adapter, type Configuration } from "oidc-provider";
import { Agent, fetch } from "undici";

export interface IdpClient {
  clientId: string;
  clientSecret: string;
  /** Space-separated scopes this client may request; its tokens get all of them by default. */
  scope: string;
  /** Extra claims put into every access token of this client (cannot override iss/sub/aud/...). */
  claims?: Readonly<Record<string, unknown>>;
}

export type IdpSigningAlg = "RS256" | "ES256";

export interface IdpOptions {
  /** Default: a free port. start() after stop() reuses the same port. */
  port?: number;
  /** The resource indicator used when token() is given none; becomes the token's `aud`. */
  audience?: string;
  /** Default: DEFAULT_CLIENTS. */
  clients?: readonly IdpClient[];
  /** Lifetime of access tokens (ttl.ClientCredentials). Default 300. */
  tokenTtlSeconds?: number;
  /** Algorithm of the access tokens. Both an RSA and an EC P-256 key are always published. */
  signingAlg?: IdpSigningAlg;
  /** Also put the granted scopes as an array claim `scp` (as Okta and Entra ID do). Default true. */
  scpClaim?: boolean;
  /** The address it listens on and names in its issuer URL. Default 127.0.0.1. */
  host?: string;
  /** Serve https with this certificate; `ca` is what token() trusts (the CA that issued `cert`). */
  tls?: { cert: string; key: string; ca: string };
}

export interface TokenRequest {
  /** Default: every scope the client may request. */
  scope?: string;
  /** Resource indicator (RFC 8707); any absolute URI is accepted and becomes `aud`. */
  resource?: string;
  /** Override the client's secret, e.g. to provoke invalid_client. */
  clientSecret?: string;
}

export interface RotateOptions {
  /** Keep the previous keys in the JWKS (after the new ones) until dropPreviousKeys(). Default true. */
  keepPrevious?: boolean;
}

export interface IdpRequestCounts {
  discovery: number;
  jwks: number;
  token: number;
}

export interface IdentityProvider {
  issuer: string;
  jwksUri: string;
  tokenEndpoint: string;
  port: number;
  audience: string;
  clients: readonly IdpClient[];
  /** POSTs to the token endpoint (client_credentials, client_secret_basic); returns access_token. */
  token(clientId: string, request?: TokenRequest): Promise<string>;
  /** kids in the JWKS, in order; the first of each key type signs. */
  kids(): string[];
  /** The private JWKs (RSA, EC) signing now, for tests that mint tokens this IdP would never issue. */
  signingKeys(): JWK[];
  /** New signing keys (listed first); the old ones stay published or vanish at once. */
  rotateKeys(options?: RotateOptions): Promise<void>;
  /** Removes the keys that a rotateKeys({ keepPrevious: true }) kept. */
  dropPreviousKeys(): Promise<void>;
  /** How many discovery, JWKS and token requests arrived since start (or resetCounts). */
  counts(): IdpRequestCounts;
  resetCounts(): void;
  /** Closes the port and every connection (token()'s TLS client too): an outage. */
  stop(): Promise<void>;
  /** Listens again on the same port with the same keys. */
  start(): Promise<void>;
}

export const DEFAULT_AUDIENCE = "api://orders";

export const DEFAULT_CLIENTS: readonly IdpClient[] = [
  {
    clientId: "reader",
    clientSecret: "reader-secret",
    scope: "orders.read",
    claims: { email: "reader@orders.example" },
  },
  {
    clientId: "writer",
    clientSecret: "writer-secret",
    scope: "orders.read orders.write",
    claims: { email: "writer@orders.example" },
  },
  {
    clientId: "admin",
    clientSecret: "admin-secret",
    scope: "orders.read orders.write orders.admin",
    claims: { email: "admin@orders.example", realm_access: { roles: ["orders-admin"] } },
  },
];

// oidc-provider persists nothing for self-contained JWT access tokens, and every stateful feature
// (sessions, interactions, codes, refresh tokens) is off: the store can stay empty.
const statelessStore: Adapter = {
  upsert: async () => undefined,
  find: async () => undefined,
  findByUserCode: async () => undefined,
  findByUid: async () => undefined,
  consume: async () => undefined,
  destroy: async () => undefined,
  revokeByGrantId: async () => undefined,
};

interface SigningKeys {
  generation: number;
  keys: JWK[];
}

export async function startIdentityProvider(options: IdpOptions = {}): Promise<IdentityProvider> {
  const audience = options.audience ?? DEFAULT_AUDIENCE;
  const clients = options.clients ?? DEFAULT_CLIENTS;
  const signingAlg = options.signingAlg ?? "RS256";
  const counts: IdpRequestCounts = { discovery: 0, jwks: 0, token: 0 };

  let handle: (req: IncomingMessage, res: ServerResponse) => void = (_req, res) => {
    res.writeHead(503).end();
  };
  const listener = (req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? "").split("?")[0];
    if (path === "/.well-known/openid-configuration") counts.discovery++;
    else if (path === "/jwks") counts.jwks++;
    else if (path === "/token") counts.token++;
    handle(req, res);
  };
  const host = options.host ?? "127.0.0.1";
  const server = options.tls
    ? createTlsServer({ cert: options.tls.cert, key: options.tls.key }, listener)
    : createServer(listener);
  server.listen(options.port ?? 0, host);
  await once(server, "listening");
  const port = (server.address() as AddressInfo).port;
  const issuer = `${options.tls ? "https" : "http"}://${host.includes(":") ? `[${host}]` : host}:${port}`;
  // token()'s TLS client trusts the IdP's CA; made on first use and closed by stop() (start() may follow).
  let tokenClient: Agent | undefined;
  const tokenDispatcher = (): Agent | undefined => {
    if (options.tls) tokenClient ??= new Agent({ connect: { ca: options.tls.ca } });
    return tokenClient;
  };

  let current = await newSigningKeys(1);
  let previous: JWK[] = [];
  const install = () => {
    const provider = new Provider(issuer, configuration(current.keys.concat(previous)));
    handle = provider.callback();
  };
  const configuration = (keys: JWK[]): Configuration => ({
    clients: clients.map((client) => ({
      client_id: client.clientId,
      client_secret: client.clientSecret,
      grant_types: ["client_credentials"],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: "client_secret_basic",
      scope: client.scope,
    })),
    // Scopes listed here are enforced against each client's `scope`; unknown ones are refused.
    scopes: [...new Set(clients.flatMap((client) => client.scope.split(" ")))],
    jwks: { keys },
    adapter: () => statelessStore,
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: false },
      revocation: { enabled: false },
      resourceIndicators: {
        enabled: true,
        // Without a resource the grant would issue an opaque token: default to the audience.
        defaultResource: () => audience,
        getResourceServerInfo: (_ctx, resourceIndicator, client) => ({
          audience: resourceIndicator,
          scope: typeof client.scope === "string" ? client.scope : "",
          accessTokenFormat: "jwt",
          jwt: { sign: { alg: signingAlg } },
        }),
      },
    },
    extraTokenClaims: (_ctx, token) => {
      const client = clients.find((candidate) => candidate.clientId === token.clientId);
      const scopes = (token.scope ?? "").split(" ").filter(Boolean);
      return {
        ...client?.claims,
        ...(options.scpClaim === false ? {} : { scp: scopes }),
      };
    },
    ttl: { ClientCredentials: options.tokenTtlSeconds ?? 300 },
    cookies: { keys: [randomBytes(32).toString("hex")] },
  });
  install();

  const tokenEndpoint = `${issuer}/token`;
  return {
    issuer,
    jwksUri: `${issuer}/jwks`,
    tokenEndpoint,
    port,
    audience,
    clients,
    async token(clientId, request = {}) {
      const client = clients.find((candidate) => candidate.clientId === clientId);
      const secret = request.clientSecret ?? client?.clientSecret ?? "";
      const form = new URLSearchParams({ grant_type: "client_credentials" });
      form.set("scope", request.scope ?? client?.scope ?? "");
      form.set("resource", request.resource ?? audience);
      // RFC 6749 2.3.1: id and secret are form-urlencoded before the Basic encoding.
      const basic = Buffer.from(`${encodeURIComponent(clientId)}:${encodeURIComponent(secret)}`).toString(
        "base64",
      );
      const dispatcher = tokenDispatcher();
      const response = await fetch(tokenEndpoint, {
        ...(dispatcher ? { dispatcher } : {}),
        method: "POST",
        headers: { authorization: `Basic ${basic}`, "content-type": "application/x-www-form-urlencoded" },
        body: form,
      });
      const body: unknown = await response.json();
      if (!response.ok || !isRecord(body) || typeof body.access_token !== "string") {
        throw new Error(`token request for ${clientId} failed (${response.status}): ${JSON.stringify(body)}`);
      }
      return body.access_token;
    },
    kids: () => current.keys.concat(previous).map((key) => key.kid ?? ""),
    signingKeys: () => current.keys.map((key) => ({ ...key })),
    async rotateKeys(rotate = {}) {
      const next = await newSigningKeys(current.generation + 1);
      previous = rotate.keepPrevious === false ? [] : current.keys.concat(previous);
      current = next;
      install();
    },
    async dropPreviousKeys() {
      previous = [];
      install();
    },
    counts: () => ({ ...counts }),
    resetCounts() {
      counts.discovery = 0;
      counts.jwks = 0;
      counts.token = 0;
    },
    async stop() {
      if (server.listening) {
        const closed = once(server, "close");
        server.close();
        server.closeAllConnections();
        await closed;
      }
      const client = tokenClient;
      tokenClient = undefined;
      await client?.close();
    },
    async start() {
      if (server.listening) return;
      server.listen(port, host);
      await once(server, "listening");
    },
  };
}

// One RSA and one EC P-256 key per generation, with kids that say which generation they are.
async function newSigningKeys(generation: number): Promise<SigningKeys> {
  const keys = await Promise.all(
    (["RS256", "ES256"] as const).map(async (alg) => {
      const { privateKey } = await generateKeyPair(alg, { extractable: true, modulusLength: 2048 });
      const jwk = await exportJWK(privateKey);
      const thumbprint = await calculateJwkThumbprint(jwk);
      return { ...jwk, alg, use: "sig", kid: `${alg.toLowerCase()}-${generation}-${thumbprint.slice(0, 8)}` };
    }),
  );
  return { generation, keys };
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null;
}
