// The pair the request path reads once per request: a compiled policy and the bearer verifier built for
// it. Hot reload swaps the whole pair at once, so no request is authorised by one policy and forwarded
// (headers, timeouts) by another.

import type { CompiledPolicy } from "../policy/compile.ts";
import type { BearerVerifier } from "./authn/verify-bearer.ts";

export interface ProxyRuntime {
  policy: CompiledPolicy;
  verifier: BearerVerifier;
}
