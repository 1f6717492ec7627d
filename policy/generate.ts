// `npm run generate`: writes every artefact derived from policy/schema.ts. test/generated.test.ts fails
// when a committed file differs from what this writes.

import { writeFileSync } from "node:fs";
import { generatedFiles } from "./generated.ts";

for (const [path, content] of generatedFiles()) {
  writeFileSync(new URL(`../${path}`, import.meta.url), content);
  console.log(`wrote ${path}`);
}
