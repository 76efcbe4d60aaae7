// zstd decompression for tickwire.v2+zstd (docs/PROTOCOL.md §5), with the server's
// dictionaries: zstd's own decoder, built for wasm32 from zstd's sources
// (zstd/build.sh -> src/zstd-decoder.wasm, 24 KB gzipped).

import { ProtocolError } from "./codec.js";

const MAGIC = [0x28, 0xb5, 0x2f, 0xfd]; // a body is a frame without it (§5.1)
const UNKNOWN = 0xffffffffffffffffn; // ZSTD_CONTENTSIZE_UNKNOWN
const ERROR = 0xfffffffffffffffen; // ZSTD_CONTENTSIZE_ERROR

/** The wasm module's bytes: fetched beside this file in a browser, read in Node. */
async function wasmBytes() {
  const url = new URL("./zstd-decoder.wasm", import.meta.url);
  if (url.protocol === "file:") {
    const { readFile } = await import("node:fs/promises");
    return readFile(url);
  }
  const response = await fetch(url);
  if (!response.ok) throw new Error(`cannot load ${url}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

/** Load the decoder (once per page is enough). */
export async function loadDecoder(bytes) {
  const { instance } = await WebAssembly.instantiate(bytes ?? (await wasmBytes()), {});
  return new ZstdDecoder(instance.exports);
}

export class ZstdDecoder {
  constructor(exports) {
    this._z = exports;
    this._dctx = exports.ZSTD_createDCtx();
    this._dictionaries = new Map(); // dict id (1-15) -> {ddict: a DDict pointer, digest}
    this._src = { pointer: 0, size: 0 };
    this._dst = { pointer: 0, size: 0 };
  }

  /**
   * Make dictionary `id` (1-15) usable: `bytes` as the server sent it (DICT_DATA). An id
   * the server reuses for a new dictionary (another `digest`) replaces the old one; the
   * old one's memory is not given back (a rotation costs a dictionary's size).
   */
  addDictionary(id, bytes, digest = null) {
    const held = this._dictionaries.get(id);
    if (held !== undefined && held.digest === digest) return;
    const pointer = this._z.malloc(bytes.length);
    if (!pointer) throw new ProtocolError(1009, "out of memory for a dictionary");
    new Uint8Array(this._z.memory.buffer).set(bytes, pointer);
    const ddict = this._z.ZSTD_createDDict(pointer, bytes.length);
    if (!ddict) throw new ProtocolError(1007, `dictionary ${id} could not be loaded`);
    this._dictionaries.set(id, { ddict, digest });
  }

  /**
   * The decompressed bytes of one §5.1 body, compressed with dictionary `id` (0: none),
   * of at most `limit` bytes (the HELLO's max_decompressed_bytes).
   * @throws {ProtocolError} 1007 (a bad frame), 1009 (over the limit), 4002 (an unknown
   *   dictionary)
   */
  decompress(body, id, limit) {
    const ddict = id === 0 ? 0 : this._dictionaries.get(id)?.ddict;
    if (ddict === undefined) throw new ProtocolError(4002, `unknown dictionary ${id}`);
    const src = this._room(this._src, body.length + 4);
    let memory = new Uint8Array(this._z.memory.buffer);
    memory.set(MAGIC, src);
    memory.set(body, src + 4);
    const declared = BigInt.asUintN(64, BigInt(this._z.ZSTD_getFrameContentSize(src, body.length + 4)));
    if (declared === ERROR) throw new ProtocolError(1007, "not a zstd frame");
    if (declared === UNKNOWN) throw new ProtocolError(1007, "a frame without its content size");
    if (declared > BigInt(limit)) {
      throw new ProtocolError(1009, `a body of ${declared} bytes decompressed, over ${limit}`);
    }
    const size = Number(declared);
    const dst = this._room(this._dst, Math.max(size, 1));
    const written = this._z.ZSTD_decompress_usingDDict(this._dctx, dst, size, src, body.length + 4, ddict);
    if (this._z.ZSTD_isError(written) || written >>> 0 !== size) {
      throw new ProtocolError(1007, "a zstd frame that does not decompress");
    }
    memory = new Uint8Array(this._z.memory.buffer); // it may have grown
    return memory.slice(dst, dst + size);
  }

  _room(buffer, size) {
    if (buffer.size < size) {
      buffer.size = Math.max(size, 2 * buffer.size, 4096);
      buffer.pointer = this._z.malloc(buffer.size);
      if (!buffer.pointer) throw new ProtocolError(1009, "out of memory for decompression");
    }
    return buffer.pointer;
  }
}
