// A real `petrel dev` (hub and leaf nats-server, gateway) serving dist/, and headless
// Chromium (Debian's /usr/bin/chromium via playwright-core): shared by the browser
// tests and the browser benchmark.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir, homedir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const webDir = join(dirname(fileURLToPath(import.meta.url)), "..");
const targetDir = process.env.CARGO_TARGET_DIR ?? join(homedir(), ".cache/petrel/target");
export const petrelBin = join(targetDir, process.env.PETREL_PROFILE === "release" ? "release/petrel" : "debug/petrel");

/** The flags Chromium needs here (never --disable-quic: WebTransport runs on QUIC). */
export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** Polls `fn` until it returns a truthy value, or fails after `ms`. */
export async function waitFor(fn, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Launches headless Chromium. */
export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
    headless: true,
    args: CHROMIUM_ARGS,
  });
}

/** Starts `petrel dev` in a temporary directory; resolves once endpoints.json exists. */
export async function startDev() {
  if (!existsSync(petrelBin)) throw new Error(`no petrel binary at ${petrelBin}: run cargo build first`);
  if (!existsSync(join(webDir, "dist/petrel.js"))) throw new Error("no dist/petrel.js: run npm run build first");
  const dir = mkdtempSync(join(tmpdir(), "petrel-web-"));
  const child = spawn(petrelBin, ["dev", "--dir", dir, "--web-dir", join(webDir, "dist")], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
  });
  let log = "";
  child.stdout.on("data", (d) => (log += d));
  child.stderr.on("data", (d) => (log += d));
  const endpoints = join(dir, "endpoints.json");
  await waitFor(() => child.exitCode !== null || existsSync(endpoints), 60_000, "petrel dev to write endpoints.json");
  if (child.exitCode !== null) throw new Error(`petrel dev exited early:\n${log}`);
  return {
    dir,
    ep: JSON.parse(readFileSync(endpoints, "utf8")),
    log: () => log,
    async stop() {
      if (child.exitCode === null) {
        child.kill("SIGTERM");
        await waitFor(() => child.exitCode !== null, 20_000, "petrel dev to stop");
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
