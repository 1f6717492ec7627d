// The AccessPolicy API (portcullis.dev/v1alpha1), defined once. Everything else is derived from these
// TypeBox schemas: the TypeScript types (Static<>), runtime validation (policy/validate.ts) and the CRD
// (policy/crd.ts -> crds/). TypeBox was chosen over zod because its schemas ARE JSON Schema objects:
// the CRD is a mechanical rewrite of the same object, not a lossy conversion.
//
// Keep every field described: `kubectl explain accesspolicy.spec...` prints these descriptions.
// `x-kubernetes-validations` are CEL rules for the API server; policy/semantics.ts checks the same
// rules for policies that never pass through one (standalone proxy, `portcullis validate`).

import { type Static, type TLiteral, type TSchema, type TUnion, Type } from "@sinclair/typebox";

export const GROUP = "portcullis.dev";
export const VERSION = "v1alpha1";
export const API_VERSION = `${GROUP}/${VERSION}`;
export const KIND = "AccessPolicy";
export const PLURAL = "accesspolicies";

// Fields with a `default` are required in the static types: validation applies defaults first (as the
// API server does), so code downstream always sees them. The CRD generator drops them from `required`.

/** Bounds that keep CEL cost estimates inside the API server's budget, and policies reviewable. */
export const LIMITS = {
  issuers: 8,
  audiences: 16,
  roleMappings: 32,
  mappedValues: 256,
  rolesPerValue: 16,
  rules: 256,
  pathsPerRule: 32,
  methods: 9,
  roles: 32,
  rateLimits: 32,
  name: 63,
  url: 2048,
  caBundle: 65536,
  path: 1024,
  header: 128,
  claim: 256,
} as const;

/**
 * Client headers that steer an app, a framework or a proxy: client address (X-Real-IP, Forwarded,
 * True-Client-IP...), path or URL rewrites (X-Original-URL, X-Rewrite-URL, X-Forwarded-Prefix...),
 * host overrides and method overrides. The sidecar sets X-Forwarded-For/-Proto/-Host itself.
 */
export const STEERING_HEADERS = [
  "Forwarded",
  "X-Real-IP",
  "X-Client-IP",
  "True-Client-IP",
  "CF-Connecting-IP",
  "Fastly-Client-IP",
  "X-Cluster-Client-IP",
  "X-Original-Forwarded-For",
  "X-Forwarded",
  "X-Forwarded-Port",
  "X-Forwarded-Server",
  "X-Forwarded-Scheme",
  "X-Forwarded-Ssl",
  "X-Url-Scheme",
  "Front-End-Https",
  "X-Original-URL",
  "X-Original-URI",
  "X-Rewrite-URL",
  "X-Forwarded-Uri",
  "X-Forwarded-Path",
  "X-Forwarded-Prefix",
  "X-Envoy-Original-Path",
  "X-Original-Host",
  "X-Host",
  "X-HTTP-Method-Override",
  "X-HTTP-Method",
  "X-Method-Override",
] as const;

export const ALGORITHMS = [
  "RS256",
  "RS384",
  "RS512",
  "PS256",
  "PS384",
  "PS512",
  "ES256",
  "ES384",
  "ES512",
  "EdDSA",
] as const;
export const METHODS = [
  "GET",
  "HEAD",
  "POST",
  "PUT",
  "PATCH",
  "DELETE",
  "OPTIONS",
  "TRACE",
  "CONNECT",
] as const;

type LiteralTuple<T extends readonly string[]> = { -readonly [K in keyof T]: TLiteral<T[K]> };

/** A closed set of strings; the CRD generator turns it into `type: string, enum: [...]`. */
function stringEnum<const T extends readonly string[]>(
  values: T,
  description: string,
  extra: Record<string, unknown> = {},
): TUnion<LiteralTuple<T>> {
  const literals = values.map((v) => Type.Literal(v));
  return Type.Union(literals, { description, ...extra }) as unknown as TUnion<LiteralTuple<T>>;
}

/** Kubernetes IntOrString (a port number or a port name, a quantity). */
function intOrString(description: string) {
  return Type.Union([Type.Integer(), Type.String({ maxLength: LIMITS.name })], {
    description,
    "x-kubernetes-int-or-string": true,
  });
}

const Name = (description: string) =>
  Type.String({
    minLength: 1,
    maxLength: LIMITS.name,
    pattern: "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
    description,
  });

const HeaderName = (description: string, extra: Record<string, unknown> = {}) =>
  Type.String({
    minLength: 1,
    maxLength: LIMITS.header,
    pattern: "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$",
    description,
    ...extra,
  });

const Port = (description: string, extra: Record<string, unknown> = {}) =>
  Type.Integer({ minimum: 1, maximum: 65535, description, ...extra });

export const LabelSelectorRequirement = Type.Object(
  {
    key: Type.String({ minLength: 1, maxLength: 317, description: "The label key the selector applies to." }),
    operator: stringEnum(
      ["In", "NotIn", "Exists", "DoesNotExist"] as const,
      "How the key relates to the values.",
    ),
    values: Type.Optional(
      Type.Array(Type.String({ maxLength: LIMITS.name }), {
        maxItems: 64,
        description: "Values for In and NotIn; must be empty for Exists and DoesNotExist.",
      }),
    ),
  },
  { additionalProperties: false, description: "A label selector requirement." },
);

export const LabelSelector = Type.Object(
  {
    matchLabels: Type.Optional(
      Type.Record(Type.String(), Type.String({ maxLength: LIMITS.name }), {
        description: "Labels the pod template must carry, each with exactly this value.",
      }),
    ),
    matchExpressions: Type.Optional(
      Type.Array(LabelSelectorRequirement, { maxItems: 16, description: "Set-based requirements, ANDed." }),
    ),
  },
  {
    additionalProperties: false,
    description:
      "Selects the Deployments in the policy's namespace whose POD TEMPLATE labels match, with the meaning a Service selector has. An empty selector selects nothing.",
  },
);

export const Upstream = Type.Object(
  {
    port: intOrString(
      "The FastAPI container's port the sidecar forwards to over loopback: a number, or the name of a containerPort.",
    ),
    timeoutSeconds: Type.Integer({
      minimum: 1,
      maximum: 3600,
      default: 30,
      description: "How long the sidecar waits for the upstream's response headers before answering 504.",
    }),
  },
  { additionalProperties: false, description: "The application container the sidecar protects." },
);

export const Listener = Type.Object(
  {
    port: Port(
      "The port the sidecar listens on. Services that sent traffic to the upstream port are pointed here.",
      {
        default: 8080,
      },
    ),
    requestIdHeaders: Type.Array(HeaderName("A request header that may carry an inbound request id."), {
      maxItems: 4,
      default: ["X-Request-Id", "X-Correlation-ID"],
      description:
        "Inbound headers whose well-formed value becomes the request id (first present wins); otherwise one is generated. The id is sent upstream and back as X-Request-Id.",
    }),
  },
  { additionalProperties: false, default: {}, description: "The sidecar's public listener." },
);

export const Issuer = Type.Object(
  {
    issuer: Type.String({
      minLength: 1,
      maxLength: LIMITS.url,
      description:
        "The exact `iss` value of accepted tokens (string comparison: a trailing slash matters). Must be https, or http on a loopback host.",
    }),
    jwksUri: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: LIMITS.url,
        description:
          "The JWKS URL. When omitted it is discovered from <issuer>/.well-known/openid-configuration.",
      }),
    ),
    caBundle: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: LIMITS.caBundle,
        description:
          "CA certificates as PEM text (not base64) for an IdP behind a private CA: when set, the discovery and JWKS fetches of this issuer trust exactly these (instead of the public roots).",
      }),
    ),
    audiences: Type.Array(Type.String({ minLength: 1, maxLength: LIMITS.url }), {
      minItems: 1,
      maxItems: LIMITS.audiences,
      description:
        "Accepted `aud` values: a token is accepted when any of its audiences is listed (exact match).",
    }),
    algorithms: Type.Array(stringEnum(ALGORITHMS, "An asymmetric JWS algorithm."), {
      minItems: 1,
      maxItems: ALGORITHMS.length,
      default: ["RS256"],
      description: "Accepted signature algorithms. Only asymmetric ones exist here: never `none`, never HS*.",
    }),
    clockSkewSeconds: Type.Integer({
      minimum: 0,
      maximum: 300,
      default: 30,
      description: "Tolerance applied to `exp`, `nbf` and `iat`.",
    }),
    maxTokenAgeSeconds: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 31_536_000,
        description:
          "Refuse tokens issued (`iat`) longer ago than this, whatever their `exp`; a token without `iat` is then refused. Off by default.",
      }),
    ),
  },
  { additionalProperties: false, description: "An OAuth2/OIDC token issuer whose bearer JWTs are accepted." },
);

export const FailedAuthenticationLimit = Type.Object(
  {
    perSecond: Type.Integer({
      minimum: 1,
      maximum: 1_000_000,
      description: "Sustained failed authentications a peer address may cause per second.",
    }),
    burst: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 1_000_000,
        description:
          "Failed authentications a peer may cause in a row before its bucket runs dry. Default: perSecond.",
      }),
    ),
  },
  {
    additionalProperties: false,
    description:
      "A token bucket per peer address (the socket's, never X-Forwarded-For; an IPv6 one by its /64) counted BEFORE a token is verified, on every path that needs one: each verification holds a token and gives it back when the token checks out, so only failures (forged, expired, garbage tokens; bad Authorization headers) drain the bucket. A peer whose bucket is empty gets 429 with Retry-After before any parse or signature check; tokens this sidecar verified before still pass. Per sidecar. Off by default.",
  },
);

export const Authentication = Type.Object(
  {
    issuers: Type.Array(Issuer, {
      minItems: 1,
      maxItems: LIMITS.issuers,
      description: "Trusted issuers. A token's `iss` picks exactly one; its keys come only from that issuer.",
      "x-kubernetes-validations": [
        {
          rule: "self.all(i, self.exists_one(j, j.issuer == i.issuer))",
          message: "issuer values must be unique",
        },
      ],
    }),
    failedAuthenticationLimit: Type.Optional(FailedAuthenticationLimit),
  },
  { additionalProperties: false, description: "How bearer tokens are validated." },
);

export const RoleMapping = Type.Object(
  {
    claim: Type.String({
      minLength: 1,
      maxLength: LIMITS.claim,
      description:
        "The claim holding the values: a top-level name (`scp`, `permissions`, `https://example.com/roles`) or a dotted path into nested claims (`realm_access.roles`). A claim whose full name exists at top level is taken as is before the dotted path is followed. String claims are split on spaces; arrays are taken as is; other types are ignored.",
    }),
    issuer: Type.Optional(
      Type.String({
        maxLength: LIMITS.url,
        description:
          "Apply this mapping only to tokens from this issuer (exact `iss`). Default: every issuer.",
      }),
    ),
    map: Type.Record(
      Type.String(),
      Type.Array(Type.String({ minLength: 1, maxLength: LIMITS.name }), { maxItems: LIMITS.rolesPerValue }),
      {
        description: "Claim value (exact, case-sensitive) to the roles it grants.",
        maxProperties: LIMITS.mappedValues,
      },
    ),
  },
  { additionalProperties: false, description: "Grants roles from the values of one claim." },
);

export const MODES = ["Enforce", "DryRun"] as const;

const modeDescription =
  "Enforce: refusals are answered (401, 403, 429). DryRun: every request is forwarded, and the decision the policy would have made is logged (`decision: would_deny`) and counted (portcullis_dry_run_would_deny_total); a request without a valid token reaches the app with no identity headers. Malformed requests (400) are refused in both modes.";

export const Rule = Type.Object(
  {
    name: Name("A unique name, used in logs, metrics, and rate limits."),
    paths: Type.Array(Type.String({ minLength: 1, maxLength: LIMITS.path }), {
      minItems: 1,
      maxItems: LIMITS.pathsPerRule,
      description:
        "Path templates in FastAPI/Starlette syntax: `/orders/{order_id}`, `/files/{rest:path}`; converters str, int, float, uuid, path. Matched against the percent-decoded path, case-sensitively, without the query. Trailing `/`s do not matter: `/admin` also covers `/admin/` and `/admin//` (Starlette serves or redirects them to the route, however the app declares it), and `/static/{rest:path}` covers `/static`.",
    }),
    methods: Type.Optional(
      Type.Array(stringEnum(METHODS, "An HTTP method."), {
        minItems: 1,
        maxItems: LIMITS.methods,
        description: "Methods the rule applies to (GET implies HEAD). Default: every method.",
      }),
    ),
    public: Type.Optional(Type.Boolean({ description: "Forward without a token." })),
    deny: Type.Optional(Type.Boolean({ description: "Always answer 403." })),
    anyRole: Type.Optional(
      Type.Array(Type.String({ minLength: 1, maxLength: LIMITS.name }), {
        minItems: 1,
        maxItems: LIMITS.roles,
        description: "A valid token holding at least one of these roles.",
      }),
    ),
    allRoles: Type.Optional(
      Type.Array(Type.String({ minLength: 1, maxLength: LIMITS.name }), {
        minItems: 1,
        maxItems: LIMITS.roles,
        description: "A valid token holding every one of these roles.",
      }),
    ),
    mode: Type.Optional(stringEnum(MODES, `This rule's mode; default: spec.mode. ${modeDescription}`)),
  },
  {
    additionalProperties: false,
    description:
      "A route rule. Rules are evaluated in order; the first whose method and path match decides. Exactly one of public, deny, anyRole, allRoles.",
    "x-kubernetes-validations": [
      {
        rule: "[has(self.public) && self.public, has(self.deny) && self.deny, has(self.anyRole), has(self.allRoles)].exists_one(x, x)",
        message: "a rule sets exactly one of public: true, deny: true, anyRole, allRoles",
      },
    ],
  },
);

export const DEFAULT_ACTIONS = ["Deny", "AllowAuthenticated"] as const;

export const Authorization = Type.Object(
  {
    roleMappings: Type.Array(RoleMapping, {
      maxItems: LIMITS.roleMappings,
      default: [],
      description: "Claim/scope to role mappings. A token's roles are the union over every mapping.",
    }),
    rules: Type.Array(Rule, {
      maxItems: LIMITS.rules,
      description: "Route rules, first match wins.",
      "x-kubernetes-validations": [
        { rule: "self.all(r, self.exists_one(s, s.name == r.name))", message: "rule names must be unique" },
      ],
    }),
    defaultAction: stringEnum(
      DEFAULT_ACTIONS,
      "What happens to a request no rule matches: Deny (403), or AllowAuthenticated (any valid token).",
      { default: "Deny" },
    ),
  },
  { additionalProperties: false, description: "Who may call which routes." },
);

export const Assertion = Type.Object(
  {
    header: HeaderName("The header carrying the assertion.", { default: "X-Auth-Assertion" }),
    ttlSeconds: Type.Integer({
      minimum: 5,
      maximum: 3600,
      default: 60,
      description: "Lifetime of each assertion.",
    }),
  },
  {
    additionalProperties: false,
    description:
      "A short-lived JWT signed by the sidecar carrying the verified identity, so the app can prove the headers came through it. The public key is served on the admin port.",
  },
);

export const IdentityHeaders = Type.Object(
  {
    subject: HeaderName("Header carrying the token's `sub`.", { default: "X-Auth-Subject" }),
    roles: HeaderName("Header carrying the mapped roles, comma-separated, sorted.", {
      default: "X-Auth-Roles",
    }),
    scopes: HeaderName("Header carrying the token's scopes, space-separated.", { default: "X-Auth-Scopes" }),
    clientId: HeaderName("Header carrying the OAuth client (`client_id`, `azp` or `cid`).", {
      default: "X-Auth-Client-Id",
    }),
    issuer: HeaderName("Header carrying the token's `iss`.", { default: "X-Auth-Issuer" }),
    claims: Type.Optional(
      Type.Record(Type.String(), HeaderName("Header name."), {
        maxProperties: 32,
        description:
          "Further claims (name or dotted path) to header names. Only string and number values are sent.",
      }),
    ),
    remove: Type.Optional(
      Type.Array(HeaderName("A header name."), {
        maxItems: 64,
        description:
          "Further inbound headers removed before forwarding, in every spelling (case, `_` or `.` for `-`), e.g. headers an upstream gateway used to set.",
      }),
    ),
    steeringHeaders: Type.Array(HeaderName("A header name."), {
      maxItems: 64,
      default: [...STEERING_HEADERS],
      description:
        "Inbound headers that frameworks, middleware or proxies use to override the client address, the host, the path or the method, removed before forwarding in every spelling. The default lists the common ones; setting the field replaces the list (`remove` adds to it). X-Forwarded-For/-Proto/-Host are always set by the sidecar itself.",
    }),
    forwardAuthorization: Type.Boolean({
      default: false,
      description:
        "Forward the client's Authorization header to the app. Off by default: the app gets identity headers.",
    }),
    assertion: Type.Optional(Assertion),
  },
  {
    additionalProperties: false,
    default: {},
    description:
      "The verified identity handed to the app. Every client-supplied copy of these headers, in any spelling, is removed first.",
  },
);

export const RateLimit = Type.Object(
  {
    name: Name("A unique name, used in metrics."),
    rules: Type.Array(Name("A rule name."), {
      minItems: 1,
      maxItems: LIMITS.rules,
      description: "The rules whose requests this limit counts.",
    }),
    key: Type.String({
      pattern: "^(subject|clientId|ip|header:[A-Za-z0-9!#$%&'*+.^_`|~-]+)$",
      maxLength: LIMITS.header + 7,
      description:
        "What a bucket is kept per: subject | clientId (both per issuer: two IdPs' identical values never share a bucket) | ip (the socket's peer address, an IPv6 one by its /64; counted BEFORE the token is verified, so refused requests count too) | header:<Name> (as the client sent it). Limits other than ip count requests once authorised.",
    }),
    requestsPerSecond: Type.Integer({
      minimum: 1,
      maximum: 1_000_000,
      description: "Sustained rate per key.",
    }),
    burst: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 1_000_000,
        description: "Bucket size. Default: requestsPerSecond.",
      }),
    ),
    store: stringEnum(
      ["local", "redis"] as const,
      "local: per sidecar; redis: shared across replicas (the sidecar's Redis is operator configuration).",
      { default: "local" },
    ),
  },
  { additionalProperties: false, description: "A token-bucket rate limit; exceeding it answers 429." },
);

export const ResourceList = Type.Record(Type.String(), intOrString("A quantity."), {
  description: "Resource quantities, e.g. cpu: 50m, memory: 64Mi.",
});

export const Sidecar = Type.Object(
  {
    image: Type.Optional(
      Type.String({ maxLength: 512, description: "The proxy image. Default: the operator's." }),
    ),
    logLevel: Type.Optional(
      stringEnum(["debug", "info", "warn", "error"] as const, "The proxy's log level. Default: info."),
    ),
    adminPort: Port(
      "The admin listener: /healthz, /readyz, /metrics, and /jwks.json (the assertion's public key).",
      {
        default: 9901,
      },
    ),
    resources: Type.Optional(
      Type.Object(
        {
          requests: Type.Optional(ResourceList),
          limits: Type.Optional(ResourceList),
        },
        { additionalProperties: false, description: "Compute resources of the sidecar container." },
      ),
    ),
  },
  {
    additionalProperties: false,
    default: {},
    description: "Per-policy overrides of the operator's sidecar defaults.",
  },
);

export const NetworkPolicySettings = Type.Object(
  {
    enabled: Type.Boolean({
      default: false,
      description:
        "Own a NetworkPolicy per protected Deployment (portcullis-<deployment>) that admits ingress to its pods only on the sidecar's ports, so an app listening beyond loopback cannot be reached around the sidecar. Effective only where the cluster's network plugin enforces NetworkPolicy.",
    }),
    allowAdminPort: Type.Boolean({
      default: true,
      description:
        "Admit the sidecar's admin port (sidecar.adminPort: /metrics for Prometheus, /healthz, /readyz, /jwks.json) besides the listener. The kubelet's probes come from the node, which most network plugins admit regardless.",
    }),
  },
  {
    additionalProperties: false,
    description:
      "Ingress fencing of the protected pods. Applied once a Deployment's pods all run the sidecar; removed with the policy, when the Deployment leaves the selector, or when disabled.",
  },
);

export const AccessPolicySpec = Type.Object(
  {
    mode: stringEnum(
      MODES,
      `How refusals are carried out for every rule without its own mode, and for requests no rule matches. ${modeDescription}`,
      {
        default: "Enforce",
      },
    ),
    selector: LabelSelector,
    upstream: Upstream,
    listener: Listener,
    authentication: Authentication,
    authorization: Authorization,
    identityHeaders: IdentityHeaders,
    rateLimits: Type.Array(RateLimit, {
      maxItems: LIMITS.rateLimits,
      default: [],
      description: "Rate limits, each counting the requests of some rules.",
    }),
    sidecar: Sidecar,
    networkPolicy: Type.Optional(NetworkPolicySettings),
  },
  {
    additionalProperties: false,
    description: "Which Deployments are protected and how.",
    "x-kubernetes-validations": [
      {
        rule: "type(self.upstream.port) == string || self.upstream.port != self.listener.port",
        message: "listener.port must differ from upstream.port",
      },
      {
        rule: "self.sidecar.adminPort != self.listener.port",
        message: "sidecar.adminPort must differ from listener.port",
      },
    ],
  },
);

export const Condition = Type.Object(
  {
    type: Type.String({
      maxLength: 316,
      description: "The condition type: Accepted, Ready, Conflict, AppPortExposed.",
    }),
    status: stringEnum(["True", "False", "Unknown"] as const, "True, False, or Unknown."),
    reason: Type.String({ maxLength: 1024, description: "A CamelCase reason for the last transition." }),
    message: Type.String({ maxLength: 32768, description: "A human-readable message." }),
    observedGeneration: Type.Optional(
      Type.Integer({ minimum: 0, description: "The .metadata.generation the condition was set for." }),
    ),
    lastTransitionTime: Type.String({ format: "date-time", description: "When the status last changed." }),
  },
  { additionalProperties: false, description: "A condition, per the Kubernetes API conventions." },
);

export const TARGET_STATES = ["Protected", "Pending", "Conflict", "Error"] as const;

export const ExposedPort = Type.Object(
  {
    container: Type.String({ description: "The app container." }),
    port: Type.Optional(Type.Integer({ description: "The port, when the evidence names one." })),
    evidence: Type.String({
      description:
        "What in the pod template shows the bind: a server flag or variable (uvicorn --host 0.0.0.0), or a kubelet probe on the port.",
    }),
    fenced: Type.Optional(
      Type.Boolean({
        description:
          "The operator's NetworkPolicy admits ingress to these pods only on the sidecar's ports (where the network plugin enforces it).",
      }),
    ),
  },
  {
    additionalProperties: false,
    description:
      "An app port the pod template shows listening beyond loopback: reachable around the sidecar.",
  },
);

export const Target = Type.Object(
  {
    kind: Type.String({ description: "The workload kind: Deployment." }),
    name: Type.String({ description: "The workload name." }),
    state: stringEnum(TARGET_STATES, "Protected, Pending, Conflict, or Error."),
    message: Type.Optional(Type.String({ description: "Why the target is in this state." })),
    exposedPorts: Type.Optional(
      Type.Array(ExposedPort, {
        description:
          "App ports the pod template shows bound beyond loopback (server flags, env, kubelet probes); see the AppPortExposed condition.",
      }),
    ),
  },
  { additionalProperties: false, description: "A selected workload." },
);

export const AccessPolicyStatus = Type.Object(
  {
    observedGeneration: Type.Optional(Type.Integer({ description: "The generation last reconciled." })),
    conditions: Type.Optional(
      Type.Array(Condition, {
        description:
          "Accepted (the spec is valid), Ready (every target protected), Conflict, AppPortExposed (an app port reachable around the sidecar).",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
      }),
    ),
    targets: Type.Optional(Type.Array(Target, { description: "The Deployments this policy selects." })),
    protectedTargets: Type.Optional(Type.Integer({ description: "How many targets are protected." })),
  },
  { additionalProperties: false, description: "What the operator observed and did." },
);

export const ObjectMeta = Type.Object(
  {
    name: Type.Optional(Type.String()),
    namespace: Type.Optional(Type.String()),
    generation: Type.Optional(Type.Integer()),
    uid: Type.Optional(Type.String()),
    resourceVersion: Type.Optional(Type.String()),
    creationTimestamp: Type.Optional(Type.String()),
    deletionTimestamp: Type.Optional(Type.String()),
    labels: Type.Optional(Type.Record(Type.String(), Type.String())),
    annotations: Type.Optional(Type.Record(Type.String(), Type.String())),
    finalizers: Type.Optional(Type.Array(Type.String())),
  },
  { additionalProperties: true },
);

/** The document as `kubectl get -o yaml` prints it; metadata and status are carried, not validated. */
export const AccessPolicyDocument = Type.Object({
  apiVersion: Type.Literal(API_VERSION),
  kind: Type.Literal(KIND),
  metadata: Type.Optional(ObjectMeta),
  spec: AccessPolicySpec,
  status: Type.Optional(Type.Unknown()),
});

export type AccessPolicySpec = Static<typeof AccessPolicySpec>;
export type AccessPolicyStatus = Static<typeof AccessPolicyStatus>;
export type AccessPolicyDocument = Static<typeof AccessPolicyDocument>;
export type ObjectMeta = Static<typeof ObjectMeta>;
export type Issuer = Static<typeof Issuer>;
export type RoleMapping = Static<typeof RoleMapping>;
export type Rule = Static<typeof Rule>;
export type RateLimit = Static<typeof RateLimit>;
export type IdentityHeaders = Static<typeof IdentityHeaders>;
export type Condition = Static<typeof Condition>;
export type Target = Static<typeof Target>;
export type ExposedPort = Static<typeof ExposedPort>;
export type NetworkPolicySettings = Static<typeof NetworkPolicySettings>;
export type LabelSelector = Static<typeof LabelSelector>;
export type Method = (typeof METHODS)[number];
export type Mode = (typeof MODES)[number];
export type Algorithm = (typeof ALGORITHMS)[number];

/** An AccessPolicy as served by the API server. */
export interface AccessPolicy {
  apiVersion: typeof API_VERSION;
  kind: typeof KIND;
  metadata: ObjectMeta;
  spec: AccessPolicySpec;
  status?: AccessPolicyStatus;
}

export type { TSchema };
