// `npm run generate` (second half): the chart's RBAC from operator/rbac.ts.

import { writeFileSync } from "node:fs";
import { generatedChartFiles } from "./generated.ts";

for (const [path, content] of generatedChartFiles()) {
  writeFileSync(new URL(`../${path}`, import.meta.url), content);
  console.log(`wrote ${path}`);
}
