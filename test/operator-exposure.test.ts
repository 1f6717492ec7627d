// The app-port exposure check, pure: pod templates in, the app ports they show bound beyond loopback
// out. Many shapes of the same few servers (uvicorn, gunicorn, the FastAPI CLI, hypercorn, granian,
// daphne), as written directly, through `python -m`, wrappers, `sh -c` scripts and the kubelet's
// $(VAR) expansion, plus the kubelet's probes.

import type { V1Container, V1PodSpec } from "@kubernetes/client-node";
import { describe, expect, it } from "vitest";
import { exposedAppPorts, hostScope, parseBindAddress, shellCommands } from "../operator/exposure.ts";

const SIDECAR_PORTS = [8080, 9901];

function pod(app: Partial<V1Container>, more: V1Container[] = []): V1PodSpec {
  return { containers: [{ name: "app", image: "orders-api:1", ...app }, ...more] };
}

/** The ports reported for a single container "app" given as command + args (or an argv). */
function exposed(command: string[], changes: Partial<V1Container> = {}) {
  return exposedAppPorts(pod({ command, ...changes }), SIDECAR_PORTS);
}

const ports = (command: string[], changes: Partial<V1Container> = {}) =>
  exposed(command, changes).map((e) => e.port);

describe("uvicorn", () => {
  it.each([
    [["uvicorn", "app:app", "--host", "0.0.0.0"], 8000],
    [["uvicorn", "app:app", "--host=0.0.0.0", "--port=9000"], 9000],
    [["python", "-m", "uvicorn", "app:app", "--host", "0.0.0.0", "--port", "8001"], 8001],
    [["/usr/local/bin/python3.12", "-m", "uvicorn", "main:app", "--host", "::"], 8000],
    [["/venv/bin/uvicorn", "main:app", "--host", "[::]", "--proxy-headers"], 8000],
    [["uv", "run", "uvicorn", "main:app", "--host", "0.0.0.0"], 8000],
    [["poetry", "run", "uvicorn", "main:app", "--host", "0.0.0.0"], 8000],
    [["opentelemetry-instrument", "uvicorn", "main:app", "--host", "0.0.0.0"], 8000],
    [["tini", "--", "uvicorn", "main:app", "--host", "10.1.2.3"], 8000],
    [["uvicorn", "main:app", "--host", "orders.internal"], 8000],
  ])("%j binds beyond loopback on %d", (command, port) => {
    expect(ports(command)).toEqual([port]);
  });

  it.each([
    [["uvicorn", "app:app"]],
    [["uvicorn", "app:app", "--host", "127.0.0.1", "--port", "8000"]],
    [["python", "-m", "uvicorn", "app:app", "--host", "localhost"]],
    [["uvicorn", "app:app", "--host", "::1"]],
    [["uvicorn", "app:app", "--host", "[::1]"]],
    [["uvicorn", "app:app", "--host", "127.0.0.2"]],
    // A Unix socket or an inherited descriptor is no TCP port.
    [["uvicorn", "app:app", "--host", "0.0.0.0", "--uds", "/tmp/app.sock"]],
    [["uvicorn", "app:app", "--fd", "3"]],
    // The last --host wins, as in click.
    [["uvicorn", "app:app", "--host", "0.0.0.0", "--host", "127.0.0.1"]],
    // Installing is not running.
    [["pip", "install", "uvicorn"]],
  ])("%j stays on loopback", (command) => {
    expect(exposed(command)).toEqual([]);
  });

  it("reads UVICORN_HOST and UVICORN_PORT, with the flag over the variable", () => {
    const env = [
      { name: "UVICORN_HOST", value: "0.0.0.0" },
      { name: "UVICORN_PORT", value: "8500" },
    ];
    expect(exposed(["uvicorn", "app:app"], { env })).toEqual([
      { container: "app", port: 8500, evidence: "uvicorn with UVICORN_HOST=0.0.0.0" },
    ]);
    expect(exposed(["uvicorn", "app:app", "--host", "127.0.0.1"], { env })).toEqual([]);
  });

  it("names the container, the port and the flag as written", () => {
    expect(exposed(["uvicorn", "app:app", "--host", "0.0.0.0", "--port", "8000"])).toEqual([
      { container: "app", port: 8000, evidence: "uvicorn --host 0.0.0.0" },
    ]);
  });
});

describe("the kubelet's $(VAR) expansion", () => {
  it("expands defined variables in command and args, leaves undefined ones (unknown, not reported)", () => {
    const env = [
      { name: "HOST", value: "0.0.0.0" },
      { name: "PORT", value: "8100" },
    ];
    expect(ports(["uvicorn"], { args: ["app:app", "--host", "$(HOST)", "--port", "$(PORT)"], env })).toEqual([
      8100,
    ]);
    expect(exposed(["uvicorn", "app:app", "--host", "$(NOT_SET)"])).toEqual([]);
    // $$ escapes: a literal "$(HOST)" that uvicorn would fail to bind, not 0.0.0.0.
    expect(exposed(["uvicorn", "app:app", "--host", "$$(HOST)"], { env })).toEqual([]);
  });

  it("counts the pod IP from the downward API as beyond loopback", () => {
    const env = [{ name: "POD_IP", valueFrom: { fieldRef: { fieldPath: "status.podIP" } } }];
    expect(exposed(["uvicorn", "app:app", "--host", "$(POD_IP)"], { env })).toEqual([
      { container: "app", port: 8000, evidence: "uvicorn --host <pod IP>" },
    ]);
  });

  it("expands env values against the variables defined before them", () => {
    const env = [
      { name: "ADDR", value: "0.0.0.0" },
      { name: "LISTEN", value: "$(ADDR):8200" },
    ];
    expect(ports(["gunicorn", "app:app", "-b", "$(LISTEN)"], { env })).toEqual([8200]);
  });
});

describe("sh -c scripts", () => {
  it.each([
    [["sh", "-c", "uvicorn app:app --host 0.0.0.0 --port 8000"], 8000],
    [["/bin/bash", "-c", "exec uvicorn app:app --host 0.0.0.0"], 8000],
    [["sh", "-ec", "alembic upgrade head && exec uvicorn app:app --host 0.0.0.0 --port 8300"], 8300],
    // biome-ignore lint/suspicious/noTemplateCurlyInString: shell syntax, not a template
    [["sh", "-c", 'exec uvicorn app:app --host "$HOST" --port ${PORT:-8400}'], 8400],
    [["sh", "-c", "export HOST=0.0.0.0; uvicorn app:app --host $HOST"], 8000],
    [["sh", "-c", "UVICORN_HOST=0.0.0.0 uvicorn app:app"], 8000],
    [["sh", "-c", "env UVICORN_HOST=:: python -m uvicorn app:app"], 8000],
    [["sh", "-c", "uvicorn app:app \\\n  --host 0.0.0.0 \\\n  --port 8500"], 8500],
    [["sh", "-c", "gunicorn app:app -k uvicorn.workers.UvicornWorker -b 0.0.0.0:8600 2>&1"], 8600],
  ])("%j binds beyond loopback on %d", (command, port) => {
    expect(ports(command, { env: [{ name: "HOST", value: "0.0.0.0" }] })).toEqual([port]);
  });

  it.each([
    [["sh", "-c", "uvicorn app:app --host 127.0.0.1"]],
    [["sh", "-c", "echo uvicorn --host 0.0.0.0; uvicorn app:app"]],
    [["sh", "-c", "# uvicorn --host 0.0.0.0\nuvicorn app:app"]],
    // Single quotes keep $HOST literal: an unknown host, not reported.
    [["sh", "-c", "uvicorn app:app --host '$HOST'"]],
    // biome-ignore lint/suspicious/noTemplateCurlyInString: shell syntax, not a template
    [["sh", "-c", "uvicorn app:app --host ${UNSET_HOST}"]],
  ])("%j is not reported", (command) => {
    expect(exposed(command, { env: [{ name: "HOST", value: "0.0.0.0" }] })).toEqual([]);
  });

  it("splits commands and words as the shell does", () => {
    expect(
      shellCommands(`A=1 run "x y" 'a$B' \\$C; export D=2 && echo "$D"|cat`, new Map([["B", "b"]])).map(
        (c) => c.argv,
      ),
    ).toEqual([["run", "x y", "a$B", "$C"], ["echo", "2"], ["cat"]]);
  });
});

describe("the FastAPI CLI", () => {
  it("fastapi run binds 0.0.0.0 by default; fastapi dev binds 127.0.0.1", () => {
    expect(exposed(["fastapi", "run", "app/main.py"])).toEqual([
      { container: "app", port: 8000, evidence: "fastapi run (its default host is 0.0.0.0)" },
    ]);
    expect(ports(["fastapi", "run", "--port", "80"])).toEqual([80]);
    expect(exposed(["fastapi", "run", "--host", "127.0.0.1"])).toEqual([]);
    expect(exposed(["fastapi", "dev", "main.py"])).toEqual([]);
    expect(ports(["fastapi", "dev", "main.py", "--host", "0.0.0.0"])).toEqual([8000]);
    expect(exposed(["pip", "install", "fastapi[standard]"])).toEqual([]);
  });
});

describe("gunicorn and hypercorn binds", () => {
  it.each([
    [["gunicorn", "app:app", "-b", "0.0.0.0:8000"], [8000]],
    [["gunicorn", "app:app", "-b0.0.0.0:8001"], [8001]],
    [["gunicorn", "app:app", "--bind", ":8002"], [8002]],
    [["gunicorn", "app:app", "--bind=[::]:8003"], [8003]],
    [["gunicorn", "app:app", "--bind", "tcp://0.0.0.0:8004"], [8004]],
    [["gunicorn", "app:app", "-b", "127.0.0.1:8000", "-b", "0.0.0.0:9100"], [9100]],
    [["python", "-m", "gunicorn", "app:app", "-b", "0.0.0.0"], [8000]],
    [["hypercorn", "app:app", "--bind", "0.0.0.0:8005"], [8005]],
    [
      ["hypercorn", "app:app", "-b", "[::]:8006", "--insecure-bind", "0.0.0.0:8007"],
      [8006, 8007],
    ],
  ])("%j binds beyond loopback on %j", (command, expected) => {
    expect(ports(command)).toEqual(expected);
  });

  it.each([
    [["gunicorn", "app:app"]],
    [["gunicorn", "app:app", "-b", "127.0.0.1:8000"]],
    [["gunicorn", "app:app", "-b", "unix:/run/app.sock"]],
    [["gunicorn", "app:app", "--bind", "fd://3"]],
    [["hypercorn", "app:app"]],
    [["hypercorn", "app:app", "--bind", "localhost:8000"]],
  ])("%j stays on loopback", (command) => {
    expect(exposed(command)).toEqual([]);
  });

  it("follows gunicorn's defaults: GUNICORN_CMD_ARGS, then 0.0.0.0:$PORT when PORT is set", () => {
    expect(
      ports(["gunicorn", "app:app"], {
        env: [{ name: "GUNICORN_CMD_ARGS", value: "--bind=0.0.0.0:8700 -w 2" }],
      }),
    ).toEqual([8700]);
    expect(exposed(["gunicorn", "app:app"], { env: [{ name: "PORT", value: "8800" }] })).toEqual([
      {
        container: "app",
        port: 8800,
        evidence: "gunicorn with PORT=8800 (its default bind is then 0.0.0.0:$PORT)",
      },
    ]);
    // The command line over the variable.
    expect(
      exposed(["gunicorn", "app:app", "-b", "127.0.0.1:8000"], {
        env: [{ name: "GUNICORN_CMD_ARGS", value: "--bind 0.0.0.0:8700" }],
      }),
    ).toEqual([]);
  });

  it("parses bind addresses as gunicorn does", () => {
    expect(parseBindAddress("0.0.0.0:80", 8000)).toEqual({ host: "0.0.0.0", port: 80 });
    expect(parseBindAddress(":80", 8000)).toEqual({ host: "", port: 80 });
    expect(parseBindAddress("example", 8000)).toEqual({ host: "example", port: 8000 });
    expect(parseBindAddress("[::1]:81", 8000)).toEqual({ host: "::1", port: 81 });
    expect(parseBindAddress("[::]", 8000)).toEqual({ host: "::", port: 8000 });
    expect(parseBindAddress("::", 8000)).toEqual({ host: "::", port: 8000 });
    expect(parseBindAddress("unix:/tmp/s", 8000)).toBeUndefined();
    expect(parseBindAddress("unix:///tmp/s", 8000)).toBeUndefined();
  });
});

describe("granian and daphne", () => {
  it("granian: --host, GRANIAN_HOST; default 127.0.0.1", () => {
    expect(ports(["granian", "--interface", "asgi", "app:app", "--host", "0.0.0.0"])).toEqual([8000]);
    expect(ports(["granian", "app:app"], { env: [{ name: "GRANIAN_HOST", value: "0.0.0.0" }] })).toEqual([
      8000,
    ]);
    expect(exposed(["granian", "--interface", "asgi", "app:app"])).toEqual([]);
  });

  it("daphne: -b, -p, tcp endpoints; default 127.0.0.1", () => {
    expect(ports(["daphne", "-b", "0.0.0.0", "-p", "8001", "app.asgi:application"])).toEqual([8001]);
    expect(ports(["daphne", "-e", "tcp:port=8002", "app.asgi:application"])).toEqual([8002]);
    expect(exposed(["daphne", "-e", "tcp:port=8002:interface=127.0.0.1", "app:application"])).toEqual([]);
    expect(exposed(["daphne", "-u", "/run/daphne.sock", "app:application"])).toEqual([]);
    expect(exposed(["daphne", "app.asgi:application"])).toEqual([]);
  });
});

describe("a container that runs its image's entrypoint", () => {
  it("reports the host variables the servers and common FastAPI images read", () => {
    expect(exposedAppPorts(pod({ env: [{ name: "HOST", value: "0.0.0.0" }] }), SIDECAR_PORTS)).toEqual([
      { container: "app", evidence: "env HOST=0.0.0.0" },
    ]);
    expect(
      exposedAppPorts(pod({ env: [{ name: "BIND", value: "0.0.0.0:80" }] }), SIDECAR_PORTS).map(
        (e) => e.port,
      ),
    ).toEqual([80]);
    expect(exposedAppPorts(pod({ env: [{ name: "HOST", value: "127.0.0.1" }] }), SIDECAR_PORTS)).toEqual([]);
    expect(exposedAppPorts(pod({}), SIDECAR_PORTS)).toEqual([]);
  });

  it("does not read a generic HOST when the command is some other program", () => {
    expect(exposed(["python", "worker.py"], { env: [{ name: "HOST", value: "0.0.0.0" }] })).toEqual([]);
  });
});

describe("the kubelet's probes", () => {
  it("report the port an httpGet, tcpSocket or grpc probe reaches on the pod IP", () => {
    const spec = pod({
      command: ["uvicorn", "app:app", "--host", "0.0.0.0"],
      ports: [{ name: "http", containerPort: 8000 }],
      readinessProbe: { httpGet: { path: "/healthz", port: "http" } },
      livenessProbe: { tcpSocket: { port: 8000 } },
      startupProbe: { grpc: { port: 9000 } },
    });
    expect(exposedAppPorts(spec, SIDECAR_PORTS)).toEqual([
      {
        container: "app",
        port: 8000,
        evidence:
          "uvicorn --host 0.0.0.0; readinessProbe httpGet /healthz on port 8000 (http), sent by the kubelet to the pod IP; livenessProbe tcpSocket on port 8000, sent by the kubelet to the pod IP",
      },
      {
        container: "app",
        port: 9000,
        evidence: "startupProbe grpc on port 9000, sent by the kubelet to the pod IP",
      },
    ]);
  });

  it("ignore exec probes, probes with an explicit host, and probes on the sidecar's ports", () => {
    const spec = pod({
      readinessProbe: { exec: { command: ["curl", "-f", "http://127.0.0.1:8000/healthz"] } },
      livenessProbe: { httpGet: { host: "127.0.0.1", port: 8000 } },
      startupProbe: { httpGet: { port: 9901, path: "/healthz" } },
    });
    expect(exposedAppPorts(spec, SIDECAR_PORTS)).toEqual([]);
  });

  it("contradict a loopback bind: the probe can only pass if the app listens on the pod IP", () => {
    const spec = pod({
      command: ["uvicorn", "app:app", "--host", "127.0.0.1"],
      readinessProbe: { httpGet: { port: 8000, path: "/healthz" } },
    });
    expect(exposedAppPorts(spec, SIDECAR_PORTS).map((e) => e.port)).toEqual([8000]);
  });
});

describe("which containers", () => {
  it("looks at every app container and never at the sidecar", () => {
    const spec: V1PodSpec = {
      containers: [
        { name: "worker", command: ["python", "worker.py"] },
        { name: "web", command: ["uvicorn", "app:app", "--host", "0.0.0.0"] },
        { name: "portcullis", command: ["portcullis-proxy", "--listen", "0.0.0.0:8080"] },
        { name: "admin", command: ["fastapi", "run", "--port", "8100"] },
      ],
    };
    expect(exposedAppPorts(spec, SIDECAR_PORTS).map((e) => [e.container, e.port])).toEqual([
      ["admin", 8100],
      ["web", 8000],
    ]);
    expect(exposedAppPorts(undefined, SIDECAR_PORTS)).toEqual([]);
  });
});

describe("address scope", () => {
  it.each([
    ["127.0.0.1", "loopback"],
    ["127.1.2.3", "loopback"],
    ["localhost", "loopback"],
    ["::1", "loopback"],
    ["[::1]", "loopback"],
    ["0:0:0:0:0:0:0:1", "loopback"],
    ["::ffff:127.0.0.1", "loopback"],
    ["0.0.0.0", "beyond"],
    ["::", "beyond"],
    ["", "beyond"],
    ["10.0.0.7", "beyond"],
    ["orders", "beyond"],
    ["$HOST", "unknown"],
    ["$(HOST)", "unknown"],
  ])("%j is %s", (host, scope) => {
    expect(hostScope(host)).toBe(scope);
  });
});
