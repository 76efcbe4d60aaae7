import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { ProtocolError, RequestError, SUBPROTOCOL, connect, decodeMessage, encodeMessage } from "../src/index.js";
import { startServer } from "./server.js";

function until(count) {
  // Updates, and a promise that resolves once `count` have arrived.
  const updates = [];
  let done;
  const arrived = new Promise((resolve) => (done = resolve));
  return {
    updates,
    arrived,
    onUpdate(update) {
      updates.push(update);
      if (updates.length === count) done(updates);
    },
  };
}

describe("the envelope and messages (§3, §4.1)", () => {
  test("a message round-trips behind header 0x00", () => {
    const bytes = encodeMessage(12, 7, "chat.room", { text: "hi" }, null);
    assert.equal(bytes[0], 0x00);
    assert.deepEqual(decodeMessage(bytes), [12, 7, "chat.room", { text: "hi" }, null]);
  });

  for (const [bytes, code, what] of [
    [new Uint8Array([]), 1007, "an empty message"],
    [new Uint8Array([0x20, 0x91, 0x01]), 1002, "reserved envelope bits set"],
    [new Uint8Array([0x02, 0x91, 0x01]), 1002, "a dictionary id on an uncompressed body"],
    [new Uint8Array([0x01, 0x00]), 1002, "a compressed body on tickwire.v2"],
    [new Uint8Array([0x00, 0x01]), 1007, "a body that is not [kind, ...]"],
    [new Uint8Array([0x00, 0xc1]), 1007, "not msgpack"],
  ]) {
    test(`refused: ${what} (${code})`, () => {
      assert.throws(() => decodeMessage(bytes), (error) => error instanceof ProtocolError && error.code === code);
    });
  }
});

describe("against a real server: tickwire serve --demo ticker", () => {
  let server;
  before(async () => {
    server = await startServer("--demo", "ticker", "--rate", "1000");
  });
  after(async () => server.stop());

  test("without compression it connects with tickwire.v2 and gets HELLO", async () => {
    const client = await connect(server.url, { compression: false });
    try {
      assert.equal(client.subprotocol, SUBPROTOCOL);
      assert.equal(typeof client.hello.sessionId, "string");
      assert.ok(client.hello.heartbeatIntervalMs > 0);
    } finally {
      client.close();
    }
  });

  test("a pattern's topics arrive with consecutive offsets, nothing lost", async () => {
    const client = await connect(server.url);
    try {
      const seen = until(50);
      const subscription = await client.subscribe("trades.*", seen.onUpdate);
      await seen.arrived;
      const last = new Map();
      for (const update of seen.updates.slice(0, 50)) {
        assert.equal(update.type, "message");
        assert.match(update.topic, /^trades\./);
        if (last.has(update.topic)) assert.equal(update.offset, last.get(update.topic) + 1);
        last.set(update.topic, update.offset);
        assert.equal(typeof update.payload, "object");
      }
      const [topic, offset] = [...last][0];
      assert.ok(subscription.position(topic).offset >= offset);
    } finally {
      client.close();
    }
  });
});

describe("publishing with acknowledgement (--client-publish chat.*)", () => {
  let server;
  before(async () => {
    server = await startServer("--client-publish", "chat.*");
  });
  after(async () => server.stop());

  test("published messages arrive in order; a repeated key is published once", async () => {
    const client = await connect(server.url);
    try {
      const seen = until(2);
      await client.subscribe("chat.room", seen.onUpdate);
      const first = await client.publish("chat.room", { text: "a" }, { key: "m1" });
      const second = await client.publish("chat.room", { text: "b" });
      const again = await client.publish("chat.room", { text: "a" }, { key: "m1" });
      assert.equal(first.offset, 1);
      assert.equal(second.offset, 2);
      assert.deepEqual(again, first); // the original ACK: nothing new published
      const updates = await seen.arrived;
      assert.deepEqual(
        updates.map((u) => [u.type, u.topic, u.offset, u.payload.text]),
        [
          ["message", "chat.room", 1, "a"],
          ["message", "chat.room", 2, "b"],
        ],
      );
    } finally {
      client.close();
    }
  });

  test("a pattern delivers a topic that appears after it was subscribed", async () => {
    const client = await connect(server.url);
    try {
      const seen = until(1);
      await client.subscribe("chat.*", seen.onUpdate);
      await client.publish("chat.later", { text: "new" });
      const [update] = await seen.arrived;
      assert.deepEqual([update.type, update.topic, update.offset], ["message", "chat.later", 1]);
    } finally {
      client.close();
    }
  });

  test("publishing outside the allowed patterns is refused with 403", async () => {
    const client = await connect(server.url);
    try {
      await assert.rejects(client.publish("secret", 1), (error) => error instanceof RequestError && error.code === 403);
    } finally {
      client.close();
    }
  });
});
