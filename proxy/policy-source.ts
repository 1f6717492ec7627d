// The policy file, loaded, validated and compiled into the ProxyRuntime the request path reads, and
// kept current. Kubernetes updates a mounted ConfigMap by writing a new timestamped directory and
// renaming a `..data` symlink over the old one, so the file's own inode never changes: we watch the
// DIRECTORY, debounce, and compare a content hash; a slow poll catches what inotify misses.
//
// Swap rule: a new valid policy replaces the old one only once its verifier is ready (every issuer's
// keys loaded; issuers it shares with the old policy are warm already through the shared
// KeySetRegistry) or after `swapTimeoutMs`. Until then the old runtime keeps answering, so valid
// requests are never rejected for want of keys during a swap; after the timeout the operator's intent
// wins and only tokens of a still-unreachable NEW issuer get 401 (they did under the old policy too).
// An invalid file changes nothing: every problem is logged, reload("error") counted, the last good
// policy stays. The first load has no last good policy: it throws PolicyError and the proxy exits.

import { createHash } from "node:crypto";
import { type FSWatcher, watch } from "node:fs";
import { readFile } from "node:fs/promises";
import { dirname } from "node:path";
import type pino from "pino";
import { type CompiledPolicy, compilePolicy } from "../policy/compile.ts";
import { formatProblem, hasErrors, PolicyError, type Problem } from "../policy/problems.ts";
import { validatePolicyText } from "../policy/validate.ts";
import type { KeySetRegistry } from "./authn/key-set.ts";
import { createBearerVerifier } from "./authn/verify-bearer.ts";
import type { ProxyMetrics } from "./metrics.ts";
import type { ProxyRuntime } from "./runtime.ts";

export interface PolicySourceOptions {
  file: string;
  logger: pino.Logger;
  metrics: ProxyMetrics;
  /** Shared by every runtime this source builds, so warm keys survive reloads; observe fetches on it. */
  keySets: KeySetRegistry;
  /** Called with each policy that goes into force, the first one included. */
  onPolicy?: (policy: CompiledPolicy) => void;
  /** Quiet time after the last directory event before the file is read. Default 150 ms. */
  debounceMs?: number;
  /** Fallback re-read interval. Default 10 s. */
  pollIntervalMs?: number;
  /** Longest wait for a new policy's keys before it is swapped in anyway. Default 10 s. */
  swapTimeoutMs?: number;
}

export interface PolicySource {
  /** The runtime in force: read it once per request and use that pair for the whole request. */
  current(): ProxyRuntime;
  /** True when the runtime in force has keys for every issuer. */
  keysWarm(): boolean;
  /** Resolves when the runtime in force at the time of the call has its keys (or failed to get them). */
  keysReady(): Promise<void>;
  /** Reads the file now (the watcher and the poll call this too); resolves when it is handled. */
  refresh(): Promise<void>;
  close(): void;
}

// A replaced verifier may still be finishing a verify() for a request that read current() just before
// the swap; its close waits this long.
const RETIRE_DELAY_MS = 5_000;

/** Loads the file (throwing PolicyError with every problem when it is not a valid policy) and watches it. */
export async function openPolicySource(options: PolicySourceOptions): Promise<PolicySource> {
  const { file, logger, metrics, keySets } = options;
  const debounceMs = options.debounceMs ?? 150;
  const swapTimeoutMs = options.swapTimeoutMs ?? 10_000;
  // Not a child logger: pino children keep the level they were made with, and main.ts applies the
  // policy's spec.sidecar.logLevel to this logger after it exists.
  const log = logger;

  const first = await readPolicyFile(file);
  if (!("policy" in first)) throw new PolicyError(`${file}: not a valid AccessPolicy`, first.problems);
  logWarnings(log, first.problems);
  let loads = 1;
  let runtime = buildRuntime(first.policy);
  let seenHash = first.hash;
  let closed = false;
  announce(first, loads);

  function buildRuntime(policy: CompiledPolicy): ProxyRuntime {
    // Fetches are observed once, on the registry: two verifiers share a key set during a swap.
    return { policy, verifier: createBearerVerifier(policy, { keySets }) };
  }

  function announce({ policy, hash, generation: fileGeneration }: ValidPolicyRead, load: number): void {
    const generation = fileGeneration ?? load;
    metrics.policyLoaded({ name: policy.name, generation, hash: hash.slice(0, 12) });
    log.info(
      {
        policyFile: file,
        policy: policy.name,
        generation,
        hash: hash.slice(0, 12),
        rules: policy.spec.authorization.rules.length,
        issuers: [...policy.issuers.keys()],
      },
      load === 1 ? "policy loaded" : "policy reloaded",
    );
    options.onPolicy?.(policy);
  }

  // Reloads run one at a time; a change that arrives during one is picked up by a re-read after it.
  let running: Promise<void> | undefined;
  let again = false;
  function refresh(): Promise<void> {
    if (closed) return Promise.resolve();
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      do {
        again = false;
        await reload();
      } while (again && !closed);
    })().finally(() => {
      running = undefined;
    });
    return running;
  }

  async function reload(): Promise<void> {
    const read = await readPolicyFile(file);
    if (read.hash === seenHash) return;
    seenHash = read.hash;
    if (!("policy" in read)) {
      metrics.reload("error");
      log.error(
        { policyFile: file, problems: read.problems.map(formatProblem) },
        "policy file rejected; the last good policy stays in force",
      );
      return;
    }
    logWarnings(log, read.problems);
    const next = buildRuntime(read.policy);
    const warm = await settlesWithin(next.verifier.ready(), swapTimeoutMs);
    if (closed) {
      next.verifier.close();
      return;
    }
    if (!warm) {
      log.warn(
        { timeoutMs: swapTimeoutMs },
        "new policy's keys are not all loaded yet; swapping it in, tokens of issuers without keys get 401",
      );
    }
    const retired = runtime;
    runtime = next;
    metrics.reload("success");
    announce(read, ++loads);
    setTimeout(() => retired.verifier.close(), RETIRE_DELAY_MS).unref();
  }

  const scheduleRefresh = debounce(() => {
    refresh().catch((e: unknown) => log.error({ err: e }, "policy reload failed"));
  }, debounceMs);
  const watcher = watchDirectory(dirname(file), scheduleRefresh, log);
  const poll = setInterval(scheduleRefresh, options.pollIntervalMs ?? 10_000);
  poll.unref();

  return {
    current: () => runtime,
    keysWarm: () => runtime.verifier.isReady(),
    keysReady: () => runtime.verifier.ready().catch(() => undefined),
    refresh,
    close() {
      closed = true;
      clearInterval(poll);
      scheduleRefresh.cancel();
      watcher?.close();
      runtime.verifier.close();
    },
  };
}

interface ValidPolicyRead {
  hash: string;
  policy: CompiledPolicy;
  /** metadata.generation, when the file carries it (the operator's ConfigMap does). */
  generation?: number;
  /** Warnings only. */
  problems: Problem[];
}
type PolicyRead = ValidPolicyRead | { hash: string; problems: Problem[] };

/** Never throws: an unreadable or invalid file is a list of problems (errors first among them). */
export async function readPolicyFile(file: string): Promise<PolicyRead> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? "error";
    return {
      hash: `unreadable:${code}`,
      problems: [{ severity: "error", path: "(file)", message: `cannot read: ${code}` }],
    };
  }
  const hash = createHash("sha256").update(text).digest("hex");
  const { policy: document, problems } = validatePolicyText(text, Date.now());
  if (!document || hasErrors(problems)) return { hash, problems };
  try {
    const generation = document.metadata?.generation;
    return {
      hash,
      policy: compilePolicy(document),
      problems,
      ...(generation !== undefined ? { generation } : {}),
    };
  } catch (e) {
    // compilePolicy throws only on a programming error; still, a bad file must not take us down.
    const message = e instanceof Error ? e.message : String(e);
    return {
      hash,
      problems: [{ severity: "error", path: "(document)", message: `cannot compile: ${message}` }],
    };
  }
}

function logWarnings(log: pino.Logger, problems: readonly Problem[]): void {
  for (const problem of problems) {
    if (problem.severity === "warning") log.warn({ problem: formatProblem(problem) }, "policy warning");
  }
}

/** True when `promise` settles (either way) within `ms`. */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([
      promise.then(
        () => true,
        () => true,
      ),
      timeout,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

function debounce(run: () => void, ms: number): (() => void) & { cancel(): void } {
  let timer: NodeJS.Timeout | undefined;
  const schedule = () => {
    clearTimeout(timer);
    timer = setTimeout(run, ms);
    timer.unref();
  };
  return Object.assign(schedule, { cancel: () => clearTimeout(timer) });
}

// Any entry of the directory counts: a ConfigMap swap renames `..data`, never the file's own name,
// and an editor may write a temporary file and rename it. A re-read costs one small file and a hash.
function watchDirectory(directory: string, onChange: () => void, log: pino.Logger): FSWatcher | undefined {
  try {
    const watcher = watch(directory, { persistent: false }, onChange);
    watcher.on("error", (e) => {
      log.warn({ err: e }, "policy directory watch failed; polling only");
      watcher.close();
    });
    return watcher;
  } catch (e) {
    log.warn({ err: e }, "cannot watch the policy directory; polling only");
    return undefined;
  }
}
