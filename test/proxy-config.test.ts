// The proxy's command line and environment: pure parsing, no processes.
import { describe, expect, it } from "vitest";
import { USAGE as OPERATOR_USAGE } from "../operator/config.ts";
import {
  DEFAULT_DRAIN_SECONDS,
  type ProxyConfig,
  parseHostPort,
  readProxyConfig,
  redactedUrl,
  USAGE,
} from "../proxy/config.ts";

const required = ["--policy", "/etc/portcullis/policy.yaml", "--upstream", "http://127.0.0.1:8000"];

function config(argv: readonly string[], env: NodeJS.ProcessEnv = {}): ProxyConfig {
  const result = readProxyConfig(argv, env);
  if ("error" in result) throw new Error(`unexpected error: ${result.error}`);
  if ("help" in result) throw new Error("unexpected help");
  return result;
}

function errorOf(argv: readonly string[], env: NodeJS.ProcessEnv = {}): string {
  const result = readProxyConfig(argv, env);
  if (!("error" in result)) throw new Error(`expected an error, got ${JSON.stringify(result)}`);
  return result.error;
}

describe("readProxyConfig", () => {
  it("takes an optional Redis URL for store: redis rate limits, flag or PORTCULLIS_REDIS_URL", () => {
    expect(config(required).redisUrl).toBeUndefined();
    expect(config([...required, "--redis-url", "redis://10.0.0.5:6379"]).redisUrl).toBe(
      "redis://10.0.0.5:6379",
    );
    const fromEnv = config(required, { PORTCULLIS_REDIS_URL: "rediss://user:s3cret@cache.internal:6380/2" });
    expect(fromEnv.redisUrl).toBe("rediss://user:s3cret@cache.internal:6380/2");
    expect(redactedUrl(fromEnv.redisUrl!)).toBe("rediss://cache.internal:6380/2");
    for (const bad of ["http://redis:6379", "redis://", "redis://:s3cret@host:1/db", "no url at all"]) {
      const error = errorOf([...required, "--redis-url", bad]);
      expect(error).toMatch(/^--redis-url: /);
      // The value may carry a password: never echoed.
      expect(error).not.toContain("s3cret");
    }
    expect(errorOf(required, { PORTCULLIS_REDIS_URL: "tcp://x:1" })).toMatch(/^PORTCULLIS_REDIS_URL: /);
  });

  it("reads the required flags and leaves policy-supplied values undefined", () => {
    const c = config(required);
    expect(c.policyFile).toBe("/etc/portcullis/policy.yaml");
    expect(c.upstream.href).toBe("http://127.0.0.1:8000/");
    expect(c.listen).toBeUndefined();
    expect(c.admin).toBeUndefined();
    expect(c.logLevel).toBeUndefined();
    expect(c.logFormat).toBe("json");
    expect(c.drainSeconds).toBe(DEFAULT_DRAIN_SECONDS);
  });

  it("reads every option from PORTCULLIS_* variables", () => {
    const c = config([], {
      PORTCULLIS_POLICY: "/p.yaml",
      PORTCULLIS_UPSTREAM: "http://localhost:9000",
      PORTCULLIS_LISTEN: "127.0.0.1:18080",
      PORTCULLIS_ADMIN: ":19901",
      PORTCULLIS_LOG_FORMAT: "ecs",
      PORTCULLIS_LOG_LEVEL: "debug",
      PORTCULLIS_DRAIN_SECONDS: "7.5",
    });
    expect(c).toMatchObject({
      policyFile: "/p.yaml",
      listen: { host: "127.0.0.1", port: 18080 },
      admin: { host: "0.0.0.0", port: 19901 },
      logFormat: "ecs",
      logLevel: "debug",
      drainSeconds: 7.5,
    });
    expect(c.upstream.port).toBe("9000");
  });

  it("lets flags win over the environment", () => {
    const c = config([...required, "--log-level", "warn", "--listen", "[::1]:8081"], {
      PORTCULLIS_POLICY: "/other.yaml",
      PORTCULLIS_LOG_LEVEL: "debug",
      PORTCULLIS_LISTEN: "127.0.0.1:1",
    });
    expect(c.policyFile).toBe("/etc/portcullis/policy.yaml");
    expect(c.logLevel).toBe("warn");
    expect(c.listen).toEqual({ host: "::1", port: 8081 });
  });

  it("treats an empty variable as unset", () => {
    expect(config(required, { PORTCULLIS_LOG_FORMAT: "" }).logFormat).toBe("json");
  });

  it("answers --help with the usage text", () => {
    for (const flag of ["--help", "-h"]) {
      const result = readProxyConfig([flag], {});
      expect(result).toHaveProperty("help");
      expect((result as { help: string }).help).toContain("--upstream <url>");
    }
  });

  it("requires a policy and an upstream", () => {
    expect(errorOf(["--upstream", "http://127.0.0.1:8000"])).toMatch(/--policy/);
    expect(errorOf(["--policy", "p.yaml"])).toMatch(/--upstream/);
  });

  it("rejects unknown flags and positional arguments", () => {
    expect(errorOf([...required, "--listne", "1"])).toMatch(/listne/);
    expect(errorOf([...required, "extra"])).toMatch(/extra/);
  });

  it.each([
    ["https://127.0.0.1:8000", /plain http/],
    ["http://10.0.0.5:8000", /loopback/],
    ["http://example.com:8000", /loopback/],
    ["http://0.0.0.0:8000", /loopback/],
    ["http://127.0.0.1", /explicit port/],
    ["http://127.0.0.1:8000/api", /explicit port/],
    ["http://127.0.0.1:8000?x=1", /explicit port/],
    ["http://user:pw@127.0.0.1:8000", /credentials/],
    ["127.0.0.1:8000", /not a URL|plain http/],
  ])("rejects the upstream %s", (upstream, message) => {
    const error = errorOf(["--policy", "p.yaml", "--upstream", upstream]);
    expect(error).toMatch(message);
    expect(error).toContain("--upstream");
  });

  it.each([
    "http://127.0.0.1:8000",
    "http://127.0.0.1:8000/",
    "http://127.1.2.3:80",
    "http://[::1]:8000",
    "http://localhost:8000",
  ])("accepts the loopback upstream %s", (upstream) => {
    expect(config(["--policy", "p.yaml", "--upstream", upstream]).upstream.protocol).toBe("http:");
  });

  it("names the variable when an environment value is wrong", () => {
    expect(errorOf(required, { PORTCULLIS_LOG_FORMAT: "text" })).toMatch(
      /PORTCULLIS_LOG_FORMAT.*json or ecs/,
    );
    expect(errorOf(required, { PORTCULLIS_LOG_LEVEL: "verbose" })).toMatch(/PORTCULLIS_LOG_LEVEL/);
    expect(errorOf(required, { PORTCULLIS_DRAIN_SECONDS: "-1" })).toMatch(/PORTCULLIS_DRAIN_SECONDS/);
    expect(errorOf(required, { PORTCULLIS_DRAIN_SECONDS: "soon" })).toMatch(/PORTCULLIS_DRAIN_SECONDS/);
    expect(errorOf(required, { PORTCULLIS_ADMIN: "9901x" })).toMatch(/PORTCULLIS_ADMIN/);
  });
});

describe("parseHostPort", () => {
  it.each([
    ["127.0.0.1:8080", { host: "127.0.0.1", port: 8080 }],
    ["0.0.0.0:0", { host: "0.0.0.0", port: 0 }],
    [":9901", { host: "0.0.0.0", port: 9901 }],
    ["9901", { host: "0.0.0.0", port: 9901 }],
    ["[::]:8080", { host: "::", port: 8080 }],
    ["localhost:8080", { host: "localhost", port: 8080 }],
  ])("parses %s", (text, expected) => {
    expect(parseHostPort(text)).toEqual(expected);
  });

  it.each(["127.0.0.1", "127.0.0.1:65536", "::1:8080", "[zz]:80", "host name:80", "a:b", ""])(
    "rejects %s",
    (text) => {
      expect(parseHostPort(text)).toHaveProperty("error");
    },
  );
});

describe("--help", () => {
  /** Each option's lines of a usage text: from its "  --name" line to the next option's. */
  function optionBlocks(usage: string): Map<string, string> {
    const blocks = new Map<string, string>();
    let current: string | undefined;
    for (const line of usage.split("\n")) {
      const option = /^ {2}--([a-z-]+)/.exec(line)?.[1];
      if (option !== undefined) current = option;
      else if (/^ {2}-/.test(line) || line.trim() === "") current = undefined;
      if (current !== undefined) blocks.set(current, `${blocks.get(current) ?? ""}${line}\n`);
    }
    return blocks;
  }

  it.each([
    ["portcullis-proxy", USAGE],
    ["portcullis-operator", OPERATOR_USAGE],
  ])("%s names each option's environment variable under that option, not another's", (_, usage) => {
    const blocks = optionBlocks(usage);
    expect(blocks.size).toBeGreaterThan(5);
    for (const [option, block] of blocks) {
      const named = [...block.matchAll(/env (PORTCULLIS_[A-Z_]+)/g)].map((m) => m[1]);
      expect(named, option).toEqual([`PORTCULLIS_${option.toUpperCase().replaceAll("-", "_")}`]);
    }
  });
});
