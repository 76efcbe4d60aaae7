export { Client, ConnectionClosed, RequestError, SUBPROTOCOL, Subscription, connect } from "./client.js";
export { KIND, ProtocolError, decodeMessage, encodeMessage } from "./codec.js";
export { ZstdDecoder, loadDecoder } from "./zstd.js";
