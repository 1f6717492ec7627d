// Whether the app accepts connections. The app binds loopback and has no kubelet probes of its own
// (they would come from the pod IP), so the sidecar's readiness stands in for the pod: not ready until
// the app listens, and not ready again if it stops, instead of answering 502 to live traffic.

import { connect } from "node:net";

export interface UpstreamProbe {
  reachable(): boolean;
  close(): void;
}

export function probeUpstream(upstream: URL, intervalMs = 1000, timeoutMs = 1000): UpstreamProbe {
  let reachable = false;
  let closed = false;
  let timer: NodeJS.Timeout | undefined;
  const port = Number(upstream.port);
  const host = upstream.hostname.replace(/^\[|\]$/g, "");

  const check = () => {
    const socket = connect({ host, port });
    let settled = false;
    const done = (ok: boolean) => {
      if (settled) return;
      settled = true;
      reachable = ok;
      socket.destroy();
      if (!closed) timer = setTimeout(check, intervalMs).unref();
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  };
  check();
  return {
    reachable: () => reachable,
    close() {
      closed = true;
      clearTimeout(timer);
    },
  };
}
