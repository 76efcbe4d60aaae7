// tickwire/2's binary framing (docs/PROTOCOL.md §3, §4): a one-byte envelope header, then
// one msgpack array [kind, ...positions]. Pure functions, no I/O.

import { decode, encode } from "@msgpack/msgpack";

export const KIND = Object.freeze({
  HELLO: 1,
  ERROR: 2,
  SUBSCRIBE: 3,
  SUBSCRIBED: 4,
  UNSUBSCRIBE: 5,
  UNSUBSCRIBED: 6,
  DATA: 7,
  BATCH: 8,
  SNAPSHOT: 9,
  GAP: 10,
  RESYNC: 11,
  PUBLISH: 12,
  ACK: 13,
  DICT_OFFER: 14,
  DICT_REQUEST: 15,
  DICT_DATA: 16,
  AUTH: 17,
});

const COMPRESSED = 0x01;
const DICT = 0x1e;
const RESERVED = 0xe0;

/** A message the client must refuse: `code` is the WebSocket close code it closes with. */
export class ProtocolError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "ProtocolError";
    this.code = code;
  }
}

/**
 * The [kind, ...positions] array of one binary message of the uncompressed variant
 * (`tickwire.v2`), checked as §3.1 and §4.1 say.
 * @param {Uint8Array} bytes
 */
export function decodeMessage(bytes) {
  if (bytes.length === 0) throw new ProtocolError(1007, "an empty message");
  const header = bytes[0];
  if (header & RESERVED) throw new ProtocolError(1002, "reserved envelope bits set");
  if (header & DICT && !(header & COMPRESSED)) {
    throw new ProtocolError(1002, "a dictionary id on an uncompressed body");
  }
  if (header & COMPRESSED) {
    throw new ProtocolError(1002, "a compressed body on tickwire.v2 (not negotiated)");
  }
  let body;
  try {
    body = decode(bytes.subarray(1), { useBigInt64: false });
  } catch (error) {
    throw new ProtocolError(1007, `not msgpack: ${error.message}`);
  }
  if (!Array.isArray(body) || body.length === 0 || !Number.isInteger(body[0])) {
    throw new ProtocolError(1007, "a body that is not [kind, ...]");
  }
  return body;
}

/** The bytes of a client message: header 0x00, then the msgpack array. */
export function encodeMessage(kind, ...positions) {
  const body = encode([kind, ...positions]);
  const out = new Uint8Array(body.length + 1);
  out.set(body, 1);
  return out;
}
