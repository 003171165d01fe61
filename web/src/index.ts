/**
 * Petrel browser SDK.
 *
 * Layout: `client.ts` — {@link PetrelClient} (connect, send, events, acks, reconnect,
 * dedup); `errors.ts` — {@link PetrelError} and the error code names, also as
 * carried by close codes; `transport.ts` — WebTransport and WebSocket behind one interface;
 * `frame.ts` — the varint length framing; `gen/` — protobuf types generated from
 * `proto/proto/petrel/v1/petrel.proto` by protoc-gen-es (`npm run gen`; `npm run check-gen`
 * fails on drift).
 *
 * ```ts
 * import { PetrelClient } from "@petrel/web";
 * const client = new PetrelClient({ webTransportUrl, webSocketUrl, token, certHashesUrl });
 * client.addEventListener("message", (e) => console.log(e.detail.from, e.detail.text));
 * await client.connect();
 * console.log(client.transport); // "webtransport" or "websocket"
 * await client.send("bob", "hi");
 * ```
 */
export { PetrelClient } from "./client.js";
export { PetrelError, errorCodeName, errorCodeOfClose } from "./errors.js";
export { PERMANENT_CODES, backoffCeilingMs, isPermanent } from "./policy.js";
export type { PetrelOptions, PetrelMessage, SendResult, Welcome, State, Stats, HistoryPage, PushTarget, PushOptions, PetrelConversation, ConversationPage, SendOptions } from "./client.js";
export type { TransportKind, CloseInfo } from "./transport.js";
export { webTransportAvailable } from "./transport.js";
export { encodeFrame, FrameDecoder, FrameError } from "./frame.js";
/** The generated protobuf schemas (for tools and tests that speak the protocol). */
export * as proto from "./gen/petrel/v1/petrel_pb.js";
