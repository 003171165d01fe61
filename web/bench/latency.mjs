// Browser end-to-end latency: two SDK clients in one headless Chromium page (one clock),
// alice → gateway → leaf → hub (JetStream store + re-publish) → leaf → gateway → bob,
// sequential messages (one in flight), per transport. Not a load test. Sends are paced
// at 80/s, under the gateway's default per-connection rate limit (100/s).
//   node bench/latency.mjs [--count N]     (needs npm run build and the petrel binary;
//   PETREL_PROFILE=release uses $CARGO_TARGET_DIR/release/petrel)
import { launchChromium, petrelBin, startDev } from "../test/topology.mjs";

const count = Number(process.argv[process.argv.indexOf("--count") + 1]) || 300;
const dev = await startDev();
const browser = await launchChromium();
try {
  const page = await (await browser.newContext({ ignoreHTTPSErrors: true })).newPage();
  await page.goto(`${dev.ep.http}/`);
  await page.waitForFunction(() => window.petrel !== undefined);
  console.log(`gateway ${petrelBin}, ${count} sequential messages per transport`);
  console.log("transport            p50 ms   p90 ms   p99 ms   max ms");
  for (const [name, transport, ws] of [
    ["webtransport", "webtransport", "websocket"],
    ["websocket (wss)", "websocket", "websocket"],
    ["websocket (plain)", "websocket", "websocket_plain"],
  ]) {
    const times = await page.evaluate(
      async ([transport, ws, n]) => {
        const cfg = await (await fetch("/client-config")).json();
        const client = async (user) => {
          const c = new window.petrel.PetrelClient({
            webTransportUrl: cfg.webtransport,
            webSocketUrl: cfg[ws],
            certHashesUrl: cfg.cert_hashes,
            transport,
            storage: null,
            token: async () => (await (await fetch(`/dev/token?user=${user}`)).json()).token,
          });
          await c.connect();
          return c;
        };
        const tag = Math.random().toString(36).slice(2, 8);
        const alice = await client(`alice${tag}`);
        const bob = await client(`bob${tag}`);
        let arrived = null;
        bob.addEventListener("message", () => arrived?.());
        const out = [];
        for (let i = 0; i < n + 20; i++) {
          const got = new Promise((r) => (arrived = r));
          const t0 = performance.now();
          const result = alice.send(`bob${tag}`, `m${i}`);
          await got;
          if (i >= 20) out.push(performance.now() - t0); // the first 20 warm up
          const r = await result;
          if (r.status !== "stored") throw new Error(`send ${i}: ${r.status} ${r.reason ?? ""} ${r.detail ?? ""}`);
          const pause = t0 + 12.5 - performance.now();
          if (pause > 0) await new Promise((done) => setTimeout(done, pause));
        }
        alice.close();
        bob.close();
        return out;
      },
      [transport, ws, count],
    );
    times.sort((a, b) => a - b);
    const q = (p) => times[Math.min(times.length - 1, Math.floor(p * times.length))].toFixed(2);
    console.log(
      `${name.padEnd(20)} ${q(0.5).padStart(6)}   ${q(0.9).padStart(6)}   ${q(0.99).padStart(6)}   ${times[times.length - 1].toFixed(2).padStart(6)}`,
    );
  }
} finally {
  await browser.close();
  await dev.stop();
}
