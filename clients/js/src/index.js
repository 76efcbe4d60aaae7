export { Client, ConnectionClosed, RequestError, SUBPROTOCOL, SUBPROTOCOL_ZSTD, Subscription, connect } from "./client.js";
export { FIELD, Schema, TableView, decimalString } from "./table.js";
export { KIND, ProtocolError, decodeBody, decodeMessage, encodeMessage, openEnvelope } from "./codec.js";
export { ZstdDecoder, loadDecoder } from "./zstd.js";
