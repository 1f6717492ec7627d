// The reader that lets the real node run the image the Dockerfile describes (test/realnode/images.ts):
// it understands the repository's Dockerfile, and refuses what it would not carry out.
import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseDockerfile } from "./realnode/dockerfile.ts";
import { buildFromDockerfile } from "./realnode/images.ts";

const dockerfile = readFileSync(join(import.meta.dirname, "..", "Dockerfile"), "utf8");

describe("the Dockerfile as the real node's image recipe", () => {
  it("reads the repository's Dockerfile: a build stage, then a non-root runtime with the sidecar as entrypoint", () => {
    const stages = parseDockerfile(dockerfile);
    expect(stages.map((s) => s.name ?? s.base)).toEqual(["build", "node:24-bookworm-slim"]);
    const final = stages[1]?.instructions ?? [];
    expect(final).toContainEqual({ kind: "USER", user: "65532:65532" });
    expect(final).toContainEqual({ kind: "ENTRYPOINT", argv: ["portcullis-proxy"] });
    expect(final).toContainEqual({ kind: "COPY", from: "build", sources: ["/src/dist"], destination: "./" });
    const links = final.flatMap((i) => (i.kind === "RUN" ? i.commands : [])).filter((c) => c[0] === "ln");
    expect(links.map((c) => c[3])).toEqual([
      "/usr/local/bin/portcullis",
      "/usr/local/bin/portcullis-proxy",
      "/usr/local/bin/portcullis-operator",
    ]);
  });

  it("refuses an instruction it does not carry out, naming where to teach it", () => {
    expect(() => parseDockerfile(`FROM node:24-bookworm-slim\nHEALTHCHECK CMD true\n`)).toThrow(
      /HEALTHCHECK is not carried out by test\/realnode\/images\.ts/,
    );
    expect(() => parseDockerfile(`USER 1000\n`)).toThrow(/before the first FROM/);
  });

  it("refuses a RUN command or a base image it cannot reproduce without a daemon", async () => {
    const rootfs = await mkdtemp(join(tmpdir(), "portcullis-dockerfile-"));
    try {
      await expect(
        buildFromDockerfile(rootfs, `FROM node:24-bookworm-slim\nRUN apt-get install -y curl\n`),
      ).rejects.toThrow(/RUN apt-get install -y curl is not carried out/);
      await expect(buildFromDockerfile(rootfs, `FROM python:3.12-slim\nUSER 1000\n`)).rejects.toThrow(
        /FROM python:3.12-slim: test\/realnode\/images\.ts builds node:24 bases only/,
      );
    } finally {
      await rm(rootfs, { recursive: true, force: true });
    }
  });
});
