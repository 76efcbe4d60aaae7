// tickwire/2's binary framing (docs/PROTOCOL.md §3, §4): a one-byte envelope header, then
// one msgpack array [kind, ...positions]. Pure functions, no I/O.

import { Decoder, ExtensionCodec, encode } from "@msgpack/msgpack";

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
 * The envelope of one binary message (§3): {compressed, dictionary, body}, checked as §3.1
 * says. `zstd`: whether the connection negotiated `tickwire.v2+zstd`.
 * @param {Uint8Array} bytes
 */
export function openEnvelope(bytes, zstd) {
  if (bytes.length === 0) throw new ProtocolError(1007, "an empty message");
  const header = bytes[0];
  if (header & RESERVED) throw new ProtocolError(1002, "reserved envelope bits set");
  const dictionary = (header & DICT) >> 1;
  const compressed = (header & COMPRESSED) !== 0;
  if (dictionary && !compressed) throw new ProtocolError(1002, "a dictionary id on an uncompressed body");
  if (compressed && !zstd) throw new ProtocolError(1002, "a compressed body on tickwire.v2 (not negotiated)");
  return { compressed, dictionary, body: bytes.subarray(1) };
}

// msgpack ext types are never valid (§4.14): every one, the timestamp included, is refused.
const refuseExtensions = new ExtensionCodec();
for (let type = -128; type <= 127; type++) {
  refuseExtensions.register({
    type,
    encode: () => null,
    decode: () => {
      throw new ProtocolError(1007, `a msgpack ext type (${type}) is not a tickwire value`);
    },
  });
}
const decoder = new Decoder({ useBigInt64: true, extensionCodec: refuseExtensions });

/**
 * Integers arrive exactly: a number when it is safe (|n| <= 2^53 - 1), a BigInt beyond.
 * msgpack's 64-bit forms decode as BigInt; only a body holding one of their head bytes
 * (0xcf, 0xd3) can hold one, so only those are walked.
 */
function exactIntegers(value) {
  if (typeof value === "bigint") {
    return value >= -9007199254740991n && value <= 9007199254740991n ? Number(value) : value;
  }
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) value[i] = exactIntegers(value[i]);
  } else if (value !== null && typeof value === "object" && !(value instanceof Uint8Array)) {
    for (const key of Object.keys(value)) value[key] = exactIntegers(value[key]);
  }
  return value;
}

/** One msgpack body: [kind, ...positions], checked as §4.1 says. */
export function decodeBody(body) {
  let message;
  try {
    message = decoder.decode(body);
  } catch (error) {
    if (error instanceof ProtocolError) throw error;
    throw new ProtocolError(1007, `not msgpack: ${error.message}`);
  }
  if (body.includes(0xcf) || body.includes(0xd3)) message = exactIntegers(message);
  if (!Array.isArray(message) || message.length === 0 || !Number.isInteger(message[0])) {
    throw new ProtocolError(1007, "a body that is not [kind, ...]");
  }
  return message;
}

/**
 * The [kind, ...positions] array of one binary message of the uncompressed variant
 * (`tickwire.v2`), checked as §3.1 and §4.1 say.
 * @param {Uint8Array} bytes
 */
export function decodeMessage(bytes) {
  return decodeBody(openEnvelope(bytes, false).body);
}

/** The bytes of a client message: header 0x00, then the msgpack array. */
export function encodeMessage(kind, ...positions) {
  const body = encode([kind, ...positions], { useBigInt64: true });
  const out = new Uint8Array(body.length + 1);
  out.set(body, 1);
  return out;
}
