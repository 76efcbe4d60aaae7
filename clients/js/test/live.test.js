// The client against real servers: zstd with the server's dictionary, table topics, and
// reconnection (a dropped connection resumed; a server killed and started again).

import assert from "node:assert/strict";
import { createServer } from "node:net";
import { after, before, describe, test } from "node:test";

import { SUBPROTOCOL, SUBPROTOCOL_ZSTD, connect } from "../src/index.js";
import { startServer } from "./server.js";

/** Updates, and `when(predicate)`: a promise that resolves once an update satisfies it. */
function recorder() {
  const updates = [];
  const waiting = [];
  return {
    updates,
    onUpdate(update) {
      updates.push(update);
      for (const w of [...waiting]) {
        if (w.predicate(update, updates)) {
          waiting.splice(waiting.indexOf(w), 1);
          w.resolve(update);
        }
      }
    },
    when(predicate) {
      const found = updates.find((u) => predicate(u, updates));
      if (found) return Promise.resolve(found);
      return new Promise((resolve) => waiting.push({ predicate, resolve }));
    },
  };
}

function freePort() {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

const rowsJSON = (rows) =>
  JSON.stringify(
    Object.keys(rows)
      .sort()
      .map((k) => rows[k]),
    (_, v) => (typeof v === "bigint" ? `${v}n` : v),
  );

describe("tickwire.v2+zstd and the quotes table (--demo ticker)", () => {
  let server;
  before(async () => {
    server = await startServer("--demo", "ticker", "--rate", "2000");
  });
  after(async () => server.stop());

  test("negotiates zstd, fetches the dictionary, and keeps the table as plain objects", async () => {
    const client = await connect(server.url);
    try {
      assert.equal(client.subprotocol, SUBPROTOCOL_ZSTD);
      assert.ok(client.hello.limits[1] > 0);
      const seen = recorder();
      const subscription = await client.subscribe("quotes", seen.onUpdate);
      const reset = await seen.when((u) => u.type === "reset");
      assert.equal(reset.reason, "subscribed");
      const symbols = Object.keys(reset.rows);
      assert.ok(symbols.length > 0);
      const row = reset.rows[symbols[0]];
      assert.equal(row.symbol, symbols[0]);
      assert.match(row.bid, /^\d+\.\d{4}$/); // FIXED with 4 decimals: an exact decimal string
      assert.equal(typeof row.ts, "bigint"); // nanoseconds: beyond 2^53, exactly
      await seen.when((u, all) => all.filter((x) => x.type === "changed").length >= 50);
      assert.ok(client.stats.compressedMessages > 0, "compressed messages were decoded");
      assert.equal(client._dictionaryCache.size, 1, "the offered dictionary was fetched and checked");
      const changed = seen.updates.find((u) => u.type === "changed");
      assert.ok(changed.changes[0].fields.length > 0);
      assert.equal(subscription.rows("quotes")[changed.changes[0].key], changed.changes[0].row);
      assert.ok(!seen.updates.some((u) => u.type === "lost"));
    } finally {
      client.close();
    }
  });

  test("compressed and uncompressed clients hold the same table at the same offset", async () => {
    const states = [new Map(), new Map()];
    const clients = await Promise.all([connect(server.url), connect(server.url, { compression: false })]);
    try {
      assert.deepEqual(
        clients.map((c) => c.subprotocol),
        [SUBPROTOCOL_ZSTD, SUBPROTOCOL],
      );
      const done = clients.map(async (client, i) => {
        const seen = recorder();
        await client.subscribe("quotes", (update, subscription) => {
          if (update.type !== "lost") states[i].set(update.offset, rowsJSON(subscription.rows("quotes")));
          seen.onUpdate(update);
        });
        await seen.when((_, all) => all.length >= 300);
      });
      await Promise.all(done);
      const common = [...states[0].keys()].filter((offset) => states[1].has(offset));
      assert.ok(common.length > 100, `${common.length} offsets in common`);
      for (const offset of common) assert.equal(states[0].get(offset), states[1].get(offset), `offset ${offset}`);
    } finally {
      for (const client of clients) client.close();
    }
  });
});

describe("reconnection", () => {
  let server;
  let port;
  before(async () => {
    port = await freePort();
    server = await startServer("--client-publish", "chat.*", "--port", String(port));
  });
  after(async () => server.stop());

  const fast = { initialDelay: 20, maxDelay: 200 };

  test("a dropped connection reconnects and resumes: nothing lost, nothing twice", async () => {
    const statuses = [];
    const client = await connect(server.url, { reconnect: fast, onStatus: (s) => statuses.push(s.type) });
    const publisher = await connect(server.url);
    try {
      const seen = recorder();
      await client.subscribe("chat.resume", seen.onUpdate);
      for (let i = 1; i <= 3; i++) await publisher.publish("chat.resume", { i });
      await seen.when((u) => u.offset === 3);
      client._conn.ws.close(3000, "dropped by the test"); // as a network failure would
      for (let i = 4; i <= 8; i++) await publisher.publish("chat.resume", { i });
      await seen.when((u) => u.offset === 8);
      assert.deepEqual(
        seen.updates.map((u) => [u.type, u.offset, u.payload.i]),
        [1, 2, 3, 4, 5, 6, 7, 8].map((i) => ["message", i, i]),
      );
      assert.equal(client.stats.reconnects, 1);
      assert.deepEqual(statuses, ["connected", "disconnected", "connected"]);
    } finally {
      client.close();
      publisher.close();
    }
  });

  test("a pattern's topics are resynchronised after a reconnection", async () => {
    const client = await connect(server.url, { reconnect: fast });
    const publisher = await connect(server.url);
    try {
      const seen = recorder();
      await client.subscribe("chat.*", seen.onUpdate);
      await publisher.publish("chat.pattern", { i: 1 });
      await seen.when((u) => u.topic === "chat.pattern" && u.offset === 1);
      client._conn.ws.close(3000, "dropped by the test");
      for (let i = 2; i <= 4; i++) await publisher.publish("chat.pattern", { i });
      await seen.when((u) => u.topic === "chat.pattern" && u.offset === 4);
      const mine = seen.updates.filter((u) => u.topic === "chat.pattern");
      assert.deepEqual(
        mine.map((u) => [u.type, u.offset]),
        [1, 2, 3, 4].map((i) => ["message", i]),
      );
    } finally {
      client.close();
      publisher.close();
    }
  });

  test("a server killed and started again: the client comes back and says what it lost", async () => {
    const client = await connect(server.url, { reconnect: fast });
    try {
      const seen = recorder();
      await client.subscribe("chat.restart", seen.onUpdate);
      const publisher = await connect(server.url, { reconnect: false });
      await publisher.publish("chat.restart", { i: 1 });
      await seen.when((u) => u.type === "message");
      await server.kill();
      server = await startServer("--client-publish", "chat.*", "--port", String(port));
      const lost = await seen.when((u) => u.type === "lost");
      assert.equal(lost.reason, "not recovered"); // a new server: a new epoch, no history
      const again = await connect(server.url);
      await again.publish("chat.restart", { i: 2 });
      const next = await seen.when((u) => u.type === "message" && u.payload.i === 2);
      assert.equal(next.offset, 1); // the new epoch's offsets
      assert.equal(client.stats.reconnects >= 1, true);
      again.close();
    } finally {
      client.close();
    }
  });

  test("giving up: maxAttempts failed attempts reject connect", async () => {
    const closed = await freePort();
    await assert.rejects(
      connect(`ws://127.0.0.1:${closed}/`, { reconnect: { ...fast, maxAttempts: 2 } }),
      (error) => error.name === "ConnectionClosed",
    );
  });
});
