// node:http without its ESM namespace. `import ... from "node:http"` builds the namespace from every
// export, and reading the lazy WebSocket/CloseEvent/MessageEvent exports loads Node's bundled undici:
// ~14 MiB more RSS (~6 MiB private) in every sidecar, for classes the proxy never uses.
export const httpModule: typeof import("node:http") = process.getBuiltinModule("node:http");
