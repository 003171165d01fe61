// PetrelClient: one logical connection to a Petrel gateway that survives drops.
//
// Transport choice: WebTransport first; WebSocket when WebTransport is missing or does
// not connect within `webTransportTimeoutMs`; the choice is remembered (storage) for
// a while so the next page load does not wait again. After the first connection,
// drops are retried with exponential backoff and full jitter, reset when the browser
// says it is back online. Sends not yet answered are re-sent with the same client
// message id after a reconnect (the gateway deduplicates them), and the app sees each
// delivered message once: ids already seen or at/below the acknowledged cursor are
// dropped.

import { backoffCeilingMs, isPermanent } from "./policy.js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  ClientFrameSchema,
  type ClientFrame,
  CursorSchema,
  type Message as WireMessage,
  type SendResult as WireSendResult,
  SendResult_Status,
  SendSchema,
  type ServerFrame,
  ServerFrameSchema,
  HelloSchema,
  AckSchema,
  PingSchema,
  SyncSchema,
  TypingSchema,
  WatchSchema,
  RegisterPushSchema,
  RegisterPush_Preview,
  ApnsTargetSchema,
  FcmTargetSchema,
  WebPushTargetSchema,
  type PushRegistered,
  Presence_State,
  ReceiptSchema,
  Receipt_Kind,
  type SyncBatch,
  AmendSchema,
  MarkReadSchema,
  ListConversationsSchema,
  SetConversationSchema,
  MessageRefSchema,
  type Conversation as WireConversation,
  type ConversationList,
} from "./gen/petrel/v1/petrel_pb.js";
import { PetrelError, errorCodeName } from "./errors.js";
import { FrameDecoder, encodeFrame } from "./frame.js";
import {
  type CloseInfo,
  type Conn,
  type TransportKind,
  openWebSocket,
  openWebTransport,
  webTransportAvailable,
} from "./transport.js";

/** Protocol version sent in Hello. */
const PROTOCOL_VERSION = 1;
/** Frames larger than this from the gateway are a protocol error (it announces its own limit in Welcome). */
const MAX_SERVER_FRAME = 1024 * 1024;
/** How many delivered message ids are remembered for duplicate suppression. */
const SEEN_LIMIT = 5000;
/** Read marks and receipts kept while reconnecting, at most (Rust: `Config::max_deferred`). */
const MAX_DEFERRED = 1024;
/** How long a failed WebTransport attempt sends later connects straight to WebSocket. */
const REMEMBER_FALLBACK_MS = 10 * 60 * 1000;

/** Options for {@link PetrelClient}. */
export interface PetrelOptions {
  /** `https://host:port/wt` (the gateway's QUIC port). */
  webTransportUrl?: string;
  /** `wss://host:port/ws`. */
  webSocketUrl?: string;
  /** The user's token, or a function that fetches a fresh one for each connect. */
  token: string | (() => Promise<string>);
  /** Device id (`[A-Za-z0-9_-]{1,64}`); default: one made up and kept in storage. */
  device?: string;
  /** Hex SHA-256 of self-signed certificates to pin for WebTransport (dev). */
  serverCertificateHashes?: string[];
  /** URL of the gateway's `/cert-hashes`: fetched when no hashes are given, and used to explain a mismatch. */
  certHashesUrl?: string;
  /** `auto` (default): WebTransport, then WebSocket. */
  transport?: "auto" | TransportKind;
  /** How long to wait for WebTransport before falling back (ms, default 3000). */
  webTransportTimeoutMs?: number;
  /**
   * WebTransport: how many unidirectional streams to take deliveries on (default 8;
   * 0 keeps everything on the control stream). Each conversation keeps to one
   * stream, so a lost packet in one does not hold up the others.
   */
  deliveryStreams?: number;
  /** How long to wait for a connection and Welcome (ms, default 10000). */
  connectTimeoutMs?: number;
  /** Reconnect after a drop (default true). */
  reconnect?: boolean;
  /** First reconnect delay (ms, default 250); doubles per failure up to `maxBackoffMs`. */
  initialBackoffMs?: number;
  /** Longest reconnect delay (ms, default 15000). */
  maxBackoffMs?: number;
  /** Acknowledge each message once the `message` event has been dispatched (default true). */
  autoAck?: boolean;
  /** Where cursors, seen ids and the transport choice are kept (default `localStorage`; `null`: memory only). */
  storage?: Storage | null;
  /** Prefix of the storage keys (default `petrel`). */
  storageKey?: string;
}

/** A delivered message. */
export interface PetrelMessage {
  /** Stable id: `subject/seq`. */
  id: string;
  subject: string;
  seq: bigint;
  from: string;
  fromDevice: string;
  /** Recipient user; empty for a group message. */
  to: string;
  /** The group, for a group message (subject `msg.group.{group}`). */
  group?: string;
  /** A receipt about a message this user sent (`from` is the reader). */
  receipt?: { kind: "delivered" | "read"; clientMsgId: string; subject: string; seq: bigint };
  /** A system notification (subject `notif.{category}.{user}`; `from` is the category). */
  notification?: {
    id: string;
    title: string;
    body: string;
    action: string;
    priority: "normal" | "low" | "high";
    badge: number;
    data: Record<string, string>;
    timeMs: number;
  };
  timeMs: number;
  clientMsgId: string;
  contentType: string;
  content: Uint8Array;
  /** `content` as UTF-8 text. */
  text: string;
  /** Sent by this user (from this or another of their devices): the copy kept in their own inbox. */
  outgoing: boolean;
  /** The message this one replies to. */
  replyTo?: { subject: string; seq: bigint };
  /** Users it mentions. */
  mentions: string[];
  /** An edit (`recall` false: `text` is the new text) or recall of the sender's message `target`: apply it to that message. */
  amends?: { target: string; recall: boolean };
  /** A read mark of this user, from any of its devices: the conversation (a user, or `{ group }`) read up to `seq`. */
  read?: { user?: string; group?: string; seq: bigint };
  /** From the archive: when it was last edited (ms; 0: never). */
  editedMs: number;
  /** From the archive: recalled (no content). */
  recalled: boolean;
}

/** One conversation of the user, as the message service keeps it. */
export interface PetrelConversation {
  /** The other user of a direct conversation. */
  user?: string;
  /** The group of a group conversation. */
  group?: string;
  /** Its newest message as it reads now (edited, or empty when recalled). */
  last?: PetrelMessage;
  unread: number;
  unreadMentions: number;
  readSeq: bigint;
  pinned: boolean;
  muted: boolean;
  updatedMs: number;
}

/** A page of the conversation list (see {@link PetrelClient.conversations}). */
export interface ConversationPage {
  conversations: PetrelConversation[];
  more: boolean;
}

/** What a send may carry besides its content. */
export interface SendOptions {
  clientMsgId?: string;
  contentType?: string;
  /** The message it replies to. */
  replyTo?: { subject: string; seq: bigint };
  /** Users it mentions (at most 32). */
  mentions?: string[];
}

/** The gateway's answer to a send. */
export interface SendResult {
  clientMsgId: string;
  status: "stored" | "queued" | "rejected";
  subject: string;
  seq: bigint;
  msgId: string;
  duplicate: boolean;
  /** Error code name when rejected. */
  reason?: string;
  detail?: string;
}

/** Session facts from the gateway's Welcome. */
export interface Welcome {
  user: string;
  device: string;
  connectionId: string;
  gatewayId: string;
  transport: TransportKind;
  /** Delivery streams the gateway may open besides the control stream (0 on WebSocket). */
  deliveryStreams: number;
}

/** Connection state. */
export type State = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/**
 * Counters of one {@link PetrelClient}, from zero when it is created (so a page load
 * starts over): `wireDeliveries` = `appDeliveries` + `duplicatesDropped`.
 */
export interface Stats {
  /** Messages received on the wire (live, or a resume from the cursors). */
  wireDeliveries: number;
  /** Messages handed to the app (`message` events). */
  appDeliveries: number;
  /** Wire deliveries dropped as already seen or at/below the acknowledged cursor. */
  duplicatesDropped: number;
  /** Successful connects after the first. */
  reconnects: number;
}

/**
 * Where this device is woken while it is offline (see {@link PetrelClient.registerPush}):
 * a browser's `PushSubscription` (`subscription.toJSON()` has this shape), an APNs
 * device token, or an FCM registration token.
 */
export type PushTarget =
  | { platform: "webpush"; endpoint: string; keys: { p256dh: string; auth: string } }
  | { platform: "apns"; token: string; topic: string; sandbox?: boolean }
  | { platform: "fcm"; token: string };

/** Options of {@link PetrelClient.registerPush}. */
export interface PushOptions {
  /** BCP 47 tag, e.g. "en-GB" (default: navigator.language when there is one). */
  locale?: string;
  /** Whether message text may appear in pushes; omitted: the service's default. */
  preview?: boolean;
}

/** A page of history (see {@link PetrelClient.history}). */
export interface HistoryPage {
  /** Messages in the order asked for. */
  messages: PetrelMessage[];
  /** More may follow: ask again from the last message. */
  more: boolean;
}

interface PendingSend {
  frame: Uint8Array;
  resolve: (r: SendResult) => void;
  reject: (e: PetrelError) => void;
}

const textDecoder = new TextDecoder();
const textEncoder = new TextEncoder();

function randomId(): string {
  const b = new Uint8Array(12);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function statusName(s: SendResult_Status): SendResult["status"] {
  switch (s) {
    case SendResult_Status.STORED:
      return "stored";
    case SendResult_Status.QUEUED:
      return "queued";
    default:
      return "rejected";
  }
}

/**
 * A Petrel client. Events: `message` (detail: {@link PetrelMessage}), `state`
 * (detail: {state, transport}), `error` (detail: {@link PetrelError}, for errors
 * after connect: dropped connections, refused reconnects), `fallback` (detail:
 * {@link PetrelError}: why WebTransport failed when WebSocket was used instead),
 * `sendresult` (detail: {@link SendResult}: the final `stored` of a send that
 * resolved as `queued` while the hub was unreachable), `typing` (detail: {from,
 * group?, typing}), `presence` (detail: {user, state}, after `watch()`).
 */
export class PetrelClient extends EventTarget {
  private readonly opts: Required<
    Omit<PetrelOptions, "webTransportUrl" | "webSocketUrl" | "serverCertificateHashes" | "certHashesUrl" | "device" | "storage">
  > &
    PetrelOptions;
  private readonly storage: Storage | null;
  private conn: Conn | null = null;
  private _state: State = "idle";
  private _transport: TransportKind | null = null;
  private _welcome: Welcome | null = null;
  private readonly pending = new Map<string, PendingSend>();
  /** Read marks and receipts made while reconnecting, by key, written after Welcome. */
  private readonly deferred = new Map<string, Uint8Array>();
  private readonly syncs = new Map<bigint, { resolve: (p: HistoryPage) => void; reject: (e: PetrelError) => void }>();
  private readonly lists = new Map<bigint, { resolve: (p: ConversationPage) => void; reject: (e: PetrelError) => void }>();
  private nextSync = 1n;
  private readonly pushes = new Map<bigint, { resolve: () => void; reject: (e: PetrelError) => void }>();
  private readonly cursors = new Map<string, bigint>();
  private readonly seen = new Set<string>();
  private readonly seenOrder: string[] = [];
  private backoff = 0;
  /** Set by a GoAway: the delay before the reconnect it asks for. */
  private goAwayAfterMs: number | null = null;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private _retryAt: number | null = null;
  private wakeRetry: (() => void) | null = null;
  private pingTimer: ReturnType<typeof setInterval> | null = null;
  private lastHeard = 0;
  private closing = false;
  private readonly _stats: Stats = { wireDeliveries: 0, appDeliveries: 0, duplicatesDropped: 0, reconnects: 0 };
  private saveTimer: ReturnType<typeof setTimeout> | null = null;
  /** Saved state is written at most this often (a delivery burst would otherwise rewrite it per message). */
  private static readonly SAVE_DELAY_MS = 300;
  private readonly flush = () => this.saveNow();
  private readonly onOnline = () => {
    this.backoff = 0;
    this.wakeRetry?.();
  };

  constructor(options: PetrelOptions) {
    super();
    if (!options.webTransportUrl && !options.webSocketUrl) {
      throw new PetrelError("CONFIG", "give webTransportUrl, webSocketUrl or both");
    }
    this.opts = {
      transport: "auto",
      webTransportTimeoutMs: 3000,
      deliveryStreams: 8,
      connectTimeoutMs: 10000,
      reconnect: true,
      initialBackoffMs: 250,
      maxBackoffMs: 15000,
      autoAck: true,
      storageKey: "petrel",
      ...options,
    };
    this.storage =
      options.storage === undefined ? ((globalThis as { localStorage?: Storage }).localStorage ?? null) : options.storage;
    this.load();
  }

  /** Current state. */
  get state(): State {
    return this._state;
  }

  /** The transport of the current (or last) connection. */
  get transport(): TransportKind | null {
    return this._transport;
  }

  /** While reconnecting: when the next attempt starts (ms since the epoch), for "retrying in N s". */
  get retryAt(): number | null {
    return this._retryAt;
  }

  /** Welcome of the current (or last) connection. */
  get welcome(): Welcome | null {
    return this._welcome;
  }

  /** A snapshot of the {@link Stats} counters (wire vs app deliveries, duplicates dropped, reconnects). */
  get stats(): Stats {
    return { ...this._stats };
  }

  /** Last acknowledged sequence per subject. */
  get cursorMap(): Record<string, string> {
    return Object.fromEntries([...this.cursors].map(([k, v]) => [k, v.toString()]));
  }

  /** Connects (WebTransport, then WebSocket in `auto`), resolving with the Welcome. */
  async connect(): Promise<Welcome> {
    if (this._state === "open" && this._welcome) return this._welcome;
    this.closing = false;
    this.setState("connecting");
    globalThis.addEventListener?.("online", this.onOnline);
    globalThis.addEventListener?.("pagehide", this.flush);
    try {
      const w = await this.attempt();
      return w;
    } catch (e) {
      this.setState("closed");
      globalThis.removeEventListener?.("online", this.onOnline);
      throw e;
    }
  }

  /** Sends `content` to user `to`; resolves with the gateway's SendResult. */
  send(
    to: string,
    content: string | Uint8Array,
    options: SendOptions = {},
  ): Promise<SendResult> {
    return this.sendTo({ case: "user", value: to }, content, options);
  }

  /**
   * Sends to a group the user is a member of (the group service keeps membership);
   * a non-member's send is rejected with `FORBIDDEN`.
   */
  sendToGroup(
    group: string,
    content: string | Uint8Array,
    options: SendOptions = {},
  ): Promise<SendResult> {
    return this.sendTo({ case: "group", value: group }, content, options);
  }

  private sendTo(
    to: { case: "user"; value: string } | { case: "group"; value: string },
    content: string | Uint8Array,
    options: SendOptions,
  ): Promise<SendResult> {
    const clientMsgId = options.clientMsgId ?? randomId();
    const bytes = typeof content === "string" ? textEncoder.encode(content) : content;
    const frame = encodeFrame(
      toBinary(
        ClientFrameSchema,
        create(ClientFrameSchema, {
          kind: {
            case: "send",
            value: create(SendSchema, {
              clientMsgId,
              to,
              content: bytes,
              contentType: options.contentType ?? (typeof content === "string" ? "text/plain" : ""),
              ...(options.replyTo ? { replyTo: create(MessageRefSchema, options.replyTo) } : {}),
              mentions: options.mentions ?? [],
            }),
          },
        }),
      ),
    );
    return this.sendFrame(clientMsgId, frame);
  }

  /**
   * Edits (`content` a string) or recalls (`null`) this user's message `target` (its
   * clientMsgId) on every device and in history. Resolves like a send; `rejected` with
   * `FORBIDDEN` outside the gateway's window (15 minutes by default) or for a message
   * that is not this user's.
   */
  amend(target: string, content: string | null, options: { clientMsgId?: string } = {}): Promise<SendResult> {
    const clientMsgId = options.clientMsgId ?? randomId();
    const frame = encodeFrame(
      toBinary(
        ClientFrameSchema,
        create(ClientFrameSchema, {
          kind: {
            case: "amend",
            value: create(AmendSchema, {
              clientMsgId,
              target,
              recall: content === null,
              content: content === null ? new Uint8Array() : textEncoder.encode(content),
              contentType: content === null ? "" : "text/plain",
            }),
          },
        }),
      ),
    );
    return this.sendFrame(clientMsgId, frame);
  }

  /**
   * Marks the conversation with a user (or `{ group }`) read up to `seq` (default: its
   * newest) on every device of this user. While reconnecting, the latest mark per
   * conversation is kept and written after Welcome.
   */
  async markRead(conversation: string | { group: string }, seq = 0n): Promise<void> {
    const c =
      typeof conversation === "string"
        ? ({ case: "user", value: conversation } as const)
        : ({ case: "group", value: conversation.group } as const);
    const frame = encodeFrame(
      toBinary(
        ClientFrameSchema,
        create(ClientFrameSchema, { kind: { case: "markRead", value: create(MarkReadSchema, { conversation: c, seq }) } }),
      ),
    );
    await this.control(`read ${c.case} ${c.value}`, frame);
  }

  /**
   * Writes a control frame now when open; while reconnecting keeps it by `key` (the
   * latest per key, at most {@link MAX_DEFERRED}, the oldest giving way) for the next
   * Welcome, as the Rust SDK does.
   */
  private async control(key: string, frame: Uint8Array): Promise<void> {
    const conn = this.conn;
    if (conn && this._state === "open") {
      await conn.write(frame);
      return;
    }
    if (this._state !== "connecting" && this._state !== "reconnecting") {
      throw new PetrelError("CLOSED", "not connected");
    }
    this.deferred.delete(key);
    if (this.deferred.size >= MAX_DEFERRED) {
      const oldest = this.deferred.keys().next().value;
      if (oldest !== undefined) this.deferred.delete(oldest);
    }
    this.deferred.set(key, frame);
  }

  /**
   * A page of the conversation list: pinned first, then the most recent. With
   * `follow`, a `conversation` event ({@link PetrelConversation}) reports each change
   * from now on (until the connection drops: ask again after a reconnect).
   */
  conversations(options: { offset?: number; limit?: number; follow?: boolean } = {}): Promise<ConversationPage> {
    return this.listRequest("conversation list", (requestId) => ({
      case: "listConversations",
      value: create(ListConversationsSchema, {
        requestId,
        offset: options.offset ?? 0,
        limit: options.limit ?? 50,
        follow: options.follow ?? false,
      }),
    }));
  }

  /**
   * Pins or unpins, mutes or unmutes the conversation with a user (or `{ group }`) on
   * every device of this user; a setting left out stays as it is. Resolves with the
   * conversation as it is now (undefined for a group with no message yet); rejects
   * with FORBIDDEN for a group this user is not in.
   */
  async setConversation(
    conversation: string | { group: string },
    settings: { pinned?: boolean; muted?: boolean },
  ): Promise<PetrelConversation | undefined> {
    const c =
      typeof conversation === "string"
        ? ({ case: "user", value: conversation } as const)
        : ({ case: "group", value: conversation.group } as const);
    const page = await this.listRequest("conversation setting", (requestId) => ({
      case: "setConversation",
      value: create(SetConversationSchema, {
        requestId,
        conversation: c,
        pinned: settings.pinned,
        muted: settings.muted,
      }),
    }));
    return page.conversations[0];
  }

  /** Sends a request answered by a ConversationList with its request id. */
  private listRequest(
    what: string,
    kind: (requestId: bigint) => ClientFrame["kind"],
  ): Promise<ConversationPage> {
    const conn = this.conn;
    if (!conn || this._state !== "open") return Promise.reject(new PetrelError("CLOSED", "not connected"));
    const requestId = this.nextSync++;
    const frame = encodeFrame(toBinary(ClientFrameSchema, create(ClientFrameSchema, { kind: kind(requestId) })));
    return new Promise<ConversationPage>((resolve, reject) => {
      this.lists.set(requestId, { resolve, reject });
      conn.write(frame).catch(() => {
        this.lists.delete(requestId);
        reject(new PetrelError("CLOSED", `connection lost before the ${what} request was sent`));
      });
    });
  }

  private sendFrame(clientMsgId: string, frame: Uint8Array): Promise<SendResult> {
    if (this._state === "closed" || this._state === "idle") {
      return Promise.reject(new PetrelError("CLOSED", "not connected: call connect() first"));
    }
    return new Promise<SendResult>((resolve, reject) => {
      const existing = this.pending.get(clientMsgId);
      if (existing) existing.reject(new PetrelError("DUPLICATE_SEND", `a send with id ${clientMsgId} is already pending`));
      this.pending.set(clientMsgId, { frame, resolve, reject });
      // If the write fails the connection is dropping; the send goes out again after
      // the reconnect.
      this.conn?.write(frame).catch(() => {});
    });
  }

  /**
   * Follows these users' presence (replacing any earlier list; at most 256): a
   * `presence` event ({user, state: "online" | "offline" | "unknown"}) for each now,
   * then one per change.
   */
  async watch(users: string[]): Promise<void> {
    const conn = this.conn;
    if (!conn || this._state !== "open") throw new PetrelError("CLOSED", "not connected");
    await conn.write(
      encodeFrame(
        toBinary(ClientFrameSchema, create(ClientFrameSchema, { kind: { case: "watch", value: create(WatchSchema, { users }) } })),
      ),
    );
  }

  /**
   * Says this user is (no longer) typing to `to` (a user, or `{ group }`). Live only
   * (dropped while reconnecting); the gateway drops more than 5 a second. Others get a `typing` event.
   */
  async typing(to: string | { group: string }, typing = true): Promise<void> {
    const conn = this.conn;
    if (this._state === "connecting" || this._state === "reconnecting") return; // live only: dropped
    if (!conn || this._state !== "open") throw new PetrelError("CLOSED", "not connected");
    const target =
      typeof to === "string" ? ({ case: "user", value: to } as const) : ({ case: "group", value: to.group } as const);
    const frame = encodeFrame(
      toBinary(
        ClientFrameSchema,
        create(ClientFrameSchema, { kind: { case: "typing", value: create(TypingSchema, { to: target, typing }) } }),
      ),
    );
    // Unreliable is fine for typing: a datagram on WebTransport, never holding up the stream.
    if (conn.sendDatagram?.(frame)) return;
    await conn.write(frame);
  }

  /**
   * Tells the sender of `message` (a direct message in this user's inbox) that it was
   * delivered or read. Stored in the sender's inbox; not answered. Resolves once
   * written, or kept for the next Welcome while reconnecting (rejects when closed).
   */
  async receipt(kind: "delivered" | "read", message: PetrelMessage): Promise<void> {
    const frame = encodeFrame(
      toBinary(
        ClientFrameSchema,
        create(ClientFrameSchema, {
          kind: {
            case: "receipt",
            value: create(ReceiptSchema, {
              kind: kind === "read" ? Receipt_Kind.READ : Receipt_Kind.DELIVERED,
              subject: message.subject,
              seq: message.seq,
              sender: message.from,
              clientMsgId: message.clientMsgId,
            }),
          },
        }),
      ),
    );
    await this.control(`receipt ${kind} ${message.subject} ${message.seq}`, frame);
  }

  /**
   * A page of history on `subject` (default: the user's inbox): newest first before
   * `before` (scrolling back; omit for the newest), or oldest first after `after`.
   * Does not move cursors; messages are not passed through the `message` event.
   */
  history(
    options: {
      subject?: string;
      /** Only the direct conversation with this user (from the message service's archive). */
      with?: string;
      newestFirst?: boolean;
      before?: bigint;
      after?: bigint;
      limit?: number;
    } = {},
  ): Promise<HistoryPage> {
    const conn = this.conn;
    if (!conn || this._state !== "open" || !this._welcome) {
      return Promise.reject(new PetrelError("CLOSED", "not connected"));
    }
    const requestId = this.nextSync++;
    const newestFirst = options.newestFirst ?? true;
    const frame = encodeFrame(
      toBinary(
        ClientFrameSchema,
        create(ClientFrameSchema, {
          kind: {
            case: "sync",
            value: create(SyncSchema, {
              requestId,
              // With `with`, an empty subject is the user's inbox.
              subject: options.subject ?? (options.with ? "" : `msg.private.${this._welcome.user}`),
              with: options.with ?? "",
              newestFirst,
              before: options.before ?? 0n,
              after: options.after ?? 0n,
              limit: options.limit ?? 50,
            }),
          },
        }),
      ),
    );
    return new Promise<HistoryPage>((resolve, reject) => {
      this.syncs.set(requestId, { resolve, reject });
      conn.write(frame).catch(() => {
        this.syncs.delete(requestId);
        reject(new PetrelError("CLOSED", "connection lost before the history request was sent"));
      });
    });
  }

  /**
   * Registers this device's push target (replacing the one it had), or removes it
   * with `null` (on logout). Resolves once the hub's registry has it; rejects with
   * the gateway's code (INVALID_MESSAGE for a malformed target, UNAVAILABLE when the
   * registry cannot be reached).
   */
  registerPush(target: PushTarget | null, options: PushOptions = {}): Promise<void> {
    const conn = this.conn;
    if (!conn || this._state !== "open") {
      return Promise.reject(new PetrelError("CLOSED", "not connected"));
    }
    const requestId = this.nextSync++;
    const t =
      target === null
        ? undefined
        : target.platform === "webpush"
          ? {
              case: "webpush" as const,
              value: create(WebPushTargetSchema, {
                endpoint: target.endpoint,
                p256dh: target.keys.p256dh,
                auth: target.keys.auth,
              }),
            }
          : target.platform === "apns"
            ? {
                case: "apns" as const,
                value: create(ApnsTargetSchema, {
                  deviceToken: target.token,
                  topic: target.topic,
                  sandbox: target.sandbox ?? false,
                }),
              }
            : { case: "fcm" as const, value: create(FcmTargetSchema, { token: target.token }) };
    const locale =
      options.locale ?? (typeof navigator !== "undefined" && navigator.language ? navigator.language : "");
    const preview =
      options.preview === undefined
        ? RegisterPush_Preview.DEFAULT
        : options.preview
          ? RegisterPush_Preview.SHOW
          : RegisterPush_Preview.HIDE;
    const frame = encodeFrame(
      toBinary(
        ClientFrameSchema,
        create(ClientFrameSchema, {
          kind: {
            case: "registerPush",
            value: create(RegisterPushSchema, {
              requestId,
              target: t ?? { case: undefined },
              locale,
              preview,
            }),
          },
        }),
      ),
    );
    return new Promise<void>((resolve, reject) => {
      this.pushes.set(requestId, { resolve, reject });
      conn.write(frame).catch(() => {
        this.pushes.delete(requestId);
        reject(new PetrelError("CLOSED", "connection lost before the push registration was sent"));
      });
    });
  }

  /**
   * Subscribes this browser to Web Push through `registration` (a service worker's)
   * with the gateway's VAPID key (`vapid_public_key` in its `/client-config`), and
   * registers the subscription. Resolves with the subscription.
   */
  async subscribeWebPush(
    registration: ServiceWorkerRegistration,
    vapidPublicKey: string,
    options: PushOptions = {},
  ): Promise<PushSubscription> {
    const key = base64UrlDecode(vapidPublicKey);
    const sub = await registration.pushManager.subscribe({
      userVisibleOnly: true,
      applicationServerKey: key.buffer.slice(key.byteOffset, key.byteOffset + key.byteLength) as ArrayBuffer,
    });
    const json = sub.toJSON();
    await this.registerPush(
      {
        platform: "webpush",
        endpoint: sub.endpoint,
        keys: { p256dh: json.keys?.p256dh ?? "", auth: json.keys?.auth ?? "" },
      },
      options,
    );
    return sub;
  }

  /** Acknowledges `msg` (and everything before it on its subject). */
  ack(msg: Pick<PetrelMessage, "subject" | "seq">): void {
    const prev = this.cursors.get(msg.subject) ?? 0n;
    if (msg.seq <= prev) return;
    this.cursors.set(msg.subject, msg.seq);
    this.save();
    const frame = encodeFrame(
      toBinary(
        ClientFrameSchema,
        create(ClientFrameSchema, {
          kind: {
            case: "ack",
            value: create(AckSchema, { cursors: [create(CursorSchema, { subject: msg.subject, seq: msg.seq })] }),
          },
        }),
      ),
    );
    this.conn?.write(frame).catch(() => {});
  }

  /** Closes for good; pending sends are rejected. */
  close(): void {
    this.closing = true;
    globalThis.removeEventListener?.("online", this.onOnline);
    globalThis.removeEventListener?.("pagehide", this.flush);
    this.saveNow();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.wakeRetry?.();
    this.stopPings();
    this.conn?.close(0, "client closed");
    this.conn = null;
    for (const [, p] of this.pending) p.reject(new PetrelError("CLOSED", "client closed"));
    this.pending.clear();
    this.setState("closed");
  }

  // ---- connecting ----

  private async attempt(): Promise<Welcome> {
    const conn = await this.open();
    try {
      const welcome = await this.handshake(conn);
      this.conn = conn;
      this._transport = conn.kind;
      this._welcome = welcome;
      this.backoff = 0;
      this.setState("open");
      void this.readLoop(conn);
      void this.datagramLoop(conn);
      // Read only after Welcome: what came on delivery streams meanwhile waited in
      // the browser, so nothing reaches the app before Welcome.
      if (welcome.deliveryStreams > 0) void this.deliveryLoop(conn);
      this.startPings(conn);
      // Unanswered sends go out again, in their original order; the gateway
      // answers a repeated id with the stored result.
      for (const [, p] of this.pending) conn.write(p.frame).catch(() => {});
      for (const [, frame] of this.deferred) conn.write(frame).catch(() => {});
      this.deferred.clear();
      return welcome;
    } catch (e) {
      conn.close();
      throw e;
    }
  }

  private async hashes(): Promise<string[]> {
    if (this.opts.serverCertificateHashes) return this.opts.serverCertificateHashes;
    if (!this.opts.certHashesUrl) return [];
    const r = await fetch(this.opts.certHashesUrl, { cache: "no-store" });
    if (!r.ok) throw new PetrelError("CONNECT_FAILED", `${this.opts.certHashesUrl} answered ${r.status}`);
    const h = (await r.json()) as { current: string; next?: string | null };
    return [h.current, ...(h.next ? [h.next] : [])];
  }

  /** Explains a failed pinned WebTransport handshake, when the gateway says which certificates it serves. */
  private async explainFailure(url: string, pinned: string[], err: unknown): Promise<PetrelError> {
    const base = `WebTransport to ${url} failed (${err instanceof Error ? err.message : String(err)})`;
    if (pinned.length > 0 && this.opts.certHashesUrl) {
      try {
        const r = await fetch(this.opts.certHashesUrl, { cache: "no-store" });
        const h = (await r.json()) as { current: string; next?: string | null };
        const served = [h.current, ...(h.next ? [h.next] : [])];
        if (!pinned.some((p) => served.includes(p.replace(/:/g, "").toLowerCase()))) {
          return new PetrelError(
            "CERTIFICATE_MISMATCH",
            `${base}: the pinned certificate hash ${pinned.join(", ")} is not one the gateway serves (current ${h.current}${h.next ? `, next ${h.next}` : ""}); fetch ${this.opts.certHashesUrl} again`,
          );
        }
      } catch {
        /* fall through to the generic message */
      }
    }
    if (pinned.length > 0) {
      return new PetrelError(
        "CONNECT_FAILED",
        `${base}: the gateway is unreachable, or its certificate matches none of the pinned hashes ${pinned.join(", ")}`,
      );
    }
    return new PetrelError("CONNECT_FAILED", base);
  }

  private async open(): Promise<Conn> {
    const { transport, webTransportUrl, webSocketUrl } = this.opts;
    const errors: PetrelError[] = [];
    const tryWt =
      !!webTransportUrl &&
      transport !== "websocket" &&
      webTransportAvailable() &&
      (transport === "webtransport" || !this.rememberedFallback() || !webSocketUrl);
    if (transport === "webtransport" && !webTransportAvailable()) {
      throw new PetrelError("CONNECT_FAILED", "this browser has no WebTransport (transport: 'webtransport' was requested)");
    }
    if (tryWt && webTransportUrl) {
      let pinned: string[] = [];
      try {
        pinned = await this.hashes();
        const wtTimeout = transport === "webtransport" ? this.opts.connectTimeoutMs : this.opts.webTransportTimeoutMs;
        const conn = await openWebTransport(webTransportUrl, pinned, wtTimeout);
        this.remember(null);
        return conn;
      } catch (e) {
        errors.push(e instanceof PetrelError ? e : await this.explainFailure(webTransportUrl, pinned, e));
        if (transport === "webtransport" || !webSocketUrl) throw errors[0];
        this.remember("websocket");
        this.dispatchEvent(new CustomEvent("fallback", { detail: errors[0] }));
      }
    }
    if (webSocketUrl && transport !== "webtransport") {
      try {
        return await openWebSocket(webSocketUrl, this.opts.connectTimeoutMs);
      } catch (e) {
        errors.push(new PetrelError("CONNECT_FAILED", e instanceof Error ? e.message : String(e)));
      }
    }
    throw errors.length === 1
      ? errors[0]
      : new PetrelError(
          errors.some((e) => e.code === "CERTIFICATE_MISMATCH") ? "CERTIFICATE_MISMATCH" : "CONNECT_FAILED",
          errors.map((e) => e.message).join("; then "),
        );
  }

  private async handshake(conn: Conn): Promise<Welcome> {
    const token = typeof this.opts.token === "function" ? await this.opts.token() : this.opts.token;
    const hello = create(ClientFrameSchema, {
      kind: {
        case: "hello",
        value: create(HelloSchema, {
          token,
          device: this.device(),
          protocolVersion: PROTOCOL_VERSION,
          deliveryStreams: conn.deliveryStreams ? this.opts.deliveryStreams : 0,
          cursors: [...this.cursors].map(([subject, seq]) => create(CursorSchema, { subject, seq })),
        }),
      },
    });
    await conn.write(encodeFrame(toBinary(ClientFrameSchema, hello)));
    const decoder = new FrameDecoder(MAX_SERVER_FRAME);
    const chunks = conn.chunks()[Symbol.asyncIterator]();
    const deadline = Date.now() + this.opts.connectTimeoutMs;
    for (;;) {
      const frame = decoder.next();
      if (frame) {
        const f = fromBinary(ServerFrameSchema, frame);
        if (f.kind.case === "welcome") {
          // Frames after Welcome in the same chunk stay in the decoder for the read loop.
          this.handover = { decoder, chunks };
          const w = f.kind.value;
          // The gateway moved a cursor back: the stream was recreated, and what we
          // remember of it (cursor, seen ids) would hide new messages.
          for (const c of w.cursors) {
            const mine = this.cursors.get(c.subject);
            if (mine !== undefined && mine > c.seq) {
              this.cursors.set(c.subject, c.seq);
              for (const id of [...this.seen]) if (id.startsWith(`${c.subject}/`)) this.seen.delete(id);
              this.save();
            }
          }
          return {
            user: w.user,
            device: w.device,
            connectionId: w.connectionId,
            gatewayId: w.gatewayId,
            transport: conn.kind,
            deliveryStreams: w.deliveryStreams,
          };
        }
        if (f.kind.case === "error") {
          throw new PetrelError(errorCodeName(f.kind.value.code), f.kind.value.message);
        }
        throw new PetrelError("PROTOCOL", `expected Welcome, got ${f.kind.case}`);
      }
      const left = deadline - Date.now();
      const next = await Promise.race([
        chunks.next(),
        new Promise<"timeout">((r) => setTimeout(() => r("timeout"), Math.max(0, left))),
      ]);
      if (next === "timeout") throw new PetrelError("CONNECT_FAILED", "no Welcome from the gateway in time");
      if (next.done) {
        const info = await conn.closed;
        throw new PetrelError(
          info.code ? errorCodeName(info.code) : "CONNECT_FAILED",
          `the gateway closed the connection before Welcome${info.reason ? `: ${info.reason}` : ""}`,
        );
      }
      decoder.push(next.value);
    }
  }

  private handover: { decoder: FrameDecoder; chunks: AsyncIterator<Uint8Array> } | null = null;

  // ---- reading ----

  /** Typing events arriving as datagrams (one whole frame each). */
  private async datagramLoop(conn: Conn): Promise<void> {
    if (!conn.datagrams) return;
    for await (const d of conn.datagrams()) {
      if (this.conn !== conn) return;
      const decoder = new FrameDecoder(4096);
      decoder.push(d);
      try {
        const frame = decoder.next();
        if (!frame) continue;
        const f = fromBinary(ServerFrameSchema, frame);
        if (f.kind.case === "typing") this.onFrame(f);
      } catch {
        /* not a frame: ignore */
      }
    }
  }

  /** Deliveries on the streams the gateway opens, each read in its own order. */
  private async deliveryLoop(conn: Conn): Promise<void> {
    if (!conn.deliveryStreams) return;
    for await (const stream of conn.deliveryStreams()) {
      if (this.conn !== conn) return;
      void (async () => {
        const decoder = new FrameDecoder(MAX_SERVER_FRAME);
        try {
          for await (const chunk of stream) {
            if (this.conn !== conn) return;
            this.lastHeard = Date.now();
            decoder.push(chunk);
            for (let frame = decoder.next(); frame; frame = decoder.next()) {
              const fatal = this.onFrame(fromBinary(ServerFrameSchema, frame));
              if (fatal) {
                conn.close();
                return;
              }
            }
          }
        } catch {
          // A broken frame on a delivery stream: the connection is not to be
          // trusted; reconnecting resumes from the cursors.
          if (this.conn === conn) conn.close();
        }
      })();
    }
  }

  private async readLoop(conn: Conn): Promise<void> {
    const h = this.handover;
    this.handover = null;
    if (!h) return;
    const { decoder, chunks } = h;
    let fatal: PetrelError | null = null;
    try {
      outer: for (;;) {
        for (let frame = decoder.next(); frame; frame = decoder.next()) {
          this.lastHeard = Date.now();
          fatal = this.onFrame(fromBinary(ServerFrameSchema, frame));
          if (fatal) break outer;
        }
        const next = await chunks.next();
        if (next.done) break;
        this.lastHeard = Date.now();
        decoder.push(next.value);
      }
    } catch (e) {
      // The gateway's bytes did not decode: BAD_FRAME, as the gateway names the same
      // fault from its side (retried, unlike the gateway's PROTOCOL verdict).
      fatal = new PetrelError("BAD_FRAME", e instanceof Error ? e.message : String(e));
    }
    if (fatal) conn.close();
    const info: CloseInfo = await conn.closed;
    if (this.conn !== conn) return;
    this.conn = null;
    this.stopPings();
    for (const [, w] of this.syncs) w.reject(new PetrelError("CLOSED", "connection lost before the history page"));
    this.syncs.clear();
    for (const [, w] of this.lists) w.reject(new PetrelError("CLOSED", "connection lost before the conversation list"));
    this.lists.clear();
    for (const [, w] of this.pushes) w.reject(new PetrelError("CLOSED", "connection lost before the push registration was answered"));
    this.pushes.clear();
    if (this.closing) return;
    if (this.goAwayAfterMs !== null && this.opts.reconnect) {
      void this.reconnectLoop();
      return;
    }
    const why =
      fatal ??
      new PetrelError(
        info.code ? errorCodeName(info.code) : "CLOSED",
        `connection lost${info.reason ? `: ${info.reason}` : ""}`,
      );
    this.dispatchEvent(new CustomEvent("error", { detail: why }));
    const permanent = isPermanent(why.code, typeof this.opts.token !== "string");
    if (!this.opts.reconnect || permanent) {
      for (const [, p] of this.pending) p.reject(why);
      this.pending.clear();
      this.setState("closed");
      return;
    }
    void this.reconnectLoop();
  }

  private onFrame(f: ServerFrame): PetrelError | null {
    switch (f.kind.case) {
      case "sendResult":
        this.onSendResult(f.kind.value);
        return null;
      case "presence": {
        const p = f.kind.value;
        const state = p.state === Presence_State.ONLINE ? "online" : p.state === Presence_State.OFFLINE ? "offline" : "unknown";
        this.dispatchEvent(new CustomEvent("presence", { detail: { user: p.user, state } }));
        return null;
      }
      case "typing": {
        const t = f.kind.value;
        this.dispatchEvent(
          new CustomEvent("typing", { detail: { from: t.from, group: t.group || undefined, typing: t.typing } }),
        );
        return null;
      }
      case "deliver":
        for (const m of f.kind.value.messages) this.onMessage(m);
        return null;
      case "syncBatch":
        this.onSyncBatch(f.kind.value);
        return null;
      case "pushRegistered":
        this.onPushRegistered(f.kind.value);
        return null;
      case "conversationList":
        this.onConversationList(f.kind.value);
        return null;
      case "conversationUpdate": {
        const c = f.kind.value.conversation;
        if (c) this.dispatchEvent(new CustomEvent("conversation", { detail: this.toConversation(c) }));
        return null;
      }
      case "goAway":
        // Draining: reconnect (elsewhere) after its delay, resume and re-send; not an
        // error for the app.
        this.goAwayAfterMs = f.kind.value.reconnectAfterMs;
        return new PetrelError("GOING_AWAY", f.kind.value.reason);
      case "error": {
        const e = new PetrelError(errorCodeName(f.kind.value.code), f.kind.value.message);
        if (f.kind.value.fatal) return e;
        this.dispatchEvent(new CustomEvent("error", { detail: e }));
        return null;
      }
      default:
        return null;
    }
  }

  private onSendResult(r: WireSendResult): void {
    const p = this.pending.get(r.clientMsgId);
    // `queued` resolves the send (it is durable at the edge and is not re-sent); the
    // final `stored` that follows, if this connection is still open, is a `sendresult`
    // event.
    const status = statusName(r.status);
    const result: SendResult = {
      clientMsgId: r.clientMsgId,
      status,
      subject: r.subject,
      seq: r.seq,
      msgId: r.msgId,
      duplicate: r.duplicate,
      ...(status === "rejected" ? { reason: errorCodeName(r.reason), detail: r.detail } : {}),
    };
    if (!p) {
      this.dispatchEvent(new CustomEvent("sendresult", { detail: result }));
      return;
    }
    this.pending.delete(r.clientMsgId);
    p.resolve(result);
  }

  private onPushRegistered(r: PushRegistered): void {
    const waiter = this.pushes.get(r.requestId);
    if (!waiter) return;
    this.pushes.delete(r.requestId);
    if (r.error) waiter.reject(new PetrelError(errorCodeName(r.error), r.detail));
    else waiter.resolve();
  }

  private onConversationList(l: ConversationList): void {
    const waiter = this.lists.get(l.requestId);
    if (!waiter) return;
    this.lists.delete(l.requestId);
    if (l.error) {
      waiter.reject(new PetrelError(errorCodeName(l.error), l.detail));
      return;
    }
    waiter.resolve({ conversations: l.conversations.map((c) => this.toConversation(c)), more: l.more });
  }

  private toConversation(c: WireConversation): PetrelConversation {
    return {
      ...(c.with.case === "user" ? { user: c.with.value } : {}),
      ...(c.with.case === "group" ? { group: c.with.value } : {}),
      ...(c.last ? { last: this.toMessage(c.last) } : {}),
      unread: c.unread,
      unreadMentions: c.unreadMentions,
      readSeq: c.readSeq,
      pinned: c.pinned,
      muted: c.muted,
      updatedMs: Number(c.updatedMs),
    };
  }

  private onSyncBatch(b: SyncBatch): void {
    const waiter = this.syncs.get(b.requestId);
    if (!waiter) return;
    this.syncs.delete(b.requestId);
    if (b.error) {
      waiter.reject(new PetrelError(errorCodeName(b.error), b.detail));
      return;
    }
    waiter.resolve({ messages: b.messages.map((m) => this.toMessage(m)), more: b.more });
  }

  private toMessage(m: WireMessage): PetrelMessage {
    return {
      id: `${m.subject}/${m.seq}`,
      subject: m.subject,
      seq: m.seq,
      from: m.from,
      fromDevice: m.fromDevice,
      to: m.to,
      ...(m.group ? { group: m.group } : {}),
      ...(m.receipt
        ? {
            receipt: {
              kind: m.receipt.kind === Receipt_Kind.READ ? ("read" as const) : ("delivered" as const),
              clientMsgId: m.receipt.clientMsgId,
              subject: m.receipt.subject,
              seq: m.receipt.seq,
            },
          }
        : {}),
      ...(m.notification
        ? {
            notification: {
              id: m.notification.id,
              title: m.notification.title,
              body: m.notification.body,
              action: m.notification.action,
              priority: (["normal", "low", "high"] as const)[m.notification.priority] ?? "normal",
              badge: m.notification.badge,
              data: { ...m.notification.data },
              timeMs: Number(m.notification.timeMs),
            },
          }
        : {}),
      timeMs: Number(m.timeMs),
      clientMsgId: m.clientMsgId,
      contentType: m.contentType,
      content: m.content,
      text: textDecoder.decode(m.content),
      outgoing: m.from === this._welcome?.user,
      ...(m.replyTo ? { replyTo: { subject: m.replyTo.subject, seq: m.replyTo.seq } } : {}),
      mentions: [...m.mentions],
      ...(m.amends ? { amends: { target: m.amends.target, recall: m.amends.recall } } : {}),
      ...(m.read
        ? {
            read: {
              ...(m.read.conversation.case === "user" ? { user: m.read.conversation.value } : {}),
              ...(m.read.conversation.case === "group" ? { group: m.read.conversation.value } : {}),
              seq: m.read.seq,
            },
          }
        : {}),
      editedMs: Number(m.editedMs),
      recalled: m.recalled,
    };
  }

  private onMessage(m: WireMessage): void {
    this._stats.wireDeliveries++;
    const id = `${m.subject}/${m.seq}`;
    const cursor = this.cursors.get(m.subject) ?? 0n;
    if (this.seen.has(id) || m.seq <= cursor) {
      this._stats.duplicatesDropped++;
      return;
    }
    this.remember_seen(id);
    const msg = this.toMessage(m);
    this._stats.appDeliveries++;
    this.dispatchEvent(new CustomEvent("message", { detail: msg }));
    if (this.opts.autoAck) this.ack(msg);
    else this.save();
  }

  // ---- reconnecting ----

  private async reconnectLoop(): Promise<void> {
    this.setState("reconnecting");
    while (!this.closing) {
      const ceiling = backoffCeilingMs(this.backoff, this.opts.initialBackoffMs, this.opts.maxBackoffMs);
      // A GoAway says how long to wait; otherwise full jitter.
      const delay = this.goAwayAfterMs ?? Math.random() * ceiling;
      if (this.goAwayAfterMs === null) this.backoff = Math.min(this.backoff + 1, 30);
      this.goAwayAfterMs = null;
      this._retryAt = Date.now() + delay;
      await new Promise<void>((r) => {
        this.wakeRetry = r;
        this.retryTimer = setTimeout(r, delay);
      });
      this.wakeRetry = null;
      this._retryAt = null;
      if (this.closing) return;
      try {
        await this.attempt();
        this._stats.reconnects++;
        return;
      } catch (e) {
        const err = e instanceof PetrelError ? e : new PetrelError("CONNECT_FAILED", String(e));
        this.dispatchEvent(new CustomEvent("error", { detail: err }));
        if (isPermanent(err.code, typeof this.opts.token !== "string")) {
          for (const [, p] of this.pending) p.reject(err);
          this.pending.clear();
          this.setState("closed");
          return;
        }
      }
    }
  }

  // ---- keep-alive ----

  private startPings(conn: Conn): void {
    this.stopPings();
    this.lastHeard = Date.now();
    let nonce = 0n;
    this.pingTimer = setInterval(() => {
      if (Date.now() - this.lastHeard > 45_000) {
        // Nothing heard for two ping periods: the path is dead even if the socket
        // does not know yet.
        conn.close(0, "no answer to pings");
        return;
      }
      nonce++;
      const ping = create(ClientFrameSchema, { kind: { case: "ping", value: create(PingSchema, { nonce }) } });
      conn.write(encodeFrame(toBinary(ClientFrameSchema, ping))).catch(() => {});
    }, 20_000);
  }

  private stopPings(): void {
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.pingTimer = null;
  }

  // ---- state kept in storage ----

  private key(what: string): string {
    return `${this.opts.storageKey}:${what}`;
  }

  private device(): string {
    if (this.opts.device) return this.opts.device;
    let d = this.storage?.getItem(this.key("device")) ?? null;
    if (!d) {
      d = `web-${randomId().slice(0, 12)}`;
      this.storage?.setItem(this.key("device"), d);
    }
    return d;
  }

  private rememberedFallback(): boolean {
    const until = Number(this.storage?.getItem(this.key("fallback-until")) ?? 0);
    return until > Date.now();
  }

  private remember(kind: "websocket" | null): void {
    if (kind) this.storage?.setItem(this.key("fallback-until"), String(Date.now() + REMEMBER_FALLBACK_MS));
    else this.storage?.removeItem(this.key("fallback-until"));
  }

  private remember_seen(id: string): void {
    this.seen.add(id);
    this.seenOrder.push(id);
    while (this.seenOrder.length > SEEN_LIMIT) {
      const old = this.seenOrder.shift();
      if (old) this.seen.delete(old);
    }
  }

  private load(): void {
    try {
      const raw = this.storage?.getItem(this.key(`state:${this.opts.device ?? this.device()}`));
      if (!raw) return;
      const s = JSON.parse(raw) as { cursors?: Record<string, string>; seen?: string[] };
      for (const [k, v] of Object.entries(s.cursors ?? {})) this.cursors.set(k, BigInt(v));
      for (const id of s.seen ?? []) this.remember_seen(id);
    } catch {
      // Unreadable saved state: start fresh rather than fail.
    }
  }

  private save(): void {
    if (this.saveTimer || !this.storage) return;
    this.saveTimer = setTimeout(() => this.saveNow(), PetrelClient.SAVE_DELAY_MS);
  }

  private saveNow(): void {
    if (this.saveTimer) clearTimeout(this.saveTimer);
    this.saveTimer = null;
    try {
      this.storage?.setItem(
        this.key(`state:${this.opts.device ?? this.device()}`),
        JSON.stringify({ cursors: this.cursorMap, seen: this.seenOrder.slice(-SEEN_LIMIT) }),
      );
    } catch {
      // Storage full or unavailable: dedup still works for this page's lifetime.
    }
  }

  private setState(state: State): void {
    if (this._state === state) return;
    this._state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, transport: this._transport } }));
  }
}

/** Decodes base64url (padding optional). */
function base64UrlDecode(s: string): Uint8Array {
  const b64 = s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4);
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
