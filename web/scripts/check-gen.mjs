// Fails when src/gen/ differs from what the .proto files generate now, so the
// TypeScript and Rust sides cannot drift apart. Fix with `npm run gen`.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const out = mkdtempSync(join(tmpdir(), "petrel-gen-"));
const template = join(out, "buf.gen.yaml");
writeFileSync(
  template,
  readFileSync(join(root, "buf.gen.yaml"), "utf8").replace("out: src/gen", `out: ${join(out, "gen")}`),
);
execFileSync(join(root, "node_modules/.bin/buf"), ["generate", join(root, "../proto/proto"), "--template", template], {
  cwd: root,
  stdio: "inherit",
  env: { ...process.env, PATH: `${join(root, "node_modules/.bin")}:${process.env.PATH}` },
});

function files(dir) {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? files(p) : [p];
  });
}
const fresh = new Map(files(join(out, "gen")).map((p) => [relative(join(out, "gen"), p), readFileSync(p, "utf8")]));
const committed = new Map(
  files(join(root, "src/gen")).map((p) => [relative(join(root, "src/gen"), p), readFileSync(p, "utf8")]),
);
rmSync(out, { recursive: true, force: true });
const drift = [];
for (const [name, text] of fresh) {
  if (!committed.has(name)) drift.push(`missing: src/gen/${name}`);
  else if (committed.get(name) !== text) drift.push(`stale: src/gen/${name}`);
}
for (const name of committed.keys()) if (!fresh.has(name)) drift.push(`extra: src/gen/${name}`);
if (drift.length > 0) {
  console.error(`web: generated protobuf code is out of date with proto/proto:\n  ${drift.join("\n  ")}\nrun: (cd web && npm run gen)`);
  process.exit(1);
}
console.log(`web: src/gen matches proto/proto (${fresh.size} file(s))`);
