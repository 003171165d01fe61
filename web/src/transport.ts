// The two browser transports behind one small interface: a reliable, ordered byte
// stream plus a close code. WebTransport uses one bidirectional stream (the control
// stream) of a session on the gateway's QUIC port, plus the unidirectional streams the
// gateway opens for deliveries and datagrams for typing; WebSocket uses binary messages.

import { closeCodeOf, errorCodeOfClose } from "./errors.js";

/** Which transport a connection uses. */
export type TransportKind = "webtransport" | "websocket";

/** How a connection ended. */
export interface CloseInfo {
  /** The Petrel error code its close code carried ({@link errorCodeOfClose}); 0 when none. */
  code: number;
  reason: string;
}

/** One open connection. */
export interface Conn {
  readonly kind: TransportKind;
  /** Writes bytes; rejects once the connection is gone. */
  write(data: Uint8Array): Promise<void>;
  /** Received chunks; ends when the connection closes. */
  chunks(): AsyncIterable<Uint8Array>;
  /** Sends an unreliable datagram (WebTransport); false when there are none or it does not fit. */
  sendDatagram?(data: Uint8Array): boolean;
  /** Received datagrams (WebTransport); ends when the session closes. */
  datagrams?(): AsyncIterable<Uint8Array>;
  /** Unidirectional streams the gateway opens for deliveries (WebTransport), each as its chunks. */
  deliveryStreams?(): AsyncIterable<AsyncIterable<Uint8Array>>;
  /** Closes from this side; `code` is a Petrel error code (0: a normal close). */
  close(code?: number, reason?: string): void;
  /** Settles when the connection has ended, however. */
  readonly closed: Promise<CloseInfo>;
}

function timeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what} did not complete within ${ms} ms`)), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e) => {
        clearTimeout(t);
        reject(e);
      },
    );
  });
}

function hexToBytes(hex: string): Uint8Array {
  const clean = hex.replace(/:/g, "");
  if (!/^[0-9a-fA-F]{64}$/.test(clean)) {
    throw new Error(`certificate hash must be 64 hex digits (SHA-256), got ${JSON.stringify(hex)}`);
  }
  const out = new Uint8Array(32);
  for (let i = 0; i < 32; i++) out[i] = parseInt(clean.slice(i * 2, i * 2 + 2), 16);
  return out;
}

/** Whether this browser has WebTransport at all. */
export function webTransportAvailable(): boolean {
  return typeof (globalThis as { WebTransport?: unknown }).WebTransport === "function";
}

/**
 * Opens a WebTransport session and its control stream. `certHashes` (hex SHA-256)
 * pin a self-signed certificate (`serverCertificateHashes`); empty means the
 * browser's usual certificate checks.
 */
export async function openWebTransport(url: string, certHashes: string[], timeoutMs: number): Promise<Conn> {
  const options: WebTransportOptions = {};
  if (certHashes.length > 0) {
    options.serverCertificateHashes = certHashes.map((h) => ({
      algorithm: "sha-256",
      value: hexToBytes(h) as BufferSource,
    }));
  }
  const wt = new WebTransport(url, options);
  // Keep an unobserved rejection of `closed` from being reported as unhandled.
  const closed: Promise<CloseInfo> = wt.closed.then(
    (info) => ({ code: errorCodeOfClose("webtransport", info.closeCode ?? 0), reason: info.reason ?? "" }),
    (e: unknown) => ({ code: 0, reason: e instanceof Error ? e.message : String(e) }),
  );
  try {
    await timeout(wt.ready, timeoutMs, "WebTransport handshake");
  } catch (e) {
    try {
      wt.close();
    } catch {
      /* already failed */
    }
    throw e;
  }
  const stream = await wt.createBidirectionalStream();
  const writer = stream.writable.getWriter();
  const reader = stream.readable.getReader();
  const dgWriter = wt.datagrams.writable.getWriter();
  return {
    kind: "webtransport",
    write: (data) => writer.write(data),
    sendDatagram(data) {
      const max = (wt.datagrams as { maxDatagramSize?: number }).maxDatagramSize ?? 0;
      if (data.length > max) return false;
      dgWriter.write(data).catch(() => {});
      return true;
    },
    async *datagrams() {
      yield* readAll(wt.datagrams.readable.getReader());
    },
    async *chunks() {
      yield* readAll(reader);
    },
    async *deliveryStreams() {
      const incoming = wt.incomingUnidirectionalStreams.getReader();
      for (;;) {
        let x: ReadableStreamReadResult<ReadableStream<Uint8Array>>;
        try {
          x = await incoming.read();
        } catch {
          return;
        }
        if (x.done) return;
        yield readAll(x.value.getReader());
      }
    },
    close(code = 0, reason = "") {
      try {
        wt.close({ closeCode: closeCodeOf("webtransport", code), reason });
      } catch {
        /* already closed */
      }
    },
    closed,
  };
}

/** A stream's chunks until it ends or fails (a failed stream ends the same way: the connection reports why). */
async function* readAll(reader: ReadableStreamDefaultReader<Uint8Array>): AsyncGenerator<Uint8Array> {
  for (;;) {
    let r: ReadableStreamReadResult<Uint8Array>;
    try {
      r = await reader.read();
    } catch {
      return;
    }
    if (r.done) return;
    yield r.value;
  }
}

/** Opens a WebSocket carrying binary frames. */
export async function openWebSocket(url: string, timeoutMs: number): Promise<Conn> {
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  const queue: Uint8Array[] = [];
  let wake: (() => void) | null = null;
  let ended = false;
  let resolveClosed!: (c: CloseInfo) => void;
  const closed = new Promise<CloseInfo>((r) => (resolveClosed = r));
  ws.onmessage = (ev) => {
    if (ev.data instanceof ArrayBuffer) queue.push(new Uint8Array(ev.data));
    wake?.();
  };
  ws.onclose = (ev) => {
    ended = true;
    resolveClosed({ code: errorCodeOfClose("websocket", ev.code), reason: ev.reason });
    wake?.();
  };
  await timeout(
    new Promise<void>((resolve, reject) => {
      ws.onopen = () => resolve();
      ws.onerror = () => reject(new Error(`WebSocket connection to ${url} failed`));
    }),
    timeoutMs,
    "WebSocket handshake",
  ).catch((e) => {
    ws.close();
    throw e;
  });
  ws.onerror = null;
  return {
    kind: "websocket",
    async write(data) {
      if (ws.readyState !== WebSocket.OPEN) throw new Error("WebSocket is closed");
      ws.send(data);
    },
    async *chunks() {
      for (;;) {
        const next = queue.shift();
        if (next) {
          yield next;
          continue;
        }
        if (ended) return;
        await new Promise<void>((r) => (wake = r));
        wake = null;
      }
    },
    close(code = 0, reason = "") {
      ws.close(closeCodeOf("websocket", code), reason);
    },
    closed,
  };
}
