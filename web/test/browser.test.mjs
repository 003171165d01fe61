// Browser tests: real headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core) against a real `petrel dev` topology (hub and leaf nats-server,
// gateway with WebTransport, WebSocket and QUIC), serving the demo page from dist/.
//
// Needs: `npm run build` first, and the petrel binary at
// $CARGO_TARGET_DIR/debug/petrel (scripts/test.sh provides both).
import { test as nodeTest, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { HOOK_MS, TEST_MS, httpGet, launchChromium, pageWait, petrelBin, run, startDev, waitFor, within } from "./topology.mjs";

const test = (name, fn) => nodeTest(name, { timeout: TEST_MS }, fn);

let dev;
let devDir;
let ep;
let browser;

before(async () => {
  dev = await startDev();
  ({ dir: devDir, ep } = dev);
  browser = await launchChromium();
}, { timeout: HOOK_MS });

after(async () => {
  try {
    if (browser) await within(30_000, browser.close(), "Chromium to close");
  } finally {
    await dev?.stop();
  }
}, { timeout: HOOK_MS });

/** A fresh browser context whose Playwright actions (goto, click, fill, waits) fail after 15 s. */
async function newContext(options) {
  const context = await browser.newContext(options);
  context.setDefaultTimeout(15_000);
  return context;
}

/** Evaluates `fn(arg)` in `page`, failing after `ms` (saying that `what` did not happen) if its promise has not settled. */
function evaluateWithin(page, ms, what, fn, arg) {
  return within(ms, page.evaluate(fn, arg), what);
}

/** Opens the demo page in `context`; page errors are logged as `who`'s. */
async function openDemo(context, who = "page") {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[${who}] page error: ${e.message}`));
  await page.goto(`${ep.http}/`);
  await pageWait(page, "the demo page to set window.petrel", () => window.petrel !== undefined);
  return page;
}

/** A page of the demo in a fresh browser context, signed in as `user`. */
async function openUser(user, { noWebTransport = false, expect = "webtransport" } = {}) {
  // The demo page uses petrel dev's plain loopback WebSocket for the fallback, so no
  // certificate has to be trusted (the wss listener is tested with a bad token below).
  const context = await newContext();
  if (noWebTransport) {
    await context.addInitScript(() => {
      delete window.WebTransport;
    });
  }
  const page = await openDemo(context, user);
  const r = await evaluateWithin(page, 20_000, `${user} to sign in`, (u) => window.petrel.signIn(u).then((x) => x.transport), user);
  assert.equal(r, expect, `${user} connected over ${r}`);
  return { page, context };
}

/** Sends through the demo page; resolves with the SendResult (`seq` as a string). */
async function send(page, to, text) {
  const r = await evaluateWithin(page, 15_000, `the SendResult of "${text}"`, ([t, x]) => window.petrel.send(t, x), [to, text]);
  assert.equal(r.status, "stored", JSON.stringify(r));
  return r;
}

async function waitRow(page, text) {
  await pageWait(page, `a row ending "${text}"`, (t) => window.petrel.rows().some((r) => r.text.endsWith(t)), text);
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
  await pageWait(alice.page, "alice's own 21 messages and bob's 1 on the wire", () => window.petrel.client.stats.wireDeliveries >= 22);
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

/** Runs the petrel CLI against the dev topology; `done` resolves with its stdout lines. */
function cli(args, options) {
  return run(petrelBin, ["client", "--dev", devDir, ...args], options);
}

/** Starts `petrel client listen` for one message as `user` over QUIC; resolves once it is listening. */
async function cliListen(user) {
  let listening;
  const isListening = new Promise((r) => (listening = r));
  const listener = cli(["--user", user, "--transport", "quic", "listen", "--count", "1", "--timeout", "30"], {
    ms: 45_000,
    onStderr: (err) => err.includes("listening as") && listening(),
  });
  // An early exit fails here rather than waiting out the timer.
  await within(20_000, Promise.race([isListening, listener.done]), `petrel client listen (${user}) to print "listening as"`);
  return listener;
}

/** Adds `members` to `group`, as the group service would, through the admin CLI. */
async function addGroup(group, ...members) {
  await run(petrelBin, ["admin", "group", "--dev", devDir, "add", group, ...members]).done;
}

async function addContacts(user, ...contacts) {
  await run(petrelBin, ["admin", "contact", "--dev", devDir, "add", user, ...contacts]).done;
}

test("a browser user and a Rust CLI user over native QUIC exchange messages both ways", async () => {
  const browserUser = await openUser("frank");
  const listener = await cliListen("grace");
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

/** Waits until `page`'s client has acknowledged `subject` up to `seq`. */
async function waitAcked(page, who, subject, seq) {
  await pageWait(
    page,
    `${who}'s SDK to acknowledge ${subject}/${seq}`,
    ([s, q]) => BigInt(window.petrel.client?.cursorMap[s] ?? 0) >= BigInt(q),
    [subject, String(seq)],
  );
}

test("reloading a page resumes from the SDK's cursors: what was sent meanwhile arrives once each, in order", async () => {
  const henry = await openUser("henry");
  const iris = await openUser("iris");
  const inbox = "msg.private.iris";
  const before = await send(henry.page, "iris", "before reload");
  await waitAcked(iris.page, "iris", inbox, before.seq);
  // The reloaded page signs in once /client-config answers: holding that answer until
  // the messages are stored makes them arrive while iris has no connection.
  let release;
  const held = new Promise((r) => (release = r));
  await iris.page.route("**/client-config", async (route) => {
    await held;
    await route.continue();
  });
  // Each message iris should get after the reload, as the SDK names it (`subject/seq`).
  const expected = [];
  const sent = (r, text) => expected.push({ id: `${r.subject}/${r.seq}`, text });
  try {
    await iris.page.reload();
    for (let i = 0; i < 5; i++) sent(await send(henry.page, "iris", `away ${i}`), `away ${i}`);
  } finally {
    release();
  }
  await pageWait(iris.page, "the reloaded page to reconnect", () => window.petrel?.client?.state === "open");
  assert.equal(await iris.page.evaluate(() => window.petrel.client.transport), "webtransport");
  // The sender retries the same message id (as after a lost SendResult): stored once,
  // delivered once.
  const retry = () =>
    evaluateWithin(henry.page, 15_000, "the SendResult of the retried send", () =>
      window.petrel.client.send("iris", "retried", { clientMsgId: "retry-1" }).then((r) => ({ ...r, seq: String(r.seq) })),
    );
  const first = await retry();
  const again = await retry();
  assert.equal(again.duplicate, true);
  assert.equal(again.seq, first.seq);
  sent(first, "retried");
  const last = await send(henry.page, "iris", "last");
  sent(last, "last");
  await waitAcked(iris.page, "iris", inbox, last.seq);
  // What the new page's client handed over since the reload (the page itself hides a
  // row it already shows, and restores rows from sessionStorage: its rows prove nothing).
  const { delivered, stats } = await iris.page.evaluate(() => ({ delivered: window.petrel.delivered, stats: window.petrel.client.stats }));
  assert.deepEqual(
    delivered.map(({ id, text }) => ({ id, text })),
    expected,
    "the resume delivers exactly what was sent while away, then what followed, in order",
  );
  const n = expected.length;
  assert.deepEqual(
    stats,
    { wireDeliveries: n, appDeliveries: n, duplicatesDropped: 0, reconnects: 0 },
    "nothing acknowledged before the reload comes again, not even on the wire",
  );
  await henry.context.close();
  await iris.context.close();
});

test("the certificate hash endpoint answers, and a wrong pinned hash fails with a clear error", async () => {
  const res = await httpGet(`${ep.http}/cert-hashes`);
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("access-control-allow-origin"), "*");
  const hashes = await res.json();
  assert.equal(hashes.algorithm, "sha-256");
  assert.match(hashes.current, /^[0-9a-f]{64}$/);
  assert.match(hashes.next, /^[0-9a-f]{64}$/);
  assert.notEqual(hashes.current, hashes.next);
  assert.equal(hashes.current, ep.cert_sha256);

  const context = await newContext();
  const page = await openDemo(context, "judy");
  const err = await evaluateWithin(page, 20_000, "connect with a wrong pinned hash to fail", async (wrong) => {
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
  const ok = await evaluateWithin(page, 20_000, "connect with the served hashes", async () => {
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
  const context = await newContext({ ignoreHTTPSErrors: true });
  const page = await openDemo(context);
  for (const transport of ["webtransport", "websocket"]) {
    const err = await evaluateWithin(page, 20_000, `the ${transport} connect with a bad token to be refused`, async (t) => {
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
  const context = await newContext();
  const page = await openDemo(context, "kate");
  await evaluateWithin(page, 20_000, "kate to connect", async () => {
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
  await pageWait(
    page,
    "kate's client to reconnect after its token expired",
    () => window.kate.client.stats.reconnects >= 1 && window.kate.client.state === "open",
    null,
    20_000,
  );
  const { errors, transport } = await page.evaluate(() => ({ errors: window.kate.errors, transport: window.kate.client.transport }));
  assert.ok(errors.includes("TOKEN_EXPIRED"), JSON.stringify(errors));
  assert.equal(transport, "webtransport");
  // Messages sent across the next expiries, some while kate is between connections,
  // all arrive once and in order: each reconnect resumes from the SDK's cursor.
  // At least 25, and on until the sends have spanned two more reconnects (each token
  // lives 2 s; how many sends that takes depends on the machine).
  const texts = [];
  const reconnectsAtStart = await page.evaluate(() => window.kate.client.stats.reconnects);
  const until = Date.now() + 60_000;
  for (let i = 0; texts.length < 25 || (await page.evaluate(() => window.kate.client.stats.reconnects)) < reconnectsAtStart + 2; i++) {
    assert.ok(Date.now() < until, `the sends did not span two reconnects within 60 s (${texts.length} sent)`);
    const sent = await cli(["--user", "leo", "--transport", "quic", "send", "--to", "kate", `m${i}`]).done;
    assert.equal(JSON.parse(sent[0]).status, "stored");
    texts.push(`m${i}`);
  }
  await pageWait(page, `kate to get all ${texts.length} messages`, (n) => window.kate.texts.length >= n, texts.length);
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
  const texts = await evaluateWithin(mona.page, 15_000, "mona's history pages", async () => {
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
  await pageWait(mona.page, "Load older to show 15 rows", () => window.petrel.rows().length >= 15);
  const shown = (await rows(mona.page)).map((r) => r.text);
  assert.deepEqual(shown, Array.from({ length: 15 }, (_, i) => `nate: old ${i}`));
  // Someone else's inbox is refused with the gateway's code.
  const err = await evaluateWithin(mona.page, 15_000, "the answer to a history request on nate's inbox", () =>
    window.petrel.client.history({ subject: "msg.private.nate" }).then(
      () => null,
      (e) => e.code,
    ),
  );
  assert.equal(err, "PROTOCOL");
  await nate.context.close();
  await mona.context.close();
});

test("conversations: a new browser device lists unread counts, another tab reads them live, an edit reaches the page, a pin comes first", async () => {
  const rhea = await openUser("rhea");
  for (let i = 0; i < 3; i++) await send(rhea.page, "saul", `hey ${i}`);
  await send(rhea.page, "saul", "lunch?");
  // saul's first device: no cursor, no transcript; the list comes from the message service.
  const saul = await openUser("saul");
  const list = await evaluateWithin(saul.page, 20_000, "saul's conversation list", async () => {
    for (;;) {
      const l = await window.petrel.refreshConversations();
      const r = l.find((c) => c.name === "rhea");
      if (r && r.unread === 4) return l;
      await new Promise((res) => setTimeout(res, 100));
    }
  });
  assert.equal(list.find((c) => c.name === "rhea").last, "lunch?");
  await pageWait(saul.page, "the list on the page", () => document.querySelector('#conversations li[data-name="rhea"] .unread')?.textContent === "4");
  // saul's second tab marks it read: the first tab's list follows live.
  const tab = await openUser("saul");
  await evaluateWithin(tab.page, 10_000, "marking rhea read", () => window.petrel.client.markRead("rhea"));
  await pageWait(saul.page, "the unread count to clear", () => !document.querySelector('#conversations li[data-name="rhea"] .unread'), undefined, 20_000);
  // rhea writes while saul's page is open, then edits it: the page shows the new text.
  const sent = await send(rhea.page, "saul", "see you at 5");
  await waitRow(saul.page, "see you at 5");
  const edited = await evaluateWithin(rhea.page, 15_000, "the edit", (id) => window.petrel.edit(id, "see you at 6"), sent.clientMsgId);
  assert.equal(edited.status, "stored", JSON.stringify(edited));
  await pageWait(saul.page, "the edited row", () => [...document.querySelectorAll("#messages li")].some((li) => li.firstChild.textContent === "rhea: see you at 6 (edited)"), undefined, 20_000);
  // tess writes last, so she comes first; saul pins rhea on the page: rhea comes
  // first, and his other tab's list agrees.
  const tess = await openUser("tess");
  await send(tess.page, "saul", "hello saul");
  await pageWait(saul.page, "tess first in the list", () => document.querySelector("#conversations li")?.dataset.name === "tess", undefined, 20_000);
  await saul.page.click('#conversations li[data-name="rhea"] .pin');
  await pageWait(saul.page, "rhea pinned first", () => {
    const first = document.querySelector("#conversations li");
    return first?.dataset.name === "rhea" && first.classList.contains("pinned");
  }, undefined, 20_000);
  const other = await evaluateWithin(tab.page, 10_000, "the other tab's list", async () => {
    const page = await window.petrel.client.conversations();
    return page.conversations.map((c) => ({ user: c.user, pinned: c.pinned }));
  });
  assert.deepEqual(other[0], { user: "rhea", pinned: true }, JSON.stringify(other));
  await rhea.context.close();
  await saul.context.close();
  await tab.context.close();
  await tess.context.close();
});

test("groups: a browser's group message reaches a browser member and a CLI member; a non-member is refused", async () => {
  await addGroup("crew", "olga", "pete", "quinn");
  const olga = await openUser("olga");
  const pete = await openUser("pete", { noWebTransport: true, expect: "websocket" });
  const rita = await openUser("rita");
  const quinn = await cliListen("quinn");
  const got = pete.page.evaluate(
    () =>
      new Promise((resolve, reject) => {
        setTimeout(() => reject(new Error("no group message within 10 s")), 10_000);
        window.petrel.client.addEventListener("message", (e) => {
          if (e.detail.group) resolve({ group: e.detail.group, subject: e.detail.subject, text: e.detail.text, from: e.detail.from });
        });
      }),
  );
  const r = await evaluateWithin(olga.page, 15_000, "the SendResult of olga's group message", () =>
    window.petrel.client.sendToGroup("crew", "hello crew"),
  );
  assert.equal(r.status, "stored", `${r.status} ${r.reason} ${r.detail}`);
  assert.equal(r.subject, "msg.group.crew");
  assert.deepEqual(await got, { group: "crew", subject: "msg.group.crew", text: "hello crew", from: "olga" });
  const line = JSON.parse((await quinn.done)[0]);
  assert.equal(line.subject, "msg.group.crew");
  assert.equal(line.text, "hello crew");
  const refused = await evaluateWithin(rita.page, 15_000, "the SendResult of rita's group message", () =>
    window.petrel.client.sendToGroup("crew", "let me in"),
  );
  assert.equal(refused.status, "rejected");
  assert.equal(refused.reason, "FORBIDDEN");
  for (const u of [olga, pete, rita]) await u.context.close();
});

test("delivery streams: a WebTransport member gets a group and direct messages interleaved, each conversation in order", async () => {
  await addGroup("lanes", "sam", "tess");
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
  await evaluateWithin(sam.page, 15_000, "the SendResults of sam's 20 sends", async () => {
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
      new Promise((resolve, reject) => {
        setTimeout(() => reject(new Error("tom got no r-1 to answer with a receipt within 10 s")), 10_000);
        window.petrel.client.addEventListener("message", (e) => {
          if (e.detail.clientMsgId === "r-1" && !e.detail.outgoing) {
            window.petrel.client.receipt("read", e.detail).then(() => resolve(true));
          }
        });
      }),
  );
  const r = await evaluateWithin(sara.page, 15_000, "the SendResult of r-1", () =>
    window.petrel.client.send("tom", "read me", { clientMsgId: "r-1" }),
  );
  assert.equal(r.status, "stored");
  assert.equal(await seen, true);
  assert.deepEqual(await receipt, { from: "tom", kind: "read", id: "r-1" });
  await sara.context.close();
  await tom.context.close();
});

test("typing: a WebTransport user's typing shows on a WebSocket user's page", async () => {
  await addContacts("uma", "vic", "wes");
  const uma = await openUser("uma");
  const vic = await openUser("vic", { noWebTransport: true, expect: "websocket" });
  const seen = vic.page.evaluate(
    () =>
      new Promise((resolve, reject) => {
        setTimeout(() => reject(new Error("no typing event within 10 s")), 10_000);
        window.petrel.client.addEventListener("typing", (e) => resolve(e.detail));
      }),
  );
  await evaluateWithin(uma.page, 5_000, "uma's typing to vic to be written", () => window.petrel.client.typing("vic", true));
  assert.deepEqual(await seen, { from: "uma", group: undefined, typing: true });
  // Between two WebTransport pages typing travels as datagrams both ways.
  const counters = async () => {
    const body = await (await httpGet(`${ep.http}/readyz`)).text();
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
  await evaluateWithin(uma.page, 5_000, "uma's typing to wes to be written", () => window.petrel.client.typing("wes", true));
  assert.equal(await wesSees, "uma");
  const after = await counters();
  assert.ok(after.in > before.in && after.out > before.out, `datagrams ${JSON.stringify(before)} -> ${JSON.stringify(after)}`);
  await uma.context.close();
  await vic.context.close();
  await wes.context.close();
});

test("push: a browser registers a Web Push subscription with the gateway's VAPID key and is woken while closed", async () => {
  assert.ok(ep.push, "petrel dev runs with --push");
  const yara = await openUser("yara");
  // A subscription as a push service would hand one out: a fresh P-256 key and auth
  // secret (headless Chromium has no push service of its own), on the stand-in.
  const result = await evaluateWithin(yara.page, 15_000, "the push registration", async (providers) => {
    const cfg = await (await fetch("/client-config")).json();
    const pair = await crypto.subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, true, ["deriveBits"]);
    const raw = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
    const b64 = (b) => btoa(String.fromCharCode(...b)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
    const auth = crypto.getRandomValues(new Uint8Array(16));
    const bad = await window.petrel.client
      .registerPush({ platform: "webpush", endpoint: `${providers}/wp/yara`, keys: { p256dh: "nope", auth: b64(auth) } })
      .then(() => "stored", (e) => e.code);
    await window.petrel.client.registerPush(
      { platform: "webpush", endpoint: `${providers}/wp/browser-yara`, keys: { p256dh: b64(raw), auth: b64(auth) } },
      { preview: false },
    );
    return { vapid: cfg.vapidPublicKey ?? cfg.vapid_public_key, bad };
  }, ep.push.providers);
  assert.equal(result.vapid, ep.push.vapid_public_key, "/client-config hands out the VAPID key");
  assert.equal(result.bad, "INVALID_MESSAGE", "a malformed subscription is refused");
  // The app is closed: the SDK says goodbye (a context closed without it is noticed
  // only at the transport's idle timeout, and the device counts as online until then).
  await evaluateWithin(yara.page, 10_000, "yara's client to close", () => window.petrel.client.close());
  await yara.context.close();
  // The worker pushes only a device that is offline: wait until the gateway says so.
  await addContacts("zack", "yara");
  await waitFor(
    async () =>
      (await run(petrelBin, ["client", "--dev", devDir, "--user", "zack", "watch", "--users", "yara", "--timeout", "1"]).done).some(
        (l) => JSON.parse(l).state.toLowerCase() === "offline",
      ),
    40_000,
    "yara to be offline",
  );
  await run(petrelBin, ["client", "--dev", devDir, "--user", "zack", "send", "--to", "yara", "wake up"]).done;
  // The worker signed the request with VAPID and encrypted it for the subscription;
  // the stand-in checked the VAPID token before answering (it does not hold this
  // subscription's private key, so it answers 410 and the target is pruned).
  const pushed = await waitForPush(ep.push.received, "browser-yara", 30_000);
  assert.equal(pushed.provider, "webpush");
  assert.equal(pushed.headers["content-encoding"], "aes128gcm");
  assert.ok(pushed.headers.ttl && pushed.headers.urgency && pushed.headers.topic, JSON.stringify(pushed.headers));
  assert.ok(!pushed.raw.includes("wake up"), "the payload travels encrypted");
});

/** The first push the stand-ins logged for `token`, waiting up to `ms`. */
async function waitForPush(file, token, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (existsSync(file)) {
      const hit = readFileSync(file, "utf8")
        .split("\n")
        .filter(Boolean)
        .map((l) => JSON.parse(l))
        .find((r) => r.token === token);
      if (hit) return hit;
    }
    if (Date.now() > deadline) throw new Error(`no push for ${token} within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test("presence: a browser watching a user sees it come online and go offline", async () => {
  await addContacts("wendy", "xena");
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
  await addGroup("demo", "yara", "zane");
  const yara = await openUser("yara");
  const zane = await openUser("zane");
  // Presence: zane watches yara through the form.
  await zane.page.fill("#watch input[name=users]", "yara");
  await zane.page.click("#watch button");
  await pageWait(zane.page, "zane's page to show yara online", () => document.querySelector("#presence").textContent.includes("● yara"));
  // Typing: yara types to zane.
  await yara.page.fill("#compose input[name=to]", "zane");
  await yara.page.type("#compose input[name=text]", "hel");
  await pageWait(zane.page, "zane's page to show yara typing", () => document.querySelector("#typing").textContent.startsWith("yara is typing"));
  // A direct message is read by zane's page: yara's row says so.
  await yara.page.fill("#compose input[name=text]", "hello zane");
  await yara.page.click("#compose button");
  await waitRow(zane.page, "yara: hello zane");
  await pageWait(yara.page, "yara's row to say read by zane", () =>
    [...document.querySelectorAll("#messages li.mine .meta")].some((m) => m.textContent.includes("read by zane")),
  );
  // A group message through the form ("#demo").
  await yara.page.fill("#compose input[name=to]", "#demo");
  await yara.page.fill("#compose input[name=text]", "hello group");
  await yara.page.click("#compose button");
  await waitRow(zane.page, "yara #demo: hello group");
  await yara.context.close();
  await zane.context.close();
});
