// Builds dist/: petrel.js (the SDK as one ES module, for pages without a bundler),
// types/ (declarations), and the demo page.
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { cpSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
rmSync(join(root, "dist"), { recursive: true, force: true });
mkdirSync(join(root, "dist"), { recursive: true });
await build({
  entryPoints: [join(root, "src/index.ts")],
  bundle: true,
  format: "esm",
  target: "es2022",
  sourcemap: true,
  outfile: join(root, "dist/petrel.js"),
  logLevel: "warning",
});
execFileSync(join(root, "node_modules/.bin/tsc"), ["-p", root], { stdio: "inherit" });
cpSync(join(root, "demo"), join(root, "dist"), { recursive: true });
console.log("web: built dist/ (petrel.js, types/, demo page)");
