import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { generatedChartFiles } from "../operator/generated.ts";
import { generatedFiles } from "../policy/generated.ts";

const root = join(import.meta.dirname, "..");

describe("generated files", () => {
  it.each([...generatedFiles(), ...generatedChartFiles()])(
    "%s is what `npm run generate` writes",
    (path, content) => {
      expect(readFileSync(join(root, path), "utf8"), `${path} is stale: run npm run generate`).toBe(content);
    },
  );
});
