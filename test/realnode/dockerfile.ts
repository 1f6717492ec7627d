// The repository's Dockerfile, read as the recipe for the image the real node runs. There is no
// Docker daemon or registry here, so the image is assembled on the host (images.ts) by carrying out
// the final stage's instructions; an instruction this reader does not know fails the build, so the
// Dockerfile and the tested image cannot drift apart silently.

export type Instruction =
  | { kind: "FROM"; image: string; stage?: string }
  | { kind: "WORKDIR"; path: string }
  | { kind: "ENV"; name: string; value: string }
  | { kind: "COPY"; from?: string; sources: string[]; destination: string }
  | { kind: "RUN"; commands: string[][] }
  | { kind: "USER"; user: string }
  | { kind: "ENTRYPOINT"; argv: string[] }
  | { kind: "CMD"; argv: string[] };

export interface Stage {
  base: string;
  name?: string;
  instructions: Instruction[];
}

/** Logical lines: comments dropped, `\` continuations joined. */
function logicalLines(text: string): string[] {
  const lines: string[] = [];
  let current = "";
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (current === "" && (line === "" || line.startsWith("#"))) continue;
    if (line.startsWith("#")) continue;
    if (line.endsWith("\\")) {
      current += `${line.slice(0, -1)} `;
      continue;
    }
    lines.push(current + line);
    current = "";
  }
  if (current.trim()) lines.push(current.trim());
  return lines;
}

function words(text: string): string[] {
  return text.split(/\s+/).filter(Boolean);
}

function jsonArgv(text: string, line: string): string[] {
  const parsed: unknown = JSON.parse(text);
  if (!Array.isArray(parsed) || !parsed.every((x) => typeof x === "string")) {
    throw new Error(`Dockerfile: exec-form JSON array expected: ${line}`);
  }
  return parsed;
}

function parseInstruction(line: string): Instruction {
  const match = /^([A-Za-z]+)\s+(.*)$/.exec(line);
  if (!match?.[1] || match[2] === undefined)
    throw new Error(`Dockerfile: cannot read ${JSON.stringify(line)}`);
  const keyword = match[1].toUpperCase();
  const rest = match[2].trim();
  switch (keyword) {
    case "FROM": {
      const [image, as, stage] = words(rest);
      if (!image) throw new Error(`Dockerfile: FROM without an image`);
      return as?.toUpperCase() === "AS" && stage ? { kind: "FROM", image, stage } : { kind: "FROM", image };
    }
    case "WORKDIR":
      return { kind: "WORKDIR", path: rest };
    case "ENV": {
      const eq = rest.indexOf("=");
      if (eq < 1 || /\s/.test(rest.slice(0, eq)))
        throw new Error(`Dockerfile: ENV name=value expected: ${line}`);
      return { kind: "ENV", name: rest.slice(0, eq), value: rest.slice(eq + 1) };
    }
    case "COPY": {
      const parts = words(rest);
      let from: string | undefined;
      if (parts[0]?.startsWith("--from=")) from = parts.shift()?.slice("--from=".length);
      const destination = parts.pop();
      if (!destination || parts.length === 0)
        throw new Error(`Dockerfile: COPY needs sources and a destination`);
      return from === undefined
        ? { kind: "COPY", sources: parts, destination }
        : { kind: "COPY", from, sources: parts, destination };
    }
    case "RUN":
      return { kind: "RUN", commands: rest.split("&&").map((command) => words(command)) };
    case "USER":
      return { kind: "USER", user: rest };
    case "ENTRYPOINT":
      return { kind: "ENTRYPOINT", argv: jsonArgv(rest, line) };
    case "CMD":
      return { kind: "CMD", argv: jsonArgv(rest, line) };
    default:
      throw new Error(`Dockerfile: ${keyword} is not carried out by test/realnode/images.ts; teach it there`);
  }
}

export function parseDockerfile(text: string): Stage[] {
  const stages: Stage[] = [];
  for (const line of logicalLines(text)) {
    const instruction = parseInstruction(line);
    if (instruction.kind === "FROM") {
      stages.push({
        base: instruction.image,
        ...(instruction.stage ? { name: instruction.stage } : {}),
        instructions: [],
      });
      continue;
    }
    const stage = stages.at(-1);
    if (!stage) throw new Error("Dockerfile: an instruction before the first FROM");
    stage.instructions.push(instruction);
  }
  return stages;
}
