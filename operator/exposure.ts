// Whether an app container listens beyond loopback, read from its pod template alone: the command and
// args (after the kubelet's $(VAR) expansion, and inside `sh -c` scripts), the environment the ASGI
// servers read, and the kubelet's own probes (they connect to the pod IP, so an app they reach is
// reachable from other pods too). Such a port is served without passing the sidecar. Pure: only
// positive evidence is reported; a bind the template does not show (a config file, code) is not.

import type { V1Container, V1EnvVar, V1PodSpec, V1Probe } from "@kubernetes/client-node";
import type { ExposedPort } from "../policy/schema.ts";
import { compare } from "./config.ts";
import { appContainers } from "./sidecar.ts";

/** Stands for `fieldRef: status.podIP` in an expanded value: an address beyond loopback by definition. */
const POD_IP = "<pod IP>";

/**
 * Every port of the app containers (not the sidecar) that the template shows listening beyond
 * loopback, one entry per container and port (evidence joined), sorted. `sidecarPorts` are left out
 * of probe evidence: a probe on them reaches the sidecar, which shares the pod's network.
 */
export function exposedAppPorts(pod: V1PodSpec | undefined, sidecarPorts: readonly number[]): ExposedPort[] {
  const found = appContainers(pod).flatMap((c) => [
    ...commandEvidence(c),
    ...probeEvidence(c, new Set(sidecarPorts)),
  ]);
  const merged = new Map<string, ExposedPort>();
  for (const f of found) {
    const key = `${f.container}\u0000${f.port ?? ""}`;
    const seen = merged.get(key);
    if (seen === undefined) merged.set(key, { ...f });
    else if (!seen.evidence.split("; ").includes(f.evidence))
      seen.evidence = `${seen.evidence}; ${f.evidence}`;
  }
  return [...merged.values()].sort(
    (a, b) => compare(a.container, b.container) || (a.port ?? 0) - (b.port ?? 0),
  );
}

// --- the command --------------------------------------------------------------------------------

type Env = ReadonlyMap<string, string>;

/** Literal env values (kubelet-expanded against the earlier ones) and the pod IP from the downward API. */
function literalEnv(vars: readonly V1EnvVar[] | undefined): Map<string, string> {
  const env = new Map<string, string>();
  for (const v of vars ?? []) {
    const field = v.valueFrom?.fieldRef?.fieldPath;
    if (v.value !== undefined) env.set(v.name, expandKubelet(v.value, env));
    else if (field === "status.podIP" || field === "status.podIPs") env.set(v.name, POD_IP);
    else env.delete(v.name);
  }
  return env;
}

/** The kubelet's expansion of command, args and env values: `$(VAR)` when VAR is defined, `$$` -> `$`. */
function expandKubelet(text: string, env: Env): string {
  return text.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)/g, (whole, name: string | undefined) => {
    if (name === undefined) return "$";
    return env.get(name) ?? whole;
  });
}

function commandEvidence(c: V1Container): ExposedPort[] {
  const env = literalEnv(c.env);
  const argv = [...(c.command ?? []), ...(c.args ?? [])].map((t) => expandKubelet(t, env));
  const script = shellScript(argv);
  const invocations = script === undefined ? [{ argv, env }] : shellCommands(script, env);
  let recognised = false;
  const found: ExposedPort[] = [];
  for (const invocation of invocations) {
    const server = findServer(invocation.argv, invocation.env);
    if (server === undefined) continue;
    recognised = true;
    for (const bind of server) {
      if (hostScope(bind.host) === "beyond")
        found.push({ container: c.name, ...portField(bind.port), evidence: bind.evidence });
    }
  }
  // No server in the command (the image's entrypoint runs it): the variables the servers and the
  // common FastAPI images read still say where it binds.
  if (!recognised && argv.length === 0) {
    for (const name of ENTRYPOINT_HOST_VARIABLES) {
      const value = env.get(name);
      if (value === undefined) continue;
      const bind = name === "BIND" ? parseBindAddress(value, 80) : { host: value, port: undefined };
      if (bind !== undefined && hostScope(bind.host) === "beyond")
        found.push({ container: c.name, ...portField(bind.port), evidence: `env ${name}=${value}` });
    }
  }
  return found;
}

/** Read by uvicorn and granian themselves, or by the start scripts of common FastAPI images. */
const ENTRYPOINT_HOST_VARIABLES = ["UVICORN_HOST", "GRANIAN_HOST", "HOST", "BIND"] as const;

const portField = (port: number | undefined) => (port === undefined ? {} : { port });

interface Bind {
  host: string;
  port: number | undefined;
  evidence: string;
}

/** `sh -c 'script'` (any common shell, flags such as `-ec` before it): the script, else undefined. */
function shellScript(argv: readonly string[]): string | undefined {
  const shell = argv[0];
  if (shell === undefined || !/^(sh|bash|dash|ash|zsh|busybox)$/.test(basename(shell))) return undefined;
  for (let i = 1; i < argv.length; i++) {
    const token = argv[i] ?? "";
    if (/^-[a-zA-Z]*c[a-zA-Z]*$/.test(token)) return argv[i + 1];
    if (!token.startsWith("-") && token !== "sh") return undefined;
  }
  return undefined;
}

/**
 * The simple commands of a shell script: split on `;`, `&`, `|`, newlines; words split as the shell
 * does for quotes and backslashes; `$VAR`, `${VAR}`, `${VAR:-default}` expanded from the environment,
 * `export NAME=value` and leading `NAME=value` assignments included. Unknown variables stay as written.
 */
export function shellCommands(script: string, env: Env): { argv: string[]; env: Env }[] {
  const scope = new Map(env);
  const commands: { argv: string[]; env: Env }[] = [];
  for (const words of splitShell(script)) {
    const local = new Map(scope);
    const argv: string[] = [];
    let exported = false;
    for (const raw of words) {
      const word = expandShell(raw, local);
      const assignment = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/s.exec(word);
      if (argv.length === 0 && word === "export") {
        exported = true;
        continue;
      }
      if (assignment !== null && (argv.length === 0 || exported)) {
        local.set(assignment[1] as string, assignment[2] as string);
        if (exported) scope.set(assignment[1] as string, assignment[2] as string);
        continue;
      }
      argv.push(word);
    }
    // A command of assignments only sets shell variables for the rest of the script.
    if (argv.length === 0) for (const [k, v] of local) scope.set(k, v);
    else commands.push({ argv, env: local });
  }
  return commands;
}

/** Words of each simple command; quotes are kept (as `'`/`"` marks) for expandShell to honour. */
function splitShell(script: string): string[][] {
  const commands: string[][] = [];
  let words: string[] = [];
  let word = "";
  let inWord = false;
  const endWord = () => {
    if (inWord) words.push(word);
    word = "";
    inWord = false;
  };
  const endCommand = () => {
    endWord();
    if (words.length > 0) commands.push(words);
    words = [];
  };
  for (let i = 0; i < script.length; i++) {
    const ch = script[i] as string;
    if (ch === "'") {
      const end = script.indexOf("'", i + 1);
      const stop = end === -1 ? script.length : end;
      // Single-quoted text is literal: escape its `$` so expansion leaves it alone.
      word += script.slice(i + 1, stop).replaceAll("$", "\u0000");
      inWord = true;
      i = stop;
    } else if (ch === '"') {
      i++;
      for (; i < script.length && script[i] !== '"'; i++) {
        if (script[i] === "\\" && i + 1 < script.length && '"\\$`'.includes(script[i + 1] as string)) {
          i++;
          word += script[i] === "$" ? "\u0000" : script[i];
        } else word += script[i];
      }
      inWord = true;
    } else if (ch === "\\" && i + 1 < script.length) {
      i++;
      if (script[i] !== "\n") {
        word += script[i] === "$" ? "\u0000" : script[i];
        inWord = true;
      }
    } else if (ch === "#" && !inWord) {
      while (i + 1 < script.length && script[i + 1] !== "\n") i++;
    } else if (";&|\n()".includes(ch)) {
      endCommand();
    } else if (/\s/.test(ch)) {
      endWord();
    } else {
      word += ch;
      inWord = true;
    }
  }
  endCommand();
  return commands;
}

/** `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}` from `env`; unknown ones stay as written. */
function expandShell(word: string, env: Env): string {
  const expanded = word.replace(
    /\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)/g,
    (whole, braced: string | undefined, op: string | undefined, fallback: string | undefined, bare) => {
      const name = (braced ?? bare) as string;
      const value = env.get(name);
      if (op === ":-" && (value === undefined || value === "")) return fallback ?? "";
      if (op === "-" && value === undefined) return fallback ?? "";
      return value ?? whole;
    },
  );
  return expanded.replaceAll("\u0000", "$");
}

// --- the servers --------------------------------------------------------------------------------

type ServerParser = (args: readonly string[], env: Env, name: string) => Bind[];

const SERVERS: Readonly<Record<string, ServerParser>> = {
  uvicorn: (args, env) => hostPortServer("uvicorn", args, env, "UVICORN", ["--uds", "--fd"]),
  granian: (args, env) => hostPortServer("granian", args, env, "GRANIAN", ["--uds"]),
  fastapi: fastapiCli,
  gunicorn: gunicorn,
  hypercorn: hypercorn,
  daphne: daphne,
};

/** Words before the server that mean it is being installed or printed, not run. */
const NOT_RUNNING = new Set(["install", "add", "echo", "printf", "which", "show", "download"]);

/** The binds of the first ASGI server this argv runs (`uvicorn ...`, `python -m uvicorn ...`, wrapped). */
function findServer(argv: readonly string[], inherited: Env): Bind[] | undefined {
  const env = new Map(inherited);
  for (let i = 0; i < argv.length; i++) {
    const token = argv[i] as string;
    if (NOT_RUNNING.has(token)) return undefined;
    // `env NAME=value server ...` and the like.
    const assignment = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/s.exec(token);
    if (assignment !== null) {
      env.set(assignment[1] as string, assignment[2] as string);
      continue;
    }
    const module = token === "-m" ? argv[i + 1] : undefined;
    const name = module ?? basename(token);
    const parse = Object.hasOwn(SERVERS, name) ? SERVERS[name] : undefined;
    if (parse !== undefined) return parse(argv.slice(module === undefined ? i + 1 : i + 2), env, name);
  }
  return undefined;
}

/** An option's values: `--name value`, `--name=value`, and for short ones `-bvalue`. */
function optionValues(args: readonly string[], names: readonly string[]): string[] {
  const values: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] as string;
    for (const name of names) {
      if (arg === name && i + 1 < args.length) values.push(args[++i] as string);
      else if (name.startsWith("--") && arg.startsWith(`${name}=`)) values.push(arg.slice(name.length + 1));
      else if (!name.startsWith("--") && arg.startsWith(name) && arg.length > name.length)
        values.push(arg.slice(name.length).replace(/^=/, ""));
    }
  }
  return values;
}

const hasOption = (args: readonly string[], names: readonly string[]) =>
  args.some((a) => names.some((n) => a === n || a.startsWith(`${n}=`)));

const toPort = (text: string | undefined): number | undefined => {
  if (text === undefined || !/^\d{1,5}$/.test(text)) return undefined;
  const port = Number(text);
  return port >= 1 && port <= 65535 ? port : undefined;
};

/** uvicorn and granian: `--host` (default 127.0.0.1, or <PREFIX>_HOST), `--port` (8000, <PREFIX>_PORT). */
function hostPortServer(
  name: string,
  args: readonly string[],
  env: Env,
  prefix: string,
  socketOptions: readonly string[],
): Bind[] {
  // A Unix socket or an inherited descriptor: no TCP port of its own.
  if (hasOption(args, socketOptions)) return [];
  const hostFlag = optionValues(args, ["--host"]).at(-1);
  const portFlag = optionValues(args, ["--port"]).at(-1);
  const port = toPort(portFlag ?? env.get(`${prefix}_PORT`) ?? "8000");
  if (hostFlag !== undefined) return [{ host: hostFlag, port, evidence: `${name} --host ${hostFlag}` }];
  const hostEnv = env.get(`${prefix}_HOST`);
  if (hostEnv !== undefined)
    return [{ host: hostEnv, port, evidence: `${name} with ${prefix}_HOST=${hostEnv}` }];
  return [{ host: "127.0.0.1", port, evidence: `${name} (default host 127.0.0.1)` }];
}

/** The FastAPI CLI: `fastapi run` binds 0.0.0.0 unless told otherwise, `fastapi dev` 127.0.0.1. */
function fastapiCli(args: readonly string[]): Bind[] {
  const command = args.find((a) => !a.startsWith("-"));
  const invocation = command === undefined ? "fastapi" : `fastapi ${command}`;
  const hostFlag = optionValues(args, ["--host"]).at(-1);
  const port = toPort(optionValues(args, ["--port"]).at(-1) ?? "8000");
  if (hostFlag !== undefined) return [{ host: hostFlag, port, evidence: `${invocation} --host ${hostFlag}` }];
  if (command === "run")
    return [{ host: "0.0.0.0", port, evidence: "fastapi run (its default host is 0.0.0.0)" }];
  return [{ host: "127.0.0.1", port, evidence: `${invocation} (default host 127.0.0.1)` }];
}

/**
 * A gunicorn/hypercorn bind address: `HOST`, `HOST:PORT`, `:PORT` (every interface), `[V6]:PORT`,
 * `tcp://...`; `unix:` and `fd://` have no TCP port (undefined).
 */
export function parseBindAddress(
  text: string,
  defaultPort: number,
): { host: string; port: number | undefined } | undefined {
  if (/^unix:/.test(text) || text.startsWith("fd://")) return undefined;
  const address = text.replace(/^tcp:\/\//, "");
  const v6 = /^\[([^\]]*)\](?::(.*))?$/.exec(address);
  if (v6 !== null) return { host: v6[1] as string, port: toPort(v6[2] ?? String(defaultPort)) };
  const colon = address.lastIndexOf(":");
  // More than one colon without brackets: a bare IPv6 address.
  if (colon === -1 || address.indexOf(":") !== colon) return { host: address, port: defaultPort };
  return { host: address.slice(0, colon), port: toPort(address.slice(colon + 1)) };
}

/**
 * gunicorn: every `-b/--bind` (the command line over GUNICORN_CMD_ARGS); none given, its default is
 * 127.0.0.1:8000, or 0.0.0.0:$PORT when PORT is set.
 */
function gunicorn(args: readonly string[], env: Env): Bind[] {
  const fromArgs = optionValues(args, ["--bind", "-b"]);
  const cmdArgs = env.get("GUNICORN_CMD_ARGS");
  const fromEnv = cmdArgs === undefined ? [] : optionValues(cmdArgs.split(/\s+/), ["--bind", "-b"]);
  const binds = fromArgs.length > 0 ? fromArgs : fromEnv;
  const source = fromArgs.length > 0 ? "gunicorn --bind" : "gunicorn with GUNICORN_CMD_ARGS --bind";
  if (binds.length > 0) return bindList(binds, source);
  const port = env.get("PORT");
  if (port !== undefined)
    return [
      {
        host: "0.0.0.0",
        port: toPort(port),
        evidence: `gunicorn with PORT=${port} (its default bind is then 0.0.0.0:$PORT)`,
      },
    ];
  return [{ host: "127.0.0.1", port: 8000, evidence: "gunicorn (default bind 127.0.0.1:8000)" }];
}

/** hypercorn: every `-b/--bind` (and the insecure and QUIC binds); default 127.0.0.1:8000. */
function hypercorn(args: readonly string[]): Bind[] {
  const binds = optionValues(args, ["--bind", "-b", "--insecure-bind", "--quic-bind"]);
  if (binds.length > 0) return bindList(binds, "hypercorn --bind");
  return [{ host: "127.0.0.1", port: 8000, evidence: "hypercorn (default bind 127.0.0.1:8000)" }];
}

function bindList(binds: readonly string[], source: string): Bind[] {
  return binds.flatMap((text) => {
    const bind = parseBindAddress(text, 8000);
    return bind === undefined ? [] : [{ ...bind, evidence: `${source} ${text}` }];
  });
}

/** daphne: `-b/--bind` host and `-p/--port`, or `-e/--endpoint tcp:port=N[:interface=H]`; default 127.0.0.1:8000. */
function daphne(args: readonly string[]): Bind[] {
  const endpoints = optionValues(args, ["--endpoint", "-e"]).flatMap((text): Bind[] => {
    const parts = text.split(":");
    if (parts[0] !== "tcp" && parts[0] !== "tcp6") return [];
    const field = (key: string) =>
      parts.find((p) => p.startsWith(`${key}=`))?.slice(key.length + 1) ?? parts.find((p) => /^\d+$/.test(p));
    const iface = parts.find((p) => p.startsWith("interface="))?.slice("interface=".length);
    // Twisted's tcp endpoint listens on every interface unless one is named.
    return [
      {
        host: iface ?? (parts[0] === "tcp6" ? "::" : "0.0.0.0"),
        port: toPort(field("port")),
        evidence: `daphne --endpoint ${text}`,
      },
    ];
  });
  if (hasOption(args, ["--unix-socket", "-u", "--fd"]) && endpoints.length === 0) return [];
  const hostFlag = optionValues(args, ["--bind", "-b"]).at(-1);
  const port = toPort(optionValues(args, ["--port", "-p"]).at(-1) ?? "8000");
  if (hostFlag !== undefined)
    return [...endpoints, { host: hostFlag, port, evidence: `daphne --bind ${hostFlag}` }];
  if (endpoints.length > 0) return endpoints;
  return [{ host: "127.0.0.1", port, evidence: "daphne (default host 127.0.0.1)" }];
}

// --- addresses ----------------------------------------------------------------------------------

/**
 * Where a bind address listens: `loopback` (127.0.0.0/8, ::1, localhost), `unknown` (an unexpanded
 * variable), `beyond` (0.0.0.0, ::, the empty host, the pod IP, any other address or name).
 */
export function hostScope(host: string): "loopback" | "beyond" | "unknown" {
  if (host === POD_IP) return "beyond";
  if (host.includes("$")) return "unknown";
  const h = host.replace(/^\[(.*)\]$/, "$1").toLowerCase();
  if (h === "localhost" || h.endsWith(".localhost") || h === "ip6-localhost" || h === "ip6-loopback")
    return "loopback";
  if (/^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h) || /^::ffff:127\./.test(h)) return "loopback";
  if (/^(0{0,4}:){2,7}0{0,3}1$/.test(h) || h === "::1") return "loopback";
  return "beyond";
}

function basename(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

// --- the kubelet's probes -----------------------------------------------------------------------

const PROBES = ["startupProbe", "readinessProbe", "livenessProbe"] as const;

/**
 * A probe the kubelet sends to the pod IP (httpGet or tcpSocket without `host`, grpc): what it reaches
 * must listen beyond loopback. Exec probes run inside the container and show nothing.
 */
function probeEvidence(c: V1Container, sidecarPorts: ReadonlySet<number>): ExposedPort[] {
  const found: ExposedPort[] = [];
  for (const kind of PROBES) {
    const probe: V1Probe | undefined = c[kind];
    const target = probe?.httpGet ?? probe?.tcpSocket;
    const handler = probe?.httpGet
      ? "httpGet"
      : probe?.tcpSocket
        ? "tcpSocket"
        : probe?.grpc
          ? "grpc"
          : undefined;
    if (probe === undefined || handler === undefined) continue;
    // An explicit host is the kubelet connecting elsewhere (its own node for 127.0.0.1): not this pod.
    if (target?.host) continue;
    const written = (target?.port ?? probe.grpc?.port) as number | string | undefined;
    const port =
      typeof written === "number"
        ? written
        : ((c.ports ?? []).find((p) => p.name === written)?.containerPort ?? toPort(written));
    if (port === undefined || sidecarPorts.has(port)) continue;
    const path = probe.httpGet?.path ? ` ${probe.httpGet.path}` : "";
    const named = typeof written === "string" && String(port) !== written ? ` (${written})` : "";
    found.push({
      container: c.name,
      port,
      evidence: `${kind} ${handler}${path} on port ${port}${named}, sent by the kubelet to the pod IP`,
    });
  }
  return found;
}
