#!/usr/bin/env node
// `portcullis <verb>`: the policy author's tools. One module per verb under cli/. Exit status: 0 the
// check passed, 1 it ran and failed, 2 a usage or input error (one line, never a stack trace).

import { COVERAGE_USAGE, coverageCommand } from "./cli/coverage.ts";
import { EXPLAIN_USAGE, explainCommand } from "./cli/explain.ts";
import { INIT_USAGE, initCommand } from "./cli/init.ts";
import { INPUT_ERROR, InputError } from "./cli/input.ts";
import { TEST_USAGE, testCommand } from "./cli/test-cases.ts";
import { VALIDATE_USAGE, validateCommand } from "./cli/validate.ts";

const VERBS: Readonly<Record<string, (args: readonly string[]) => number>> = {
  validate: validateCommand,
  test: testCommand,
  explain: explainCommand,
  coverage: coverageCommand,
  init: initCommand,
};

const USAGE = [VALIDATE_USAGE, TEST_USAGE, EXPLAIN_USAGE, COVERAGE_USAGE, INIT_USAGE].join("\n");

export function main(argv: readonly string[]): number {
  const [verb, ...args] = argv;
  const command = verb === undefined ? undefined : VERBS[verb];
  if (command === undefined) {
    console.error(
      verb === undefined || verb === "--help" ? USAGE : `unknown command ${JSON.stringify(verb)}\n${USAGE}`,
    );
    return INPUT_ERROR;
  }
  try {
    return command(args);
  } catch (e) {
    if (!(e instanceof InputError)) throw e;
    console.error(e.message);
    for (const line of e.details) console.error(line);
    return INPUT_ERROR;
  }
}

if (import.meta.main) process.exitCode = main(process.argv.slice(2));
