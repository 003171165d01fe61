// The demo page: sign in with a dev token, chat, show the transport. Everything the
// page does goes through window.petrel, so tests and the console can drive it.
import { PetrelClient, PetrelError, webTransportAvailable } from "./petrel.js";

const $ = (s) => document.querySelector(s);
const params = new URLSearchParams(location.search);
const tabDevice = sessionStorage.getItem("petrel-demo-device") ??
  `tab-${Math.random().toString(36).slice(2, 10)}`;
sessionStorage.setItem("petrel-demo-device", tabDevice);

const shown = new Set();
const presence = new Map();
let typingTimer;
let lastTyping = 0;

/** "bob" → a user, "#team" → a group. */
function target(to) {
  return to.startsWith("#") ? { group: to.slice(1) } : to;
}

function transcriptKey(user) {
  return `petrel-demo-transcript:${user}:${tabDevice}`;
}

function render(row, save = true, atTop = false) {
  if (shown.has(row.id)) return false; // never show a message twice
  shown.add(row.id);
  const li = document.createElement("li");
  li.dataset.id = row.id;
  if (row.key) li.dataset.key = row.key;
  li.className = row.mine ? "mine" : "";
  li.textContent = row.mine ? `${row.text}` : `${row.from}: ${row.text}`;
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = row.mine ? `→ ${row.to}` : `#${row.seq}`;
  li.append(meta);
  if (row.mine && row.id.startsWith("mine:")) {
    const id = row.id.slice(5);
    for (const [label, act] of [["edit", () => edit(id, prompt("New text") ?? "")], ["recall", () => recall(id)]]) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "act";
      b.textContent = label;
      b.addEventListener("click", () => act().catch(showError));
      li.append(b);
    }
  }
  if (atTop) $("#messages").prepend(li);
  else $("#messages").append(li);
  if (save && window.petrel.user) {
    const key = transcriptKey(window.petrel.user);
    const rows = JSON.parse(sessionStorage.getItem(key) ?? "[]");
    rows.push(row);
    sessionStorage.setItem(key, JSON.stringify(rows.slice(-500)));
  }
  return true;
}

function showError(e) {
  $("#error").textContent = e ? `${e.code ?? "ERROR"}: ${e.message}` : "";
}

async function signIn(user, options = {}) {
  showError(null);
  const base = location.origin;
  const tokenFor = async () => {
    const r = await fetch(`${base}/dev/token?user=${encodeURIComponent(user)}&device=${tabDevice}`);
    if (!r.ok) throw new PetrelError("UNAUTHENTICATED", (await r.text()).trim());
    return (await r.json()).token;
  };
  const cfg = await (await fetch(`${base}/client-config`)).json();
  window.petrel.client?.close();
  const client = new PetrelClient({
    webTransportUrl: cfg.webtransport,
    // A page served over plain HTTP (petrel dev) can use the plain WebSocket listener
    // and so needs no trust in the dev certificate; an https page uses wss.
    webSocketUrl: location.protocol === "http:" && cfg.websocket_plain ? cfg.websocket_plain : cfg.websocket,
    certHashesUrl: cfg.cert_hashes,
    token: tokenFor,
    device: tabDevice,
    storageKey: `petrel:${user}`,
    transport: options.transport ?? params.get("transport") ?? "auto",
    ...options,
  });
  window.petrel.client = client;
  window.petrel.user = user;
  window.petrel.delivered = [];
  client.addEventListener("message", (e) => {
    const m = e.detail;
    window.petrel.delivered.push({ id: m.id, seq: String(m.seq), text: m.text });
    if (m.receipt) {
      // "read" on the row of our message it is about.
      const li = document.querySelector(`li[data-id="mine:${CSS.escape(m.receipt.clientMsgId)}"] .meta`);
      if (li && m.receipt.kind === "read") li.textContent = `${li.textContent.replace(/ ✓✓.*$/, "")} ✓✓ read by ${m.from}`;
      return;
    }
    if (m.amends) {
      applyAmend(m.from, m.amends.target, m.amends.recall ? null : m.text);
      return;
    }
    if (m.read) return; // our own read mark, from another device: the list updates
    if (m.notification) {
      render({ id: m.id, from: `🔔 ${m.from}`, text: `${m.notification.title} — ${m.notification.body}`, seq: String(m.seq), mine: false });
      return;
    }
    // Our own messages come back as the copy in our inbox (to every device of ours,
    // this one included): one row per client message id, whichever shows up first.
    if (m.outgoing) render({ id: `mine:${m.clientMsgId}`, to: m.group ? `#${m.group}` : m.to, text: m.text, mine: true });
    else {
      render({ id: m.id, key: `${m.from}:${m.clientMsgId}`, from: m.group ? `${m.from} #${m.group}` : m.from, to: m.to, text: m.text, seq: String(m.seq), mine: false });
      if (!m.group) client.receipt("read", m).catch(() => {});
    }
  });
  client.addEventListener("typing", (e) => {
    const t = e.detail;
    const where = t.group ? ` in #${t.group}` : "";
    $("#typing").textContent = t.typing ? `${t.from} is typing${where}…` : "";
    clearTimeout(typingTimer);
    if (t.typing) typingTimer = setTimeout(() => ($("#typing").textContent = ""), 4000);
  });
  client.addEventListener("presence", (e) => {
    presence.set(e.detail.user, e.detail.state);
    $("#presence").textContent = [...presence].map(([u, st]) => `${st === "online" ? "●" : st === "offline" ? "○" : "?"} ${u}`).join("  ");
  });
  client.addEventListener("state", (e) => {
    $("#state").textContent = e.detail.state;
    const t = client.transport ?? "—";
    $("#transport").textContent = t;
    $("#transport").className = t;
  });
  client.addEventListener("conversation", (e) => {
    const c = e.detail;
    conversations.set(c.group ? `#${c.group}` : c.user, c);
    renderConversations();
  });
  client.addEventListener("state", (e) => {
    // The list follows one connection: ask again after each (re)connect.
    if (e.detail.state === "open") refreshConversations().catch(() => {});
  });
  client.addEventListener("error", (e) => showError(e.detail));
  client.addEventListener("fallback", (e) =>
    showError({ code: "WEBSOCKET_FALLBACK", message: `WebTransport did not connect: ${e.detail.message}` }),
  );
  for (const row of JSON.parse(sessionStorage.getItem(transcriptKey(user)) ?? "[]")) render(row, false);
  try {
    const welcome = await client.connect();
    $("#me").textContent = `${welcome.user} / ${welcome.device}`;
    $("#signin").hidden = true;
    $("#chat").hidden = false;
    sessionStorage.setItem("petrel-demo-user", user);
    return { transport: client.transport, welcome };
  } catch (e) {
    showError(e);
    throw e;
  }
}

async function send(to, text) {
  const client = window.petrel.client;
  if (!client) throw new Error("sign in first");
  const t = target(to);
  const r = typeof t === "string" ? await client.send(t, text) : await client.sendToGroup(t.group, text);
  if (r.status === "rejected") {
    showError({ code: r.reason, message: r.detail });
  } else {
    render({ id: `mine:${r.clientMsgId}`, to, text, mine: true });
  }
  return { ...r, seq: String(r.seq) };
}

const conversations = new Map(); // "bob" | "#team" → PetrelConversation

function renderConversations() {
  const ul = $("#conversations");
  ul.replaceChildren();
  const sorted = [...conversations].sort(([, a], [, b]) => Number(b.pinned) - Number(a.pinned) || b.updatedMs - a.updatedMs);
  for (const [name, c] of sorted) {
    const li = document.createElement("li");
    li.dataset.name = name;
    li.textContent = `${name}: ${c.last?.recalled ? "(recalled)" : (c.last?.text ?? "")}`.slice(0, 60);
    if (c.unread > 0) {
      const n = document.createElement("span");
      n.className = "unread";
      n.textContent = `${c.unread}${c.unreadMentions ? " @" : ""}`;
      li.append(n);
    }
    if (c.muted) li.classList.add("muted");
    if (c.pinned) li.classList.add("pinned");
    const pin = document.createElement("button");
    pin.className = "pin";
    pin.type = "button";
    pin.textContent = c.pinned ? "unpin" : "pin";
    pin.title = "pinned conversations come first, on every device";
    pin.addEventListener("click", (e) => {
      e.stopPropagation();
      setPinned(name, !c.pinned).catch(showError);
    });
    li.append(pin);
    li.addEventListener("click", () => {
      $("#compose").elements.to.value = name;
      window.petrel.client?.markRead(target(name)).catch(showError);
    });
    ul.append(li);
  }
}

/** Pins or unpins a conversation (for every device of the user); shows the answer. */
async function setPinned(name, pinned) {
  const client = window.petrel.client;
  if (!client) throw new Error("sign in first");
  const c = await client.setConversation(target(name), { pinned });
  if (c) conversations.set(name, c);
  renderConversations();
  return c?.pinned ?? pinned;
}

/** The conversation list from the message service, followed live. */
async function refreshConversations() {
  const client = window.petrel.client;
  if (!client) throw new Error("sign in first");
  const page = await client.conversations({ follow: true, limit: 50 });
  conversations.clear();
  for (const c of page.conversations) conversations.set(c.group ? `#${c.group}` : c.user, c);
  renderConversations();
  return page.conversations.map((c) => ({ name: c.group ? `#${c.group}` : c.user, unread: c.unread, mentions: c.unreadMentions, last: c.last?.text ?? "" }));
}

/** Shows an edit (text) or recall (null) of `from`'s message `target` on its row. */
function applyAmend(from, target, text) {
  const own = from === window.petrel.user;
  const li = own
    ? document.querySelector(`li[data-id="mine:${CSS.escape(target)}"]`)
    : document.querySelector(`li[data-key="${CSS.escape(`${from}:${target}`)}"]`);
  if (!li) return;
  const prefix = own ? "" : `${from}: `;
  li.firstChild.textContent = text === null ? `${prefix}(recalled)` : `${prefix}${text} (edited)`;
  if (text === null) li.classList.add("recalled");
}

async function edit(id, text) {
  const r = await window.petrel.client.amend(id, text);
  if (r.status === "rejected") showError({ code: r.reason, message: r.detail });
  return { ...r, seq: String(r.seq) };
}

async function recall(id) {
  const r = await window.petrel.client.amend(id, null);
  if (r.status === "rejected") showError({ code: r.reason, message: r.detail });
  return { ...r, seq: String(r.seq) };
}

let olderBefore; // sequence to scroll back from (undefined: the newest)

/** Loads a page of older messages from the server's history, shown above. */
async function loadOlder(limit = 20) {
  const client = window.petrel.client;
  const user = window.petrel.user;
  if (!client) throw new Error("sign in first");
  const page = await client.history({ before: olderBefore, limit });
  for (const m of page.messages) {
    // The copy in our inbox of what we sent is keyed like our live rows.
    const row = m.outgoing
      ? { id: `mine:${m.clientMsgId}`, to: m.to, text: m.text, mine: true }
      : { id: m.id, from: m.from, to: m.to, text: m.text, seq: String(m.seq), mine: false };
    render(row, false, true);
  }
  if (page.messages.length > 0) olderBefore = page.messages[page.messages.length - 1].seq;
  $("#older").disabled = !page.more;
  $("#older").textContent = page.more ? "Load older" : "No older messages";
  return { count: page.messages.length, more: page.more, user };
}

/** Ids and texts of the rows on the page (for tests). */
function rows() {
  return [...document.querySelectorAll("#messages li")].map((li) => ({ id: li.dataset.id, text: li.firstChild.textContent }));
}

// `delivered`: every `message` event of the current client, in order, before the page
// drops rows it already shows (for tests: what the SDK handed over since this page load).
window.petrel = { PetrelClient, PetrelError, webTransportAvailable, signIn, send, rows, loadOlder, refreshConversations, setPinned, edit, recall, client: null, user: null, delivered: [] };
$("#older").addEventListener("click", () => loadOlder().catch(showError));

$("#signin").addEventListener("submit", (e) => {
  e.preventDefault();
  signIn(new FormData(e.target).get("user")).catch(() => {});
});
$("#compose").elements.text.addEventListener("input", () => {
  const to = $("#compose").elements.to.value;
  if (!window.petrel.client || !to || Date.now() - lastTyping < 2000) return;
  lastTyping = Date.now();
  window.petrel.client.typing(target(to), true).catch(() => {});
});
$("#watch").addEventListener("submit", (e) => {
  e.preventDefault();
  const users = String(new FormData(e.target).get("users")).split(/[\s,]+/).filter(Boolean);
  presence.clear();
  window.petrel.client?.watch(users).catch(showError);
});
$("#compose").addEventListener("submit", (e) => {
  e.preventDefault();
  const f = new FormData(e.target);
  send(f.get("to"), f.get("text")).then(() => (e.target.elements.text.value = ""), showError);
});

// After a reload, sign the tab back in as the same user.
const again = params.get("user") ?? sessionStorage.getItem("petrel-demo-user");
if (again) signIn(again).catch(() => {});
window.dispatchEvent(new Event("petrel-ready"));
