#!/usr/bin/env node
// portcullis-operator: flags/env -> kubeconfig (in-cluster, else KUBECONFIG or ~/.kube/config) ->
// informers -> leader election -> reconcile workers. SIGTERM/SIGINT: stop leading (running
// reconciles finish), hand the lease back, exit.
import { ecsFormat } from "@elastic/ecs-pino-format";
import { KubeConfig } from "@kubernetes/client-node";
import { type Logger, pino } from "pino";
import { type OperatorConfig, readOperatorConfig } from "./config.ts";
import { type OperatorLog, startOperator } from "./operator.ts";
import { errorMessage } from "./reconciler.ts";

function loadKubeConfig(): KubeConfig {
  const kubeConfig = new KubeConfig();
  if (process.env.KUBERNETES_SERVICE_HOST) kubeConfig.loadFromCluster();
  else kubeConfig.loadFromDefault();
  return kubeConfig;
}

function createLogger(config: OperatorConfig): Logger {
  const options = { name: "portcullis-operator", level: config.logLevel };
  const ecs = ecsFormat({ apmIntegration: false, convertErr: false, serviceName: "portcullis-operator" });
  return config.logFormat === "ecs" ? pino({ ...options, ...ecs }) : pino(options);
}

/** pino's (fields, message) order, as the operator's modules log. */
function operatorLog(logger: Logger): OperatorLog {
  return {
    debug: (fields, message) => logger.debug(fields, message),
    info: (fields, message) => logger.info(fields, message),
    warn: (fields, message) => logger.warn(fields, message),
    error: (fields, message) => logger.error(fields, message),
  };
}

async function main(): Promise<number> {
  const parsed = readOperatorConfig(process.argv.slice(2), process.env);
  if ("help" in parsed) {
    process.stdout.write(parsed.help);
    return 0;
  }
  if ("error" in parsed) {
    process.stderr.write(`portcullis-operator: ${parsed.error}\n`);
    return 2;
  }
  const config = parsed;
  const logger = createLogger(config);
  const log = operatorLog(logger);

  let operator: Awaited<ReturnType<typeof startOperator>>;
  try {
    operator = await startOperator({ kubeConfig: loadKubeConfig(), config, log, serveAdmin: true });
  } catch (error) {
    log.error({ error: errorMessage(error) }, "cannot start");
    return 1;
  }
  log.info(
    {
      identity: operator.identity,
      serverVersion: `${operator.serverVersion.major}.${operator.serverVersion.minor}`,
      namespaces: config.namespaces.length > 0 ? config.namespaces : "all",
      admin: `${config.admin.host}:${operator.admin?.port}`,
    },
    "started",
  );

  const signal = await new Promise<string>((resolve) => {
    process.once("SIGTERM", () => resolve("SIGTERM"));
    process.once("SIGINT", () => resolve("SIGINT"));
  });
  log.info({ signal }, "stopping");
  // A second signal, or a drain that hangs, must not keep the pod around forever.
  const force = setTimeout(() => process.exit(1), 30_000);
  force.unref();
  process.once("SIGTERM", () => process.exit(1));
  process.once("SIGINT", () => process.exit(1));
  await operator.stop();
  log.info({}, "stopped");
  return 0;
}

process.on("unhandledRejection", (reason) => {
  process.stderr.write(
    `${JSON.stringify({ level: 50, msg: "unhandled rejection", error: errorMessage(reason) })}\n`,
  );
});

process.exitCode = await main();
