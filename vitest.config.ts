import { defineConfig } from "vitest/config";

// Integration tests start real processes (uvicorn, an OpenID Provider, kube-apiserver + etcd):
// generous hook timeouts, and files run in separate forks so ports and processes never collide.
export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Builds or finds what the tests need beyond npm packages (Go-built Kubernetes, helm, Redis, the
    // Python venv, the real node's Debian packages): minutes the first time, seconds after.
    globalSetup: ["test/setup/prepare.ts"],
    pool: "forks",
    testTimeout: 60_000,
    hookTimeout: 240_000,
    fileParallelism: true,
    maxWorkers: 2,
  },
});
