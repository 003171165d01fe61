// What a client does after a close, shared with the Rust SDK through the vectors in
// proto/conformance/session.json.

/** Codes after which reconnecting cannot help: the app must act. */
export const PERMANENT_CODES: readonly string[] = [
  "UNAUTHENTICATED",
  "TOKEN_EXPIRED",
  "INVALID_ID",
  "UNSUPPORTED_VERSION",
  "PROTOCOL",
];

/**
 * Whether a close with this code name ends reconnecting. TOKEN_EXPIRED does not when
 * the SDK can fetch a fresh token (a token function).
 */
export function isPermanent(code: string, canRefreshToken = false): boolean {
  if (code === "TOKEN_EXPIRED") return !canRefreshToken;
  return PERMANENT_CODES.includes(code);
}

/** The reconnect delay's ceiling before attempt `n` (0-based): doubled per attempt, capped. */
export function backoffCeilingMs(n: number, initialMs: number, maxMs: number): number {
  return Math.min(maxMs, initialMs * 2 ** Math.min(n, 30));
}
