// SDK behaviour that a real gateway does not show on demand (yet): wire duplicates,
// drops in the middle of a send, reconnect timing. The SDK runs in real headless
// Chromium; on the other end is a scripted fake gateway speaking the real protocol
// (the generated protobuf schemas and the real framing) over a loopback WebSocket.
import { test as nodeTest, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { WebSocketServer } from "ws";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { proto, encodeFrame, FrameDecoder, errorCodeName, errorCodeOfClose, isPermanent, backoffCeilingMs } from "../dist/petrel.js";
import { HOOK_MS, TEST_MS, launchChromium, pageWait, within } from "./topology.mjs";

/** A test with its own time limit. */
const test = (name, fn) => nodeTest(name, { timeout: TEST_MS }, fn);

const dist = join(dirname(fileURLToPath(import.meta.url)), "../dist");
let server;
let wss;
let base;
let browser;
/** Called with each new fake-gateway connection. */
let onConnection = async () => {};
let connections = 0;

/** One connection to the fake gateway: read ClientFrames, write ServerFrames. */
class FakeConn {
  constructor(ws) {
    this.ws = ws;
    this.decoder = new FrameDecoder(1 << 20);
    this.frames = [];
    this.waiters = [];
    ws.on("message", (data) => {
      this.decoder.push(new Uint8Array(data));
      for (let f = this.decoder.next(); f; f = this.decoder.next()) {
        const frame = fromBinary(proto.ClientFrameSchema, f);
        if (frame.kind.case === "ping") continue;
        const w = this.waiters.shift();
        if (w) w(frame);
        else this.frames.push(frame);
      }
    });
  }
  /** The next ClientFrame (pings skipped). */
  next(ms = 10_000) {
    const f = this.frames.shift();
    if (f) return Promise.resolve(f);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error("no frame from the SDK in time")), ms);
      this.waiters.push((x) => {
        clearTimeout(t);
        resolve(x);
      });
    });
  }
  send(kind, value) {
    const frame = create(proto.ServerFrameSchema, { kind: { case: kind, value } });
    this.ws.send(encodeFrame(toBinary(proto.ServerFrameSchema, frame)));
  }
  async welcome() {
    const hello = await this.next();
    assert.equal(hello.kind.case, "hello");
    this.send("welcome", create(proto.WelcomeSchema, { user: "bob", device: hello.kind.value.device, connectionId: String(connections), gatewayId: "fake" }));
    return hello.kind.value;
  }
  close(code, reason) {
    this.ws.close(code, reason);
  }
}

function message(seq, text) {
  return create(proto.MessageSchema, {
    subject: "msg.private.bob",
    seq: BigInt(seq),
    from: "alice",
    to: "bob",
    clientMsgId: `m${seq}`,
    content: new TextEncoder().encode(text),
    contentType: "text/plain",
  });
}

before(async () => {
  server = createServer((req, res) => {
    if (req.url === "/sdk.html") {
      res.writeHead(200, { "content-type": "text/html" });
      res.end(`<!doctype html><script type="module">import * as sdk from "./petrel.js"; window.sdk = sdk;</script>`);
      return;
    }
    if (req.url === "/petrel.js") {
      res.writeHead(200, { "content-type": "text/javascript" });
      res.end(readFileSync(join(dist, "petrel.js")));
      return;
    }
    res.writeHead(404).end();
  });
  wss = new WebSocketServer({ server, path: "/ws" });
  wss.on("connection", (ws) => {
    connections++;
    onConnection(new FakeConn(ws)).catch((e) => console.error("fake gateway:", e));
  });
  await within(5_000, new Promise((r) => server.listen(0, "127.0.0.1", r)), "the fake gateway to listen");
  base = `127.0.0.1:${server.address().port}`;
  browser = await launchChromium();
}, { timeout: HOOK_MS });

after(async () => {
  try {
    if (browser) await within(30_000, browser.close(), "Chromium to close");
  } finally {
    for (const ws of wss?.clients ?? []) ws.terminate();
    server?.closeAllConnections();
    if (server) await within(5_000, new Promise((r) => server.close(r)), "the fake gateway to close");
  }
}, { timeout: HOOK_MS });

/**
 * The SDK test page in a fresh context, closed when test `t` ends (a failed test's
 * client must not reconnect into the next test's fake gateway).
 */
async function sdkPage(t, init) {
  const context = await browser.newContext();
  context.setDefaultTimeout(15_000);
  t.after(() => context.close());
  if (init) await context.addInitScript(init);
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`page error: ${e.message}`));
  await page.goto(`http://${base}/sdk.html`);
  await pageWait(page, "the SDK test page to load the SDK", () => window.sdk !== undefined);
  return page;
}

/** Evaluates `fn(arg)` in `page`, failing after `ms` (saying that `what` did not happen) if its promise has not settled. */
function evaluateWithin(page, ms, what, fn, arg) {
  return within(ms, page.evaluate(fn, arg), what);
}

test("the app never sees a message twice, on one connection or across a reconnect", async (t) => {
  const hellos = [];
  onConnection = async (c) => {
    hellos.push(await c.welcome());
    if (hellos.length === 1) {
      c.send("deliver", create(proto.DeliverSchema, { messages: [message(1, "one"), message(1, "one")] }));
      c.send("deliver", create(proto.DeliverSchema, { messages: [message(2, "two")] }));
      // Wait for the acks, then drop the connection as a gateway going away would.
      for (let acked = 0n; acked < 2n; ) acked = (await c.next()).kind.value.cursors[0].seq;
      c.close(4012, "going away");
    } else {
      // A resume that starts before the cursor (as a cache might): 1 and 2 again, then 3.
      c.send("deliver", create(proto.DeliverSchema, { messages: [message(1, "one"), message(2, "two"), message(3, "three")] }));
    }
  };
  const page = await sdkPage(t);
  const result = await evaluateWithin(page, 15_000, "three messages, then a quiet 200 ms", async (url) => {
    const seen = [];
    const client = new window.sdk.PetrelClient({ webSocketUrl: url, token: "t", device: "d1", initialBackoffMs: 50 });
    client.addEventListener("message", (e) => seen.push(e.detail.text));
    await client.connect();
    await new Promise((resolve) => {
      const check = () => (seen.length >= 3 ? resolve() : setTimeout(check, 20));
      check();
    });
    await new Promise((r) => setTimeout(r, 200)); // let any stray duplicate arrive
    const r = { seen, stats: client.stats, transport: client.transport, cursors: client.cursorMap };
    client.close();
    return r;
  }, `ws://${base}/ws`);
  assert.deepEqual(result.seen, ["one", "two", "three"]);
  assert.equal(result.transport, "websocket");
  assert.equal(result.stats.appDeliveries, 3);
  assert.equal(result.stats.wireDeliveries, 6);
  assert.equal(result.stats.duplicatesDropped, 3);
  assert.equal(result.stats.reconnects, 1);
  assert.deepEqual(result.cursors, { "msg.private.bob": "3" });
  // The second Hello carried the cursor the app had acknowledged.
  assert.deepEqual(
    hellos[1].cursors.map((c) => [c.subject, c.seq]),
    [["msg.private.bob", 2n]],
  );
});

test("a send cut off by a drop is sent again with the same id and resolves once", async (t) => {
  const sendIds = [];
  onConnection = async (c) => {
    await c.welcome();
    const f = await c.next();
    assert.equal(f.kind.case, "send");
    sendIds.push(f.kind.value.clientMsgId);
    if (sendIds.length === 1) {
      c.close(4012, "going away"); // no SendResult: the SDK cannot know whether it was stored
    } else {
      c.send(
        "sendResult",
        create(proto.SendResultSchema, {
          clientMsgId: f.kind.value.clientMsgId,
          status: proto.SendResult_Status.STORED,
          subject: "msg.private.carol",
          seq: 7n,
          duplicate: true,
        }),
      );
    }
  };
  const page = await sdkPage(t);
  const r = await evaluateWithin(page, 15_000, "the re-sent send to resolve", async (url) => {
    const client = new window.sdk.PetrelClient({ webSocketUrl: url, token: "t", device: "d2", initialBackoffMs: 50, storage: null });
    await client.connect();
    const res = await client.send("carol", "hello", { clientMsgId: "keep-me" });
    client.close();
    return { status: res.status, seq: String(res.seq), duplicate: res.duplicate, reconnects: client.stats.reconnects };
  }, `ws://${base}/ws`);
  assert.deepEqual(sendIds, ["keep-me", "keep-me"]);
  assert.deepEqual(r, { status: "stored", seq: "7", duplicate: true, reconnects: 1 });
});

test("read marks and receipts made while reconnecting are written after Welcome, the latest mark per conversation", async (t) => {
  const after = [];
  let first = true;
  onConnection = async (c) => {
    await c.welcome();
    if (first) {
      first = false;
      c.close(4012, "going away");
      return;
    }
    for (;;) {
      const f = await c.next().catch(() => null);
      if (!f) return;
      after.push(f.kind.case === "markRead" ? `read ${f.kind.value.conversation.value} ${f.kind.value.seq}` : `${f.kind.case} ${f.kind.value.seq}`);
    }
  };
  const page = await sdkPage(t);
  await evaluateWithin(page, 15_000, "the marks to be made while reconnecting", async (url) => {
    const client = new window.sdk.PetrelClient({ webSocketUrl: url, token: "t", device: "d3", initialBackoffMs: 2000, storage: null });
    window.client = client;
    await client.connect();
    while (client.state === "open") await new Promise((r) => setTimeout(r, 10));
    await client.markRead({ group: "g" }, 5n);
    await client.markRead({ group: "g" }, 9n);
    await client.receipt("read", { subject: "msg.private.bob", seq: 3n, from: "alice", clientMsgId: "m3" });
    await client.typing("alice");
  }, `ws://${base}/ws`);
  await pageWait(page, "the reconnect", () => window.client.state === "open", null, 10_000);
  await within(5_000, (async () => { while (after.length < 2) await new Promise((r) => setTimeout(r, 20)); })(), "the kept frames");
  await page.evaluate(() => window.client.close());
  assert.deepEqual(after, ["read g 9", "receipt 3"]);
});

test("a queued send resolves as queued, its late stored result is an event, and it is not re-sent", async (t) => {
  const seen = [];
  onConnection = async (c) => {
    await c.welcome();
    const f = await c.next();
    assert.equal(f.kind.case, "send");
    const id = f.kind.value.clientMsgId;
    seen.push(id);
    if (seen.length > 1) return;
    // The hub is away: durable at the edge only. Then it comes back and stores it.
    c.send("sendResult", create(proto.SendResultSchema, { clientMsgId: id, status: proto.SendResult_Status.QUEUED, subject: "msg.private.carol", msgId: `dm:bob:${id}` }));
    await new Promise((r) => setTimeout(r, 100));
    c.send("sendResult", create(proto.SendResultSchema, { clientMsgId: id, status: proto.SendResult_Status.STORED, subject: "msg.private.carol", seq: 12n }));
    await new Promise((r) => setTimeout(r, 50));
    c.close(4012, "going away");
  };
  const page = await sdkPage(t);
  const r = await evaluateWithin(page, 15_000, "the queued send, its stored result and the reconnect", async (url) => {
    const client = new window.sdk.PetrelClient({ webSocketUrl: url, token: "t", device: "d5", initialBackoffMs: 50, storage: null });
    const late = new Promise((resolve, reject) => {
      setTimeout(() => reject(new Error("no sendresult event within 5 s")), 5000);
      client.addEventListener("sendresult", (e) => resolve(e.detail));
    });
    await client.connect();
    const first = await client.send("carol", "while away", { clientMsgId: "q1" });
    const stored = await late;
    // After the reconnect the next send is new; q1 is not sent again.
    await new Promise((resolve, reject) => {
      setTimeout(() => reject(new Error("no reconnect within 5 s")), 5000);
      client.addEventListener("state", (e) => e.detail.state === "open" && resolve());
    });
    void client.send("carol", "after", { clientMsgId: "after" });
    await new Promise((r) => setTimeout(r, 300));
    client.close();
    return { first: first.status, stored: stored.status, storedId: stored.clientMsgId, seq: String(stored.seq) };
  }, `ws://${base}/ws`);
  assert.deepEqual(r, { first: "queued", stored: "stored", storedId: "q1", seq: "12" });
  assert.deepEqual(seen.slice(0, 2), ["q1", "after"], `sends seen by the gateway: ${seen}`);
});

test("reconnect backoff waits, and the browser coming back online retries at once", async (t) => {
  let accepted = 0;
  let reconnectedAt = 0;
  onConnection = async (c) => {
    accepted++;
    await c.welcome();
    if (accepted === 1) c.close(4012, "going away");
    else reconnectedAt = Date.now();
  };
  // Full jitter is random; fix it at 99% of the ceiling so the wait is known.
  const page = await sdkPage(t, () => {
    Math.random = () => 0.99;
  });
  await evaluateWithin(page, 15_000, "the first connect", async (url) => {
    const client = new window.sdk.PetrelClient({ webSocketUrl: url, token: "t", device: "d3", initialBackoffMs: 60_000, maxBackoffMs: 60_000, storage: null });
    window.client = client;
    await client.connect();
  }, `ws://${base}/ws`);
  await pageWait(page, "the client to schedule a reconnect", () => window.client.retryAt !== null);
  // Full jitter at 99% of a 60 s ceiling: the next attempt is ~59 s away.
  const wait = await page.evaluate(() => window.client.retryAt - Date.now());
  assert.ok(wait > 50_000 && wait <= 60_000, `next attempt in ${wait} ms`);
  assert.equal(accepted, 1);
  const onlineAt = Date.now();
  await page.evaluate(() => window.dispatchEvent(new Event("online")));
  await pageWait(page, "the reconnect right after `online`", () => window.client.state === "open", null, 10_000);
  assert.equal(accepted, 2);
  assert.ok(reconnectedAt - onlineAt < 10_000, "reconnected right after `online`, not after the backoff");
  await page.evaluate(() => window.client.close());
});

test("when WebTransport fails the SDK falls back, and remembers it for the next connect", async (t) => {
  onConnection = async (c) => {
    await c.welcome();
  };
  // Count WebTransport attempts.
  const page = await sdkPage(t, () => {
    const Real = window.WebTransport;
    window.wtAttempts = 0;
    window.WebTransport = function (...args) {
      window.wtAttempts++;
      return new Real(...args);
    };
  });
  const r = await evaluateWithin(page, 20_000, "two connects that fall back to WebSocket", async (url) => {
    const opts = {
      // Nothing listens on this UDP port: the handshake fails or times out.
      webTransportUrl: "https://127.0.0.1:9/wt",
      webSocketUrl: url,
      token: "t",
      device: "d4",
      webTransportTimeoutMs: 1500,
    };
    const first = new window.sdk.PetrelClient(opts);
    let why = null;
    first.addEventListener("fallback", (e) => (why = e.detail.code));
    await first.connect();
    const firstTransport = first.transport;
    first.close();
    const attemptsAfterFirst = window.wtAttempts;
    const second = new window.sdk.PetrelClient(opts);
    await second.connect();
    const secondTransport = second.transport;
    second.close();
    return { firstTransport, secondTransport, attemptsAfterFirst, attempts: window.wtAttempts, why };
  }, `ws://${base}/ws`);
  assert.deepEqual(r, { firstTransport: "websocket", secondTransport: "websocket", attemptsAfterFirst: 1, attempts: 1, why: "CONNECT_FAILED" });
});

test("a cursor the gateway moves back (a recreated stream) no longer hides new messages", async (t) => {
  onConnection = async (c) => {
    const hello = await c.next();
    assert.equal(hello.kind.value.cursors[0].seq, 900n, "the SDK resumed from its cursor");
    c.send(
      "welcome",
      create(proto.WelcomeSchema, {
        user: "bob",
        device: "d5",
        gatewayId: "fake",
        cursors: [create(proto.CursorSchema, { subject: "msg.private.bob", seq: 4n })],
      }),
    );
    c.send("deliver", create(proto.DeliverSchema, { messages: [message(5, "new five")] }));
  };
  const page = await sdkPage(t, () => {
    // What the SDK remembers from the stream's previous life.
    localStorage.setItem("petrel:state:d5", JSON.stringify({ cursors: { "msg.private.bob": "900" }, seen: ["msg.private.bob/5"] }));
  });
  const r = await evaluateWithin(page, 15_000, `"new five" after a cursor moved back`, async (url) => {
    const client = new window.sdk.PetrelClient({ webSocketUrl: url, token: "t", device: "d5" });
    const seen = [];
    client.addEventListener("message", (e) => seen.push(e.detail.text));
    await client.connect();
    await new Promise((resolve) => {
      const check = () => (seen.length >= 1 ? resolve() : setTimeout(check, 20));
      check();
    });
    client.close();
    return { seen, cursors: client.cursorMap };
  }, `ws://${base}/ws`);
  assert.deepEqual(r.seen, ["new five"]);
  assert.deepEqual(r.cursors, { "msg.private.bob": "5" });
});

test("a WebSocket close 4000 + N and a WebTransport close N are the same error code", async (t) => {
  for (let n = 0; n < 1000; n++) {
    assert.equal(errorCodeOfClose("websocket", 4000 + n), n);
    assert.equal(errorCodeOfClose("webtransport", n), n);
  }
  for (const c of [1000, 1001, 1006, 1011, 3999, 5000]) assert.equal(errorCodeOfClose("websocket", c), 0, `WebSocket ${c}`);
  const names = [5, 6, 11, 12, 15, 999].map(errorCodeName);
  assert.deepEqual(names, ["UNAUTHENTICATED", "TOKEN_EXPIRED", "SLOW_CONSUMER", "GOING_AWAY", "FORBIDDEN", "UNKNOWN_999"]);

  // What the SDK makes of them: before Welcome (connect rejects), and after (`error` events).
  const closes = [4005, 4011, 4012, 4999, 4000, 1011];
  onConnection = async (c) => {
    const code = closes.shift();
    if (code === 4005) {
      await c.next(); // the Hello, refused
      return c.close(code, "bad token");
    }
    await c.welcome();
    if (code !== undefined) c.close(code, "bye");
  };
  const page = await sdkPage(t);
  const r = await evaluateWithin(page, 15_000, "a refused connect and five closes", async (url) => {
    const opts = { webSocketUrl: url, token: "t", device: "d7", initialBackoffMs: 20, maxBackoffMs: 50, storage: null };
    const refused = await new window.sdk.PetrelClient(opts).connect().then(
      () => null,
      (e) => e.code,
    );
    const client = new window.sdk.PetrelClient(opts);
    const errors = [];
    const five = new Promise((resolve) =>
      client.addEventListener("error", (e) => {
        errors.push(e.detail.code);
        if (errors.length === 5) resolve();
      }),
    );
    await client.connect();
    await five;
    client.close();
    return { refused, errors };
  }, `ws://${base}/ws`);
  assert.deepEqual(r, { refused: "UNAUTHENTICATED", errors: ["SLOW_CONSUMER", "GOING_AWAY", "UNKNOWN_999", "CLOSED", "CLOSED"] });
});

// ---- the conformance vectors shared with the Rust SDK (proto/conformance/session.json)

const vectors = JSON.parse(
  readFileSync(join(dirname(fileURLToPath(import.meta.url)), "../../proto/conformance/session.json"), "utf8"),
);
const sortedPairs = (ps) => ps.map(([s, q]) => [s, Number(q)]).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] - b[1]));

test("conformance: error codes, close codes, permanent refusals and backoff ceilings", () => {
  for (const [n, name] of vectors.error_codes) assert.equal(errorCodeName(n), name);
  for (const c of vectors.close_codes) {
    const kind = c.transport === "websocket" ? "websocket" : "webtransport";
    assert.equal(errorCodeOfClose(kind, c.close), c.code, JSON.stringify(c));
  }
  for (const code of vectors.permanent) assert.ok(isPermanent(code), code);
  for (const code of vectors.retried) assert.ok(!isPermanent(code), code);
  const b = vectors.backoff;
  vectors.backoff.ceilings_ms.forEach((c, n) => assert.equal(backoffCeilingMs(n, b.initial_ms, b.max_ms), c, `attempt ${n}`));
});

for (const [i, v] of vectors.resume.entries()) {
  test(`conformance (resume): ${v.name}`, async (t) => {
    const hellos = [];
    const conns = [];
    const device = `cr${i}`;
    onConnection = async (c) => {
      const k = conns.length;
      conns.push(c);
      const hello = await c.next();
      assert.equal(hello.kind.case, "hello");
      hellos.push(sortedPairs(hello.kind.value.cursors.map((x) => [x.subject, x.seq])));
      const conn = v.connections[k];
      if (!conn) return;
      const cursors = conn.welcome.map(([subject, seq]) => create(proto.CursorSchema, { subject, seq: BigInt(seq) }));
      c.send("welcome", create(proto.WelcomeSchema, { user: "bob", device, connectionId: String(k), gatewayId: "fake", cursors }));
      const messages = conn.deliver.map(([subject, seq]) =>
        create(proto.MessageSchema, { subject, seq: BigInt(seq), from: "alice", to: "bob", clientMsgId: `${subject}-${seq}`, content: new TextEncoder().encode("x"), contentType: "text/plain" }),
      );
      c.send("deliver", create(proto.DeliverSchema, { messages }));
    };
    // The device's saved state: its cursors (as the SDK keeps them in storage).
    const saved = JSON.stringify({ cursors: Object.fromEntries(v.cursors.map(([s, q]) => [s, String(q)])) });
    const page = await sdkPage(t);
    await page.evaluate(({ url, device, saved }) => {
      const storage = { getItem: () => saved, setItem() {}, removeItem() {}, clear() {}, key: () => null, length: 0 };
      window.seen = [];
      window.client = new window.sdk.PetrelClient({ webSocketUrl: url, token: "t", device, initialBackoffMs: 20, maxBackoffMs: 50, storage });
      window.client.addEventListener("message", (e) => window.seen.push([e.detail.subject, Number(e.detail.seq)]));
      return window.client.connect();
    }, { url: `ws://${base}/ws`, device, saved });
    let expected = [];
    for (const [k, conn] of v.connections.entries()) {
      expected = expected.concat(conn.app);
      await pageWait(page, `connection ${k}'s messages to reach the app`, (n) => window.seen.length >= n, expected.length);
      // Drop it as a gateway would; the SDK reconnects by itself.
      conns[k].close(4012, "going away");
      if (k + 1 < v.connections.length) await within(10_000, (async () => { while (conns.length < k + 2) await new Promise((r) => setTimeout(r, 10)); })(), "the reconnect");
    }
    await new Promise((r) => setTimeout(r, 100)); // a stray repeat would show up now
    const seen = await page.evaluate(() => { window.client.close(); return window.seen; });
    assert.deepEqual(seen, expected.map(([s, q]) => [s, q]), "what reached the app");
    assert.deepEqual(hellos.slice(0, v.hellos.length), v.hellos.map(sortedPairs), "the Hellos' cursors");
  });
}

for (const [i, v] of vectors.resend.entries()) {
  test(`conformance (resend): ${v.name}`, async (t) => {
    const conns = [];
    const got = [];
    onConnection = async (c) => {
      const k = conns.length;
      conns.push(c);
      await c.welcome();
      const conn = v.connections[k];
      if (!conn) return;
      const ids = [];
      while (ids.length < conn.expect.length) {
        const f = await c.next();
        if (f.kind.case === "send") ids.push(f.kind.value.clientMsgId);
      }
      got.push(ids);
      for (const [id, status] of conn.answers) {
        c.send("sendResult", create(proto.SendResultSchema, {
          clientMsgId: id,
          status: proto.SendResult_Status[status],
          subject: "msg.private.carol",
          seq: 1n,
          reason: status === "REJECTED" ? proto.ErrorCode.FORBIDDEN : 0,
        }));
      }
      if (k + 1 < v.connections.length) c.close(4012, "going away");
    };
    const page = await sdkPage(t);
    const results = await evaluateWithin(page, 20_000, "every send to be answered", async ({ url, device, sends }) => {
      const client = new window.sdk.PetrelClient({ webSocketUrl: url, token: "t", device, initialBackoffMs: 20, maxBackoffMs: 50, storage: null });
      await client.connect();
      const results = {};
      await Promise.all(sends.map((id) => client.send("carol", "x", { clientMsgId: id }).then((r) => (results[id] = r.status), (e) => (results[id] = `error ${e.code}`))));
      client.close();
      return results;
    }, { url: `ws://${base}/ws`, device: `cs${i}`, sends: v.sends });
    assert.deepEqual(got, v.connections.map((c) => c.expect), "the sends each connection saw");
    assert.deepEqual(results, v.results, "the app's results");
  });
}
