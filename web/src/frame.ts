// Length-prefixed frames: an unsigned LEB128 varint length, then the protobuf body.
// The same framing as the Rust side (proto/src/frame.rs) on every transport.

/** A frame could not be decoded. */
export class FrameError extends Error {}

/** Prefixes `body` with its length. */
export function encodeFrame(body: Uint8Array): Uint8Array {
  const prefix: number[] = [];
  let n = body.length;
  while (n >= 0x80) {
    prefix.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  prefix.push(n);
  const out = new Uint8Array(prefix.length + body.length);
  out.set(prefix, 0);
  out.set(body, prefix.length);
  return out;
}

/** Splits a byte stream into frames; refuses a frame longer than `maxFrameBytes`. */
export class FrameDecoder {
  private buf = new Uint8Array(0);

  constructor(private readonly maxFrameBytes: number) {}

  push(chunk: Uint8Array): void {
    if (this.buf.length === 0) {
      this.buf = chunk.slice();
      return;
    }
    const joined = new Uint8Array(this.buf.length + chunk.length);
    joined.set(this.buf, 0);
    joined.set(chunk, this.buf.length);
    this.buf = joined;
  }

  /** The next complete frame body, or `null` when more bytes are needed. */
  next(): Uint8Array | null {
    let len = 0;
    let shift = 1;
    let i = 0;
    for (;;) {
      if (i >= this.buf.length) return null;
      if (i >= 5) throw new FrameError("frame length prefix is too long");
      const b = this.buf[i++];
      len += (b & 0x7f) * shift;
      shift *= 128;
      if ((b & 0x80) === 0) break;
    }
    if (len > this.maxFrameBytes) {
      throw new FrameError(`frame of ${len} bytes exceeds the ${this.maxFrameBytes}-byte limit`);
    }
    if (this.buf.length - i < len) return null;
    const body = this.buf.slice(i, i + len);
    this.buf = this.buf.subarray(i + len);
    return body;
  }
}
