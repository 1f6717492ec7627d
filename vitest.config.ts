import { defineConfig } from "vitest/config";

// Integration tests start real processes (uvicorn, an OpenID Provider, kube-apiserver + etcd):
// generous hook timeouts, and files run in separate forks so ports and processes never collide.
export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    pool: "forks",
    testTimeout: 60_000,
    hookTimeout: 240_000,
    fileParallelism: true,
    maxWorkers: 2,
  },
});
