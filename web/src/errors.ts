// Petrel error codes: their one spelling, and how each transport carries them in its
// close code. The Rust side spells them the same way (`petrel_proto::error_code_name`).

import { ErrorCode } from "./gen/petrel/v1/petrel_pb.js";
import type { TransportKind } from "./transport.js";

/**
 * Name of a Petrel error code: the protobuf enum name without its `ERROR_CODE_`
 * prefix, e.g. `UNAUTHENTICATED` for 5; `UNSPECIFIED` for 0; `UNKNOWN_{n}` for a
 * number this version does not know.
 */
export function errorCodeName(code: number): string {
  return (ErrorCode[code] as string | undefined) ?? `UNKNOWN_${code}`;
}

/** An error from the SDK. */
export class PetrelError extends Error {
  constructor(
    /**
     * From the gateway, an {@link errorCodeName} (`UNAUTHENTICATED`, `TOKEN_EXPIRED`,
     * `FORBIDDEN`, `SLOW_CONSUMER`, `GOING_AWAY`, …); from the SDK itself one of
     * `CERTIFICATE_MISMATCH`, `CONNECT_FAILED`, `CLOSED`, `PROTOCOL`, `CONFIG`,
     * `DUPLICATE_SEND`.
     */
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "PetrelError";
  }
}

/** WebSocket close codes 4000–4999 (the private-use range) carry error code N as 4000 + N. */
const WS_CLOSE_BASE = 4000;
const WS_CLOSE_SPAN = 1000;
/** The WebSocket close code of a close that carries no error. */
const WS_NORMAL_CLOSE = 1000;

/**
 * The Petrel error code a transport's close code carries, 0 for none. WebSocket:
 * 4000 + N gives N, any other close code (1000, 1006, …) none. WebTransport: the
 * application close code N is N itself. Both transports decode through here, so a
 * gateway close means the same error on either.
 */
export function errorCodeOfClose(kind: TransportKind, closeCode: number): number {
  if (kind === "webtransport") return closeCode;
  const n = closeCode - WS_CLOSE_BASE;
  return n >= 0 && n < WS_CLOSE_SPAN ? n : 0;
}

/** The close code carrying Petrel error `code` (0: a normal close) on `kind`; the inverse of {@link errorCodeOfClose}. */
export function closeCodeOf(kind: TransportKind, code: number): number {
  if (kind === "webtransport") return code;
  return code > 0 && code < WS_CLOSE_SPAN ? WS_CLOSE_BASE + code : WS_NORMAL_CLOSE;
}
