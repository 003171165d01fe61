// A real `petrel dev` (hub and leaf nats-server, gateway) serving dist/, and headless
// Chromium (Debian's /usr/bin/chromium via playwright-core): shared by the browser
// tests and the browser benchmark.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { constants, tmpdir, homedir } from "node:os";
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

/**
 * How long one test may take. Each test sets it itself: `node --test --test-timeout`
 * bounds a whole test file rather than each test in Node 20 (and in some later
 * versions), so package.json's `--test-timeout` is the bound on a file.
 */
export const TEST_MS = 120_000;
/** How long a before/after hook may take (starting petrel dev and Chromium; stopping them). */
export const HOOK_MS = 120_000;

/** Settles as `promise` does, or fails after `ms` saying that `what` did not happen. */
export function within(ms, promise, what) {
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

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

/** Waits until `fn(arg)` is truthy in `page`, or fails after `ms` saying that `what` did not happen. */
export async function pageWait(page, what, fn, arg, ms = 15_000) {
  try {
    return await page.waitForFunction(fn, arg, { timeout: ms, polling: 50 });
  } catch (e) {
    const why = e.name === "TimeoutError" ? `timed out after ${ms} ms` : e.message.split("\n")[0];
    throw new Error(`${why} waiting for ${what}`, { cause: e });
  }
}

/** GETs `url` from Node, failing after `ms`. */
export async function httpGet(url, ms = 10_000) {
  return within(ms, fetch(url, { signal: AbortSignal.timeout(ms) }), `GET ${url} to answer`);
}

// Every child process a test starts is killed when the test process ends, however it
// ends: a failed or timed-out test must not leave a gateway or a CLI behind.
const children = new Set();
const killChildren = () => {
  for (const c of children) c.kill("SIGKILL");
};
process.once("exit", killChildren);
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.once(sig, () => {
    killChildren();
    // Exit as the signal would have, unless someone else (the test runner) handles it.
    if (process.listenerCount(sig) === 0) process.exit(128 + constants.signals[sig]);
  });
}

/** Spawns a child that is killed when the test process ends; `exited` settles with how it ended. */
export function spawnChild(cmd, args, options) {
  const child = spawn(cmd, args, options);
  children.add(child);
  child.exited = new Promise((resolve) => {
    child.once("error", (error) => resolve({ code: null, signal: null, error }));
    child.once("exit", (code, signal) => resolve({ code, signal }));
  }).finally(() => children.delete(child));
  return child;
}

/** Runs `bin args` to completion within `ms`; resolves with its stdout lines, fails on a non-zero exit. */
export function run(bin, args, { ms = 30_000, onStderr } = {}) {
  const child = spawnChild(bin, args, { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => {
    err += d;
    onStderr?.(err);
  });
  const name = `${bin} ${args.join(" ")}`;
  const done = within(
    ms,
    child.exited.then(({ code, signal, error }) => {
      if (code === 0) return out.trim().split("\n").filter(Boolean);
      throw new Error(`${name} ${error ? `failed: ${error.message}` : `exited ${signal ?? code}`}: ${err}`);
    }),
    `${name} to exit`,
  ).catch((e) => {
    child.kill("SIGKILL");
    throw e;
  });
  return { child, done };
}

/** Launches headless Chromium. */
export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 30_000,
  });
}

/** How long `petrel dev` may take to write endpoints.json, and to stop on SIGTERM. */
const DEV_READY_MS = 60_000;
const DEV_STOP_MS = 20_000;

/** The parsed endpoints.json, or null while it is missing or half written. */
function readEndpoints(path) {
  try {
    return JSON.parse(readFileSync(path, "utf8"));
  } catch {
    return null;
  }
}

/** Stops `child`: SIGTERM, then SIGKILL if it has not exited within `ms`; true if SIGTERM sufficed. */
async function stopChild(child, ms) {
  child.kill("SIGTERM");
  try {
    await within(ms, child.exited, "the child to exit on SIGTERM");
    return true;
  } catch {
    child.kill("SIGKILL");
    await within(5_000, child.exited, "the child to exit on SIGKILL");
    return false;
  }
}

/** Starts `petrel dev` in a temporary directory; resolves once endpoints.json exists. */
export async function startDev() {
  if (!existsSync(petrelBin)) throw new Error(`no petrel binary at ${petrelBin}: run cargo build first`);
  if (!existsSync(join(webDir, "dist/petrel.js"))) throw new Error("no dist/petrel.js: run npm run build first");
  const dir = mkdtempSync(join(tmpdir(), "petrel-web-"));
  const child = spawnChild(petrelBin, ["dev", "--dir", dir, "--push", "--web-dir", join(webDir, "dist")], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
  });
  let log = "";
  child.stdout.on("data", (d) => (log += d));
  child.stderr.on("data", (d) => (log += d));
  let ended = null;
  child.exited.then((how) => (ended = how));
  const stop = async () => {
    try {
      if (!ended && !(await stopChild(child, DEV_STOP_MS))) {
        throw new Error(`petrel dev did not stop within ${DEV_STOP_MS} ms of SIGTERM (killed):\n${log}`);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
  let ep;
  try {
    await waitFor(() => ended || (ep = readEndpoints(join(dir, "endpoints.json"))), DEV_READY_MS, "petrel dev to write endpoints.json");
    if (ended) throw new Error(`petrel dev exited (${ended.error?.message ?? ended.signal ?? ended.code}) before it was ready`);
  } catch (e) {
    await stop().catch(() => {});
    throw new Error(`${e.message}\n${log}`, { cause: e });
  }
  return { dir, ep, log: () => log, stop };
}
