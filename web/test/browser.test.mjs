// Browser tests: real headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core) against a real `petrel dev` topology (hub and leaf nats-server,
// gateway with WebTransport, WebSocket and QUIC), serving the demo page from dist/.
//
// Needs: `npm run build` first, and the petrel binary at
// $CARGO_TARGET_DIR/debug/petrel (scripts/test.sh provides both).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { launchChromium, petrelBin, startDev } from "./topology.mjs";

let dev;
let devDir;
let ep;
let browser;

before(async () => {
  dev = await startDev();
  ({ dir: devDir, ep } = dev);
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await dev?.stop();
});

/** A page of the demo in a fresh browser context, signed in as `user`. */
async function openUser(user, { noWebTransport = false, expect = "webtransport" } = {}) {
  // The demo page uses petrel dev's plain loopback WebSocket for the fallback, so no
  // certificate has to be trusted (the wss listener is tested with a bad token below).
  const context = await browser.newContext();
  if (noWebTransport) {
    await context.addInitScript(() => {
      delete window.WebTransport;
    });
  }
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[${user}] page error: ${e.message}`));
  await page.goto(`${ep.http}/`);
  await page.waitForFunction(() => window.petrel !== undefined);
  const r = await page.evaluate((u) => window.petrel.signIn(u).then((x) => x.transport), user);
  assert.equal(r, expect, `${user} connected over ${r}`);
  return { page, context };
}

async function send(page, to, text) {
  const r = await page.evaluate(([t, x]) => window.petrel.send(t, x), [to, text]);
  assert.equal(r.status, "stored", JSON.stringify(r));
  return r;
}

async function waitRow(page, text) {
  await page.waitForFunction((t) => window.petrel.rows().some((r) => r.text.endsWith(t)), text, {
    timeout: 15_000,
  });
}

async function rows(page) {
  return page.evaluate(() => window.petrel.rows());
}

test("two browsers chat both ways over WebTransport", async () => {
  const alice = await openUser("alice");
  const bob = await openUser("bob");
  assert.equal(await alice.page.evaluate(() => window.petrel.client.transport), "webtransport");
  assert.equal(await alice.page.locator("#transport").textContent(), "webtransport");
  // Deliveries come on the streams the gateway opens (8 asked, 8 granted).
  assert.equal(await alice.page.evaluate(() => window.petrel.client.welcome.deliveryStreams), 8);
  await send(alice.page, "bob", "hi bob, from a browser");
  await waitRow(bob.page, "alice: hi bob, from a browser");
  await send(bob.page, "alice", "hi alice");
  await waitRow(alice.page, "bob: hi alice");
  for (let i = 0; i < 20; i++) await send(alice.page, "bob", `burst ${i}`);
  await waitRow(bob.page, "alice: burst 19");
  const got = (await rows(bob.page)).filter((r) => r.text.startsWith("alice: burst")).map((r) => r.text);
  assert.deepEqual(got, Array.from({ length: 20 }, (_, i) => `alice: burst ${i}`), "in order, once each");
  // The sender's page shows each of its messages once, though the copy kept in its own
  // inbox is delivered back to it.
  await alice.page.waitForFunction(() => window.petrel.client.stats.wireDeliveries >= 22);
  const mine = (await rows(alice.page)).map((r) => r.text).filter((t) => !t.startsWith("bob:"));
  assert.deepEqual(mine, ["hi bob, from a browser", ...Array.from({ length: 20 }, (_, i) => `burst ${i}`)]);
  await alice.context.close();
  await bob.context.close();
});

test("without WebTransport the SDK falls back to WebSocket and chats with a WebTransport user", async () => {
  const wsUser = await openUser("dave", { noWebTransport: true, expect: "websocket" });
  const wtUser = await openUser("erin");
  assert.equal(await wsUser.page.evaluate(() => window.petrel.webTransportAvailable()), false);
  assert.equal(await wsUser.page.evaluate(() => window.petrel.client.welcome.deliveryStreams), 0);
  await send(wsUser.page, "erin", "from websocket");
  await waitRow(wtUser.page, "dave: from websocket");
  await send(wtUser.page, "dave", "from webtransport");
  await waitRow(wsUser.page, "erin: from webtransport");
  await wsUser.context.close();
  await wtUser.context.close();
});

/** Runs the petrel CLI against the dev topology; resolves with its stdout lines. */
function cli(args, { onStderr } = {}) {
  const child = spawn(petrelBin, ["client", "--dev", devDir, ...args], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => {
    err += d;
    onStderr?.(err);
  });
  const done = new Promise((resolve, reject) => {
    child.on("exit", (code) =>
      code === 0 ? resolve(out.trim().split("\n").filter(Boolean)) : reject(new Error(`petrel client ${args.join(" ")} exited ${code}: ${err}`)),
    );
  });
  return { child, done };
}

test("a browser user and a Rust CLI user over native QUIC exchange messages both ways", async () => {
  const browserUser = await openUser("frank");
  let listening;
  const isListening = new Promise((r) => (listening = r));
  const listener = cli(["--user", "grace", "--transport", "quic", "listen", "--count", "1", "--timeout", "30"], {
    onStderr: (err) => err.includes("listening as") && listening(),
  });
  await isListening;
  await send(browserUser.page, "grace", "browser to cli");
  const lines = await listener.done;
  const msg = JSON.parse(lines[0]);
  assert.equal(msg.from, "frank");
  assert.equal(msg.text, "browser to cli");
  const sent = await cli(["--user", "grace", "--transport", "quic", "send", "--to", "frank", "cli to browser"]).done;
  assert.equal(JSON.parse(sent[0]).status, "stored");
  await waitRow(browserUser.page, "grace: cli to browser");
  await browserUser.context.close();
});

test("reloading a page reconnects and shows no message twice", async () => {
  const alice = await openUser("henry");
  const bob = await openUser("iris");
  await send(alice.page, "iris", "before reload");
  await waitRow(bob.page, "henry: before reload");
  await bob.page.reload();
  await bob.page.waitForFunction(() => window.petrel?.client?.state === "open", null, { timeout: 15_000 });
  assert.equal(await bob.page.evaluate(() => window.petrel.client.transport), "webtransport");
  await send(alice.page, "iris", "after reload");
  await waitRow(bob.page, "henry: after reload");
  // The sender retries the same message id (as after a lost SendResult): stored once,
  // delivered once.
  const first = await alice.page.evaluate(() => window.petrel.client.send("iris", "retried", { clientMsgId: "retry-1" }));
  const again = await alice.page.evaluate(() => window.petrel.client.send("iris", "retried", { clientMsgId: "retry-1" }));
  assert.equal(again.duplicate, true);
  assert.equal(String(again.seq), String(first.seq));
  await waitRow(bob.page, "henry: retried");
  await send(alice.page, "iris", "last");
  await waitRow(bob.page, "henry: last");
  const shown = await rows(bob.page);
  const ids = shown.map((r) => r.id);
  assert.equal(new Set(ids).size, ids.length, `duplicate rows: ${JSON.stringify(shown)}`);
  const texts = shown.map((r) => r.text);
  for (const t of ["henry: before reload", "henry: after reload", "henry: retried", "henry: last"]) {
    assert.equal(texts.filter((x) => x === t).length, 1, `${t} shown once in ${JSON.stringify(texts)}`);
  }
  await alice.context.close();
  await bob.context.close();
});

test("the certificate hash endpoint answers, and a wrong pinned hash fails with a clear error", async () => {
  const res = await fetch(`${ep.http}/cert-hashes`);
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("access-control-allow-origin"), "*");
  const hashes = await res.json();
  assert.equal(hashes.algorithm, "sha-256");
  assert.match(hashes.current, /^[0-9a-f]{64}$/);
  assert.match(hashes.next, /^[0-9a-f]{64}$/);
  assert.notEqual(hashes.current, hashes.next);
  assert.equal(hashes.current, ep.cert_sha256);

  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${ep.http}/`);
  await page.waitForFunction(() => window.petrel !== undefined);
  const err = await page.evaluate(async (wrong) => {
    const cfg = await (await fetch("/client-config")).json();
    const token = (await (await fetch("/dev/token?user=judy")).json()).token;
    const client = new window.petrel.PetrelClient({
      webTransportUrl: cfg.webtransport,
      certHashesUrl: cfg.cert_hashes,
      serverCertificateHashes: [wrong],
      transport: "webtransport",
      token,
    });
    try {
      await client.connect();
      return null;
    } catch (e) {
      return { name: e.name, code: e.code, message: e.message };
    }
  }, "00".repeat(32));
  assert.ok(err, "connect with a wrong pinned hash must fail");
  assert.equal(err.name, "PetrelError");
  assert.equal(err.code, "CERTIFICATE_MISMATCH");
  assert.match(err.message, /not one the gateway serves/);
  assert.ok(err.message.includes(hashes.current), err.message);

  // The right hashes from the endpoint connect.
  const ok = await page.evaluate(async () => {
    const cfg = await (await fetch("/client-config")).json();
    const token = (await (await fetch("/dev/token?user=judy")).json()).token;
    const client = new window.petrel.PetrelClient({
      webTransportUrl: cfg.webtransport,
      certHashesUrl: cfg.cert_hashes,
      transport: "webtransport",
      token,
      storage: null,
    });
    const w = await client.connect();
    client.close();
    return [w.user, client.transport];
  });
  assert.deepEqual(ok, ["judy", "webtransport"]);
  await context.close();
});

test("a bad token is refused with the gateway's error code on both transports", async () => {
  // WebSocket over TLS: browsers cannot pin a hash for it, so this context trusts the
  // dev certificate the way a developer would by accepting it once.
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  await page.goto(`${ep.http}/`);
  await page.waitForFunction(() => window.petrel !== undefined);
  for (const transport of ["webtransport", "websocket"]) {
    const err = await page.evaluate(async (t) => {
      const cfg = await (await fetch("/client-config")).json();
      const client = new window.petrel.PetrelClient({
        webTransportUrl: cfg.webtransport,
        webSocketUrl: cfg.websocket,
        certHashesUrl: cfg.cert_hashes,
        transport: t,
        token: "not-a-token",
        storage: null,
      });
      try {
        await client.connect();
        return null;
      } catch (e) {
        return { code: e.code, message: e.message };
      }
    }, transport);
    assert.equal(err?.code, "UNAUTHENTICATED", `${transport}: ${JSON.stringify(err)}`);
  }
  await context.close();
});

test("when the gateway ends a session (token expired) the SDK reconnects with a fresh token and misses nothing", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${ep.http}/`);
  await page.waitForFunction(() => window.petrel !== undefined);
  await page.evaluate(async () => {
    const cfg = await (await fetch("/client-config")).json();
    const client = new window.petrel.PetrelClient({
      webTransportUrl: cfg.webtransport,
      certHashesUrl: cfg.cert_hashes,
      // Tokens valid 2 s: the gateway closes each session with TOKEN_EXPIRED.
      token: async () => (await (await fetch("/dev/token?user=kate&ttl=2")).json()).token,
      initialBackoffMs: 100,
      storage: null,
    });
    window.kate = { client, errors: [], texts: [] };
    client.addEventListener("error", (e) => window.kate.errors.push(e.detail.code));
    client.addEventListener("message", (e) => window.kate.texts.push(e.detail.text));
    await client.connect();
  });
  await page.waitForFunction(() => window.kate.client.stats.reconnects >= 1 && window.kate.client.state === "open", null, {
    timeout: 20_000,
  });
  const { errors, transport } = await page.evaluate(() => ({ errors: window.kate.errors, transport: window.kate.client.transport }));
  assert.ok(errors.includes("TOKEN_EXPIRED"), JSON.stringify(errors));
  assert.equal(transport, "webtransport");
  // Messages sent across the next expiries, some while kate is between connections,
  // all arrive once and in order: each reconnect resumes from the SDK's cursor.
  const texts = [];
  for (let i = 0; i < 25; i++) {
    const sent = await cli(["--user", "leo", "--transport", "quic", "send", "--to", "kate", `m${i}`]).done;
    assert.equal(JSON.parse(sent[0]).status, "stored");
    texts.push(`m${i}`);
  }
  await page.waitForFunction((n) => window.kate.texts.length >= n, texts.length, { timeout: 15_000 });
  const got = await page.evaluate(() => window.kate.texts);
  assert.deepEqual(got, texts);
  const reconnects = await page.evaluate(() => window.kate.client.stats.reconnects);
  assert.ok(reconnects >= 2, `sends spanned reconnects (${reconnects})`);
  await page.evaluate(() => window.kate.client.close());
  await context.close();
});

test("history: a new device scrolls back through what was sent before it existed", async () => {
  const nate = await openUser("nate");
  for (let i = 0; i < 15; i++) await send(nate.page, "mona", `old ${i}`);
  const mona = await openUser("mona");
  const texts = await mona.page.evaluate(async () => {
    const out = [];
    let before;
    for (;;) {
      const page = await window.petrel.client.history({ before, limit: 6 });
      out.push(...page.messages.map((m) => m.text));
      if (!page.more || page.messages.length === 0) break;
      before = page.messages[page.messages.length - 1].seq;
    }
    return out;
  });
  assert.deepEqual(texts, Array.from({ length: 15 }, (_, i) => `old ${14 - i}`));
  // The demo's "Load older" button (20 a page) shows them above, oldest at the top, once.
  await mona.page.click("#older");
  await mona.page.waitForFunction(() => window.petrel.rows().length >= 15);
  const shown = (await rows(mona.page)).map((r) => r.text);
  assert.deepEqual(shown, Array.from({ length: 15 }, (_, i) => `nate: old ${i}`));
  // Someone else's inbox is refused with the gateway's code.
  const err = await mona.page.evaluate(() =>
    window.petrel.client.history({ subject: "msg.private.nate" }).then(
      () => null,
      (e) => e.code,
    ),
  );
  assert.equal(err, "PROTOCOL");
  await nate.context.close();
  await mona.context.close();
});

test("groups: a browser's group message reaches a browser member and a CLI member; a non-member is refused", async () => {
  // Membership as the group service would write it, through the admin CLI.
  await new Promise((resolve, reject) => {
    const admin = spawn(petrelBin, ["admin", "group", "--dev", devDir, "add", "crew", "olga", "pete", "quinn"], { stdio: "ignore" });
    admin.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`petrel admin exited ${code}`))));
  });
  const olga = await openUser("olga");
  const pete = await openUser("pete", { noWebTransport: true, expect: "websocket" });
  const rita = await openUser("rita");
  let listening;
  const isListening = new Promise((r) => (listening = r));
  const quinn = cli(["--user", "quinn", "--transport", "quic", "listen", "--count", "1", "--timeout", "30"], {
    onStderr: (err) => err.includes("listening as") && listening(),
  });
  await isListening;
  const got = pete.page.evaluate(
    () =>
      new Promise((resolve, reject) => {
        setTimeout(() => reject(new Error("no group message within 10 s")), 10_000);
        window.petrel.client.addEventListener("message", (e) => {
          if (e.detail.group) resolve({ group: e.detail.group, subject: e.detail.subject, text: e.detail.text, from: e.detail.from });
        });
      }),
  );
  const r = await olga.page.evaluate(() => window.petrel.client.sendToGroup("crew", "hello crew"));
  assert.equal(r.status, "stored", `${r.status} ${r.reason} ${r.detail}`);
  assert.equal(r.subject, "msg.group.crew");
  assert.deepEqual(await got, { group: "crew", subject: "msg.group.crew", text: "hello crew", from: "olga" });
  const line = JSON.parse((await quinn.done)[0]);
  assert.equal(line.subject, "msg.group.crew");
  assert.equal(line.text, "hello crew");
  const refused = await rita.page.evaluate(() => window.petrel.client.sendToGroup("crew", "let me in"));
  assert.equal(refused.status, "rejected");
  assert.equal(refused.reason, "FORBIDDEN");
  for (const u of [olga, pete, rita]) await u.context.close();
});

test("delivery streams: a WebTransport member gets a group and direct messages interleaved, each conversation in order", async () => {
  await new Promise((resolve, reject) => {
    const admin = spawn(petrelBin, ["admin", "group", "--dev", devDir, "add", "lanes", "sam", "tess"], { stdio: "ignore" });
    admin.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`petrel admin exited ${code}`))));
  });
  const sam = await openUser("sam");
  const tess = await openUser("tess");
  const got = tess.page.evaluate(
    () =>
      new Promise((resolve, reject) => {
        const seen = { dm: [], group: [] };
        setTimeout(() => reject(new Error(`only ${JSON.stringify(seen)} within 15 s`)), 15_000);
        window.petrel.client.addEventListener("message", (e) => {
          const m = e.detail;
          if (m.from !== "sam") return;
          (m.group ? seen.group : seen.dm).push(m.text);
          if (seen.dm.length === 10 && seen.group.length === 10) resolve(seen);
        });
      }),
  );
  await sam.page.evaluate(async () => {
    const c = window.petrel.client;
    const sends = [];
    for (let i = 0; i < 10; i++) {
      sends.push(c.send("tess", `dm ${i}`), c.sendToGroup("lanes", `group ${i}`));
    }
    await Promise.all(sends);
  });
  const seen = await got;
  assert.deepEqual(seen.dm, Array.from({ length: 10 }, (_, i) => `dm ${i}`));
  assert.deepEqual(seen.group, Array.from({ length: 10 }, (_, i) => `group ${i}`));
  assert.equal(await tess.page.evaluate(() => window.petrel.client.stats.duplicatesDropped), 0);
  for (const u of [sam, tess]) await u.context.close();
});

test("receipts: a browser reader's read receipt reaches the browser sender", async () => {
  const sara = await openUser("sara");
  const tom = await openUser("tom");
  const receipt = sara.page.evaluate(
    () =>
      new Promise((resolve, reject) => {
        setTimeout(() => reject(new Error("no receipt within 10 s")), 10_000);
        window.petrel.client.addEventListener("message", (e) => {
          if (e.detail.receipt) resolve({ from: e.detail.from, kind: e.detail.receipt.kind, id: e.detail.receipt.clientMsgId });
        });
      }),
  );
  const seen = tom.page.evaluate(
    () =>
      new Promise((resolve) => {
        window.petrel.client.addEventListener("message", (e) => {
          if (e.detail.clientMsgId === "r-1" && !e.detail.outgoing) {
            window.petrel.client.receipt("read", e.detail).then(() => resolve(true));
          }
        });
      }),
  );
  const r = await sara.page.evaluate(() => window.petrel.client.send("tom", "read me", { clientMsgId: "r-1" }));
  assert.equal(r.status, "stored");
  assert.equal(await seen, true);
  assert.deepEqual(await receipt, { from: "tom", kind: "read", id: "r-1" });
  await sara.context.close();
  await tom.context.close();
});

test("typing: a WebTransport user's typing shows on a WebSocket user's page", async () => {
  const uma = await openUser("uma");
  const vic = await openUser("vic", { noWebTransport: true, expect: "websocket" });
  const seen = vic.page.evaluate(
    () =>
      new Promise((resolve, reject) => {
        setTimeout(() => reject(new Error("no typing event within 10 s")), 10_000);
        window.petrel.client.addEventListener("typing", (e) => resolve(e.detail));
      }),
  );
  await uma.page.evaluate(() => window.petrel.client.typing("vic", true));
  assert.deepEqual(await seen, { from: "uma", group: undefined, typing: true });
  // Between two WebTransport pages typing travels as datagrams both ways.
  const counters = async () => {
    const body = await (await fetch(`${ep.http}/readyz`)).text();
    const n = (k) => Number(body.match(new RegExp(`${k}=(\\d+)`))?.[1] ?? NaN);
    return { in: n("datagrams_in"), out: n("datagrams_out") };
  };
  const before = await counters();
  const wes = await openUser("wes");
  const wesSees = wes.page.evaluate(
    () =>
      new Promise((resolve, reject) => {
        setTimeout(() => reject(new Error("no typing event within 10 s")), 10_000);
        window.petrel.client.addEventListener("typing", (e) => resolve(e.detail.from));
      }),
  );
  await uma.page.evaluate(() => window.petrel.client.typing("wes", true));
  assert.equal(await wesSees, "uma");
  const after = await counters();
  assert.ok(after.in > before.in && after.out > before.out, `datagrams ${JSON.stringify(before)} -> ${JSON.stringify(after)}`);
  await uma.context.close();
  await vic.context.close();
  await wes.context.close();
});

test("presence: a browser watching a user sees it come online and go offline", async () => {
  const wendy = await openUser("wendy");
  const first = await wendy.page.evaluate(
    () =>
      new Promise((resolve, reject) => {
        setTimeout(() => reject(new Error("no presence answer within 5 s")), 5_000);
        window.petrel.client.addEventListener("presence", (e) => resolve(e.detail), { once: true });
        window.petrel.client.watch(["xena"]);
      }),
  );
  assert.deepEqual(first, { user: "xena", state: "offline" });
  const next = () =>
    wendy.page.evaluate(
      () =>
        new Promise((resolve, reject) => {
          setTimeout(() => reject(new Error("no presence change within 10 s")), 10_000);
          window.petrel.client.addEventListener("presence", (e) => resolve(e.detail.state), { once: true });
        }),
    );
  const online = next();
  const xena = await openUser("xena", { noWebTransport: true, expect: "websocket" });
  assert.equal(await online, "online");
  const offline = next();
  await xena.context.close();
  assert.equal(await offline, "offline");
  await wendy.context.close();
});

test("the demo page shows group messages, typing, presence and read receipts", async () => {
  await new Promise((resolve, reject) => {
    const admin = spawn(petrelBin, ["admin", "group", "--dev", devDir, "add", "demo", "yara", "zane"], { stdio: "ignore" });
    admin.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`petrel admin exited ${code}`))));
  });
  const yara = await openUser("yara");
  const zane = await openUser("zane");
  // Presence: zane watches yara through the form.
  await zane.page.fill("#watch input[name=users]", "yara");
  await zane.page.click("#watch button");
  await zane.page.waitForFunction(() => document.querySelector("#presence").textContent.includes("● yara"));
  // Typing: yara types to zane.
  await yara.page.fill("#compose input[name=to]", "zane");
  await yara.page.type("#compose input[name=text]", "hel");
  await zane.page.waitForFunction(() => document.querySelector("#typing").textContent.startsWith("yara is typing"));
  // A direct message is read by zane's page: yara's row says so.
  await yara.page.fill("#compose input[name=text]", "hello zane");
  await yara.page.click("#compose button");
  await waitRow(zane.page, "yara: hello zane");
  await yara.page.waitForFunction(() => [...document.querySelectorAll("#messages li.mine .meta")].some((m) => m.textContent.includes("read by zane")));
  // A group message through the form ("#demo").
  await yara.page.fill("#compose input[name=to]", "#demo");
  await yara.page.fill("#compose input[name=text]", "hello group");
  await yara.page.click("#compose button");
  await waitRow(zane.page, "yara #demo: hello group");
  await yara.context.close();
  await zane.context.close();
});
