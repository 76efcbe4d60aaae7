import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { before, test } from "node:test";

import { ProtocolError } from "../src/index.js";
import { loadDecoder } from "../src/index.js";

const PYTHON = process.env.TICKWIRE_PYTHON ?? "python";

// Bodies as a tickwire server makes them (§5.1): python-zstandard frames with their content
// size, no dictionary id, no checksum, and their magic number cut off.
const MAKE = `
import json, sys, zstandard
samples = [json.dumps({"symbol": "S%03d" % (i % 50), "bid": i, "ask": i + 1}).encode() * 3 for i in range(2000)]
d = zstandard.train_dictionary(2048, samples)
def body(c, data): return c.compress(data)[4:]
with_dict = zstandard.ZstdCompressor(dict_data=d, write_dict_id=False, write_checksum=False)
plain = zstandard.ZstdCompressor(write_checksum=False)
big = bytes(range(256)) * 400
print(json.dumps({
    "dictionary": d.as_bytes().hex(),
    "frames": [[body(with_dict, s).hex(), s.hex()] for s in samples[:50]],
    "plain": [body(plain, big).hex(), big.hex()],
}))
`;

let made;
let decoder;
const hex = (text) => Uint8Array.from(Buffer.from(text, "hex"));

before(async () => {
  made = JSON.parse(execFileSync(PYTHON, ["-c", MAKE], { encoding: "utf8" }));
  decoder = await loadDecoder();
  decoder.addDictionary(3, hex(made.dictionary));
});

test("bodies compressed with a dictionary decompress exactly", () => {
  for (const [body, raw] of made.frames) {
    assert.ok(hex(body).length < hex(raw).length);
    assert.deepEqual(decoder.decompress(hex(body), 3, 65536), hex(raw));
  }
});

test("a body compressed without a dictionary, larger than the first buffers", () => {
  const [body, raw] = made.plain;
  assert.deepEqual(decoder.decompress(hex(body), 0, 1 << 20), hex(raw));
});

test("refusals: over the limit (1009), an unknown dictionary (4002), not a frame (1007)", () => {
  const [body] = made.plain;
  const refused = (code) => (error) => error instanceof ProtocolError && error.code === code;
  assert.throws(() => decoder.decompress(hex(body), 0, 1000), refused(1009));
  assert.throws(() => decoder.decompress(hex(made.frames[0][0]), 9, 65536), refused(4002));
  assert.throws(() => decoder.decompress(new Uint8Array([1, 2, 3, 4, 5, 6]), 0, 65536), refused(1007));
});
