// Generates TypeScript from the same .proto files the Rust side compiles
// (../proto/proto), with protoc (Debian's protobuf-compiler) and protoc-gen-es.
//   node scripts/gen.mjs            writes src/gen/
//   node scripts/gen.mjs --check    fails when src/gen/ differs from a fresh generation
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const protoRoot = join(root, "../proto/proto");

function files(dir) {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? files(p) : [p];
  });
}

function generate(out) {
  mkdirSync(out, { recursive: true });
  const protos = files(protoRoot).filter((p) => p.endsWith(".proto"));
  execFileSync(
    "protoc",
    [
      `--plugin=protoc-gen-es=${join(root, "node_modules/.bin/protoc-gen-es")}`,
      `--es_out=${out}`,
      "--es_opt=target=ts",
      `-I${protoRoot}`,
      ...protos,
    ],
    { stdio: "inherit" },
  );
}

const read = (dir) => new Map(files(dir).map((p) => [relative(dir, p), readFileSync(p, "utf8")]));

if (!process.argv.includes("--check")) {
  rmSync(join(root, "src/gen"), { recursive: true, force: true });
  generate(join(root, "src/gen"));
  console.log("web: generated src/gen from proto/proto");
} else {
  const tmp = mkdtempSync(join(tmpdir(), "petrel-gen-"));
  try {
    generate(tmp);
    const fresh = read(tmp);
    const committed = read(join(root, "src/gen"));
    const drift = [];
    for (const [name, text] of fresh) {
      if (!committed.has(name)) drift.push(`missing: src/gen/${name}`);
      else if (committed.get(name) !== text) drift.push(`stale: src/gen/${name}`);
    }
    for (const name of committed.keys()) if (!fresh.has(name)) drift.push(`extra: src/gen/${name}`);
    if (drift.length > 0) {
      console.error(
        `web: generated protobuf code is out of date with proto/proto:\n  ${drift.join("\n  ")}\nrun: (cd web && npm run gen)`,
      );
      process.exit(1);
    }
    console.log(`web: src/gen matches proto/proto (${fresh.size} file(s))`);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}
