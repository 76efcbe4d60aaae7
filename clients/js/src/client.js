// tickwire's client for JavaScript, over the platform's WebSocket (browsers, Node 22+, or
// Node 20 with --experimental-websocket): tickwire/2 (docs/PROTOCOL.md), compressed with
// zstd and the server's dictionaries when it can, stream and table topics, reconnection
// with backoff and resume, losses reported, publishing with acknowledgement.

import { sha256 } from "@noble/hashes/sha2.js";

import { KIND, ProtocolError, decodeBody, encodeMessage, openEnvelope } from "./codec.js";
import { Schema, TableView } from "./table.js";
import { loadDecoder } from "./zstd.js";

export const SUBPROTOCOL = "tickwire.v2";
export const SUBPROTOCOL_ZSTD = "tickwire.v2+zstd";

const NOT_RECOVERED = 2;
const RECOVERED = 1;
const NO_RETRY_CLOSES = new Set([4001, 4003, 4004]); // §6: reconnecting the same way cannot help
const MAX_CACHED_DICTIONARIES = 16;

/** A request the server refused: `code` is its ERROR code (400, 403, 404, 409, 503...). */
export class RequestError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = "RequestError";
    this.code = code;
  }
}

/** The connection closed: `code` and `reason` are the WebSocket close's. */
export class ConnectionClosed extends Error {
  constructor(code, reason) {
    super(`connection closed (${code}${reason ? `: ${reason}` : ""})`);
    this.name = "ConnectionClosed";
    this.code = code;
    this.reason = reason;
  }
}

/**
 * Connect to a tickwire server; resolves with the Client once the first HELLO has arrived.
 * Attempts that fail are retried with backoff unless `reconnect` is false; it rejects when
 * the client gives up (`maxAttempts`) or a close says retrying cannot help (4001, 4003, 4004).
 * @param {string} url ws:// or wss://
 */
export function connect(url, options = {}) {
  const client = new Client(url, options);
  return client._first.then(() => client);
}

function sameBytes(a, b) {
  if (!(a instanceof Uint8Array) || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function equal(a, b) {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (a instanceof Uint8Array) return sameBytes(a, b);
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  return ka.every((k) => equal(a[k], b[k]));
}

/** A topic as one subscription follows it, across connections. */
class TopicState {
  constructor(name) {
    this.name = name;
    this.epoch = 0; // 0: never subscribed yet
    this.offset = 0;
    this.table = null; // a TableView for a table topic
    this.resyncing = false; // hold its messages until the RESYNC is answered
    this.held = [];
    this.resetReason = "subscribed"; // what the next snapshot tells the application
  }
}

export class Client {
  constructor(url, options = {}) {
    this.url = url;
    this._Socket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this._Socket !== "function") {
      throw new TypeError("no WebSocket here: pass options.WebSocket (Node 20: --experimental-websocket)");
    }
    this._token = options.token ?? null;
    this.reconnect =
      options.reconnect === false
        ? null
        : { initialDelay: 250, maxDelay: 30_000, multiplier: 2, maxAttempts: null, ...options.reconnect };
    this._onStatus = options.onStatus ?? (() => {});
    this._random = options.random ?? Math.random;
    this._decoder =
      options.compression === false
        ? Promise.resolve(null)
        : loadDecoder(options.zstdWasm).catch((error) => {
            // A page whose CSP forbids WebAssembly ('wasm-unsafe-eval') still works, uncompressed.
            this._onStatus({ type: "compression unavailable", error });
            return null;
          });
    this._nextId = 1;
    this._subscriptions = new Map(); // pattern -> Subscription
    this._publishes = new Map(); // request id -> {resolve, reject, message, key}
    this._dictionaryCache = new Map(); // sha256 hex -> bytes, across connections
    this._conn = null;
    this._failures = 0;
    this._timer = null;
    this.hello = null;
    this.subprotocol = null;
    this.closed = null; // set once the client has ended for good
    this.stats = {
      connected: false,
      connects: 0,
      reconnects: 0,
      messages: 0, // WebSocket messages received
      wireBytes: 0, // their bytes, as received
      bodyBytes: 0, // their bodies' bytes, decompressed
      compressedMessages: 0,
      updates: 0, // stream messages and table row changes delivered
      gaps: 0, // losses reported (Lost updates)
      clockOffsetMs: 0, // server clock - this clock, from HELLO (includes the one-way delay)
    };
    this._first = new Promise((resolve, reject) => {
      this._resolveFirst = resolve;
      this._rejectFirst = reject;
    });
    this._first.catch(() => {});
    this._open();
  }

  /**
   * Subscribe to a topic name or a pattern (`*` for one segment). `onUpdate` gets each
   * update:
   * - `{type: "message", topic, offset, payload}`: a stream topic's message, in offset order;
   * - `{type: "reset", topic, offset, rows, reason}`: a table topic's rows were replaced by a
   *   snapshot (on subscribing, after continuity was lost, or a keyframe that differed);
   * - `{type: "changed", topic, offset, changes}`: rows of a table topic changed, each
   *   `{key, row, fields}` (`row` null when deleted; `fields`: the names that changed);
   * - `{type: "lost", topic, first, last, reason}`: offsets that will not be delivered.
   * - `{type: "ended", code, text}`: the server ended the subscription (403: no longer allowed).
   * `onUpdate` gets the Subscription as its second argument (the first updates can come
   * before the returned promise resolves).
   * Resolves once the subscription is live (its ACK); it lasts across reconnections.
   * @returns {Promise<Subscription>}
   */
  subscribe(pattern, onUpdate, { resume = null, options = {} } = {}) {
    if (this.closed) return Promise.reject(this.closed);
    if (this._subscriptions.has(pattern)) {
      return Promise.reject(new RequestError(409, `already subscribed to ${JSON.stringify(pattern)}`));
    }
    const subscription = new Subscription(this, pattern, onUpdate, options);
    if (resume && !pattern.includes("*")) {
      const state = new TopicState(pattern);
      state.epoch = resume.epoch;
      state.offset = resume.offset;
      subscription.topics.set(pattern, state);
    }
    this._subscriptions.set(pattern, subscription);
    if (this._conn?.hello) this._sendSubscribe(this._conn, subscription);
    return subscription._ready;
  }

  /**
   * Publish `payload` to `topic`; resolves with {topicId, offset} once the server has it
   * (its ACK), rejects with RequestError on its ERROR. With `key`, a repeat is published
   * once (§4.10), and a publish the connection lost is sent again after reconnecting;
   * without one it is rejected with ConnectionClosed.
   */
  publish(topic, payload, { key = null } = {}) {
    if (this.closed) return Promise.reject(this.closed);
    const conn = this._conn?.hello ? this._conn : null;
    if (conn === null && key === null) return Promise.reject(new ConnectionClosed(1006, "not connected"));
    return new Promise((resolve, reject) => {
      const id = this._nextId++;
      this._publishes.set(id, { resolve, reject, topic, payload, key });
      if (conn) conn.send(KIND.PUBLISH, id, topic, payload, key);
    });
  }

  /** Close the connection (1000) and stop reconnecting. */
  close() {
    if (this.closed) return;
    this._end(new ConnectionClosed(1000, "closed by the client"));
  }

  // -- connections -------------------------------------------------------------------------

  async _open() {
    const zstd = await this._decoder;
    if (this.closed) return;
    const protocols = zstd ? [SUBPROTOCOL_ZSTD, SUBPROTOCOL] : [SUBPROTOCOL];
    if (this._token) protocols.push(`tickwire.auth.${this._token}`);
    let ws;
    try {
      ws = new this._Socket(this.url, protocols);
    } catch (error) {
      return this._end(error); // a malformed URL: retrying cannot help
    }
    ws.binaryType = "arraybuffer";
    const conn = new Connection(this, ws, zstd);
    this._conn = conn;
    ws.addEventListener("message", (event) => conn.receive(event.data));
    ws.addEventListener("close", (event) => this._lost(conn, event.code, event.reason));
    ws.addEventListener("error", () => {
      // Browsers follow an error with a close event that says why. Node 20's WebSocket
      // (undici) fires no close for a connection that was never opened, and stays
      // CONNECTING: that attempt is over here.
      if (ws.readyState === 0) this._lost(conn, 1006, "the connection could not be opened");
    });
    ws.addEventListener("open", () => {
      if (!protocols.includes(ws.protocol) || ws.protocol.startsWith("tickwire.auth.")) {
        conn.fail(1002, `the server chose ${JSON.stringify(ws.protocol)}`);
      } else {
        conn.zstd = zstd !== null && ws.protocol === SUBPROTOCOL_ZSTD;
      }
    });
  }

  _connected(conn) {
    this.hello = conn.hello;
    this.subprotocol = conn.ws.protocol;
    this._failures = 0;
    this.stats.connected = true;
    if (this.stats.connects++ > 0) this.stats.reconnects++;
    this.stats.clockOffsetMs = conn.hello.serverTimeNs / 1e6 - Date.now();
    for (const subscription of this._subscriptions.values()) this._sendSubscribe(conn, subscription);
    for (const [id, p] of this._publishes) conn.send(KIND.PUBLISH, id, p.topic, p.payload, p.key);
    this._onStatus({ type: "connected", subprotocol: this.subprotocol, reconnects: this.stats.reconnects });
    this._resolveFirst();
  }

  _sendSubscribe(conn, subscription) {
    const id = this._nextId++;
    conn.byRequest.set(id, subscription);
    let resume = null;
    const named = !subscription.pattern.includes("*");
    const state = named ? subscription.topics.get(subscription.pattern) : undefined;
    if (state && state.epoch !== 0 && (state.table === null || state.table.synced)) {
      resume = [state.epoch, state.offset];
    }
    conn.send(KIND.SUBSCRIBE, id, subscription.pattern, resume, subscription.options);
  }

  _lost(conn, code, reason) {
    if (conn !== this._conn) return;
    this._conn = null;
    this.stats.connected = false;
    const error = new ConnectionClosed(conn.failure?.code ?? code, conn.failure?.reason ?? reason);
    for (const [id, p] of this._publishes) {
      if (p.key === null) {
        this._publishes.delete(id);
        p.reject(error);
      }
    }
    for (const subscription of this._subscriptions.values()) {
      for (const state of subscription.topics.values()) {
        state.resyncing = false;
        state.held = [];
      }
    }
    if (this.closed) return;
    const policy = this.reconnect;
    this._failures++;
    const giveUp =
      policy === null ||
      NO_RETRY_CLOSES.has(code) ||
      (policy.maxAttempts !== null && this._failures > policy.maxAttempts);
    if (giveUp) return this._end(error);
    const bound = Math.min(policy.maxDelay, policy.initialDelay * policy.multiplier ** Math.min(this._failures - 1, 64));
    const delay = this._random() * bound; // full jitter
    this._onStatus({ type: "disconnected", code: error.code, reason: error.reason, retryInMs: delay });
    this._timer = setTimeout(() => {
      this._timer = null;
      this._open();
    }, delay);
  }

  _end(error) {
    if (this.closed) return;
    this.closed = error;
    this.stats.connected = false;
    if (this._timer !== null) clearTimeout(this._timer);
    const conn = this._conn;
    this._conn = null;
    if (conn) conn.ws.close(1000);
    this._rejectFirst(error);
    for (const p of this._publishes.values()) p.reject(error);
    this._publishes.clear();
    for (const subscription of this._subscriptions.values()) subscription._settle(error);
    this._onStatus({ type: "closed", code: error.code, reason: error.reason });
  }

  // -- what a connection received ----------------------------------------------------------

  _deliver(subscription, update) {
    if (update.type === "lost") this.stats.gaps++;
    else if (update.type === "message") this.stats.updates++;
    else if (update.type === "changed") this.stats.updates += update.changes.length;
    subscription._onUpdate(update, subscription);
  }

  _lose(subscription, state, epoch, offset, reason) {
    const same = state.epoch === epoch;
    this._deliver(subscription, {
      type: "lost",
      topic: state.name,
      first: same ? state.offset + 1 : null,
      last: same ? offset : null,
      reason,
    });
  }
}

/** One WebSocket connection of a Client: its HELLO, dictionaries, topic ids and requests. */
class Connection {
  constructor(client, ws, decoder) {
    this.client = client;
    this.ws = ws;
    this.decoder = decoder;
    this.zstd = false;
    this.hello = null;
    this.limit = 0;
    this.offer = new Map(); // dict id -> sha256 bytes
    this.loaded = new Map(); // dict id -> sha256 hex of what the decoder holds for it
    this.requested = new Set(); // dict ids asked for with DICT_REQUEST
    this.held = null; // messages held (in order) until a dictionary arrives
    this.byRequest = new Map(); // a SUBSCRIBE's request id -> its Subscription
    this.resyncs = new Map(); // a RESYNC's request id -> [subscription, state]
    this.routes = new Map(); // topic id -> [[subscription, state], ...]
    this.failure = null;
  }

  send(kind, ...positions) {
    if (this.ws.readyState === 1) this.ws.send(encodeMessage(kind, ...positions));
  }

  fail(code, reason) {
    // The WebSocket API lets a page close only with 1000 or 3000-4999: the protocol's
    // code (1002, 1003, 1007) goes in the reason, and to the application as is.
    if (this.failure) return;
    this.failure = { code, reason };
    this.ws.close(code === 1000 || code >= 3000 ? code : 1000, `${code}: ${reason}`.slice(0, 120));
  }

  receive(data) {
    if (this.failure || this.client._conn !== this) return;
    if (!(data instanceof ArrayBuffer)) return this.fail(1003, "a text message on a binary variant");
    const bytes = new Uint8Array(data);
    this.client.stats.messages++;
    this.client.stats.wireBytes += bytes.length;
    try {
      if (this.held !== null && !(bytes[0] === 0 && bytes[1] === 0x93 && bytes[2] === KIND.DICT_DATA)) {
        this.held.push(bytes); // after a message waiting for its dictionary, in order
        return;
      }
      this.process(bytes);
    } catch (error) {
      if (error instanceof ProtocolError) return this.fail(error.code, error.message);
      throw error;
    }
  }

  process(bytes) {
    const { compressed, dictionary, body } = openEnvelope(bytes, this.zstd);
    let plain = body;
    if (compressed) {
      if (dictionary !== 0 && !this.offer.has(dictionary)) {
        throw new ProtocolError(4002, `dictionary ${dictionary} is not on offer`);
      }
      if (dictionary !== 0 && this.loaded.get(dictionary) !== hex(this.offer.get(dictionary))) {
        if (!this.requested.has(dictionary)) {
          this.requested.add(dictionary);
          this.send(KIND.DICT_REQUEST, dictionary);
        }
        (this.held ??= []).push(bytes);
        return false;
      }
      plain = this.decoder.decompress(body, dictionary, this.limit);
      this.client.stats.compressedMessages++;
    }
    this.client.stats.bodyBytes += plain.length;
    this.dispatch(decodeBody(plain));
    return true;
  }

  dispatch([kind, ...p]) {
    if (this.hello === null && kind !== KIND.HELLO) throw new ProtocolError(1002, "no HELLO first");
    switch (kind) {
      case KIND.HELLO:
        return this.helloed(p);
      case KIND.ERROR:
        return this.error(p[0], p[1], p[2]);
      case KIND.ACK:
        return this.ack(p[0], p[1], p[2]);
      case KIND.SUBSCRIBED:
        return this.subscribed(p);
      case KIND.UNSUBSCRIBED:
        return this.unsubscribed(p);
      case KIND.DATA:
        return this.data(p[0], p[1], [p[2]]);
      case KIND.BATCH:
        return this.data(p[0], p[1], p[2]);
      case KIND.SNAPSHOT:
        return this.snapshot(p[0], p[1], p[2], p[3] === true);
      case KIND.GAP:
        return this.gap(p[0], p[1], p[2]);
      case KIND.DICT_OFFER:
        return this.offered(p[0]);
      case KIND.DICT_DATA:
        return this.dictionary(p[0], p[1]);
      default:
        if (kind >= 64 && kind <= 127) return; // extension kinds: ignored (§4.1)
        throw new ProtocolError(1002, `kind ${kind} may not be sent by a server`);
    }
  }

  helloed([sessionId, serverTimeNs, heartbeatIntervalMs, limits, compression, dictionaries]) {
    if (this.hello !== null) throw new ProtocolError(1002, "a second HELLO");
    if (!Array.isArray(limits) || !Number.isInteger(limits[1])) throw new ProtocolError(1007, "HELLO without limits");
    this.hello = { sessionId, serverTimeNs: Number(serverTimeNs), heartbeatIntervalMs, limits, compression };
    this.limit = limits[1];
    this.offered(dictionaries ?? []);
    this.client._connected(this);
  }

  offered(dictionaries) {
    if (!Array.isArray(dictionaries)) throw new ProtocolError(1007, "a malformed dictionary offer");
    this.offer = new Map();
    for (const entry of dictionaries) {
      const [id, digest] = Array.isArray(entry) ? entry : [];
      if (!Number.isInteger(id) || id < 1 || id > 15 || !(digest instanceof Uint8Array) || digest.length !== 32) {
        throw new ProtocolError(1007, "a malformed dictionary offer");
      }
      this.offer.set(id, digest);
      const cached = this.client._dictionaryCache.get(hex(digest));
      if (cached && this.decoder && this.loaded.get(id) !== hex(digest)) this.load(id, digest, cached);
    }
  }

  dictionary(id, data) {
    const digest = this.offer.get(id);
    if (digest === undefined || !this.requested.has(id)) throw new ProtocolError(1007, `dictionary ${id} was not asked for`);
    if (!(data instanceof Uint8Array) || !sameBytes(sha256(data), digest)) {
      throw new ProtocolError(1007, `dictionary ${id} does not match its SHA-256`);
    }
    this.requested.delete(id);
    this.load(id, digest, data);
    const cache = this.client._dictionaryCache;
    cache.set(hex(digest), data);
    if (cache.size > MAX_CACHED_DICTIONARIES) cache.delete(cache.keys().next().value);
    const held = this.held ?? [];
    this.held = null;
    for (let i = 0; i < held.length; i++) {
      if (this.held !== null) {
        this.held.push(...held.slice(i)); // waiting for another dictionary again
        return;
      }
      this.process(held[i]);
    }
  }

  load(id, digest, data) {
    this.decoder.addDictionary(id, data, hex(digest));
    this.loaded.set(id, hex(digest));
  }

  error(requestId, code, text) {
    const client = this.client;
    const subscription = this.byRequest.get(requestId);
    if (subscription) {
      this.byRequest.delete(requestId);
      client._subscriptions.delete(subscription.pattern);
      // Refused again after a reconnection (a permission gone): the subscription ends.
      if (subscription._settled) return client._deliver(subscription, { type: "ended", code, text });
      return subscription._settle(new RequestError(code, text));
    }
    const publish = client._publishes.get(requestId);
    if (publish) {
      client._publishes.delete(requestId);
      return publish.reject(new RequestError(code, text));
    }
    if (this.resyncs.delete(requestId)) return this.fail(1002, `RESYNC refused: ${code} ${text}`);
  }

  ack(requestId, topicId, offset) {
    const subscription = this.byRequest.get(requestId);
    if (subscription) return subscription._settle(null);
    const publish = this.client._publishes.get(requestId);
    if (publish) {
      this.client._publishes.delete(requestId);
      publish.resolve({ topicId, offset });
    }
  }

  subscribed([requestId, topicId, name, epoch, offset, outcome, info, note]) {
    const client = this.client;
    const resync = this.resyncs.get(requestId);
    if (resync) {
      this.resyncs.delete(requestId);
      return this.resynced(resync[0], resync[1], epoch, offset, outcome);
    }
    const subscription = this.byRequest.get(requestId);
    if (subscription === undefined) return;
    let state = subscription.topics.get(name);
    const known = state !== undefined && state.epoch !== 0;
    if (state === undefined) subscription.topics.set(name, (state = new TopicState(name)));
    if (note) subscription.notes.set(name, note);
    else subscription.notes.delete(name);
    for (const [id, routes] of this.routes) {
      if (id !== topicId) this.routes.set(id, routes.filter(([, s]) => s !== state)); // a new id (§4.4)
    }
    const routes = this.routes.get(topicId) ?? [];
    if (!routes.some(([, s]) => s === state)) routes.push([subscription, state]);
    this.routes.set(topicId, routes);
    if (info === null || info === undefined) {
      state.table = null;
    } else {
      const schema = new Schema(info);
      if (state.table === null || !state.table.schema.sameAs(schema)) state.table = new TableView(schema);
    }
    const table = state.table !== null;
    let reason = known ? "reconnected" : "subscribed";
    if (known && outcome === NOT_RECOVERED) {
      client._lose(subscription, state, epoch, offset, "not recovered");
      reason = "not recovered";
    } else if (known && outcome !== RECOVERED) {
      // A pattern's topic after a reconnection: no resume position could be sent with it.
      const same = epoch === state.epoch;
      if (same && offset > state.offset && !table) {
        state.resyncing = true; // hold its messages until the replay is decided
        const id = client._nextId++;
        this.resyncs.set(id, [subscription, state]);
        return this.send(KIND.RESYNC, id, topicId, state.offset);
      }
      if (!same || offset !== state.offset) {
        client._lose(subscription, state, epoch, offset, "not recovered");
        reason = "not recovered";
      }
    }
    state.epoch = epoch;
    if (outcome !== RECOVERED) {
      state.offset = offset;
      if (table) {
        state.table.synced = false; // a SNAPSHOT follows
        state.resetReason = reason;
      }
    }
  }

  resynced(subscription, state, epoch, offset, outcome) {
    if (outcome === NOT_RECOVERED) {
      this.client._lose(subscription, state, epoch, offset, "not recovered");
      state.offset = offset;
      if (state.table) {
        state.table.synced = false;
        state.resetReason = "not recovered";
      }
    }
    state.epoch = epoch;
    state.resyncing = false;
    const held = state.held;
    state.held = [];
    for (const [first, payloads] of held) this.apply(subscription, state, first, payloads);
  }

  unsubscribed([requestId, pattern, code, text]) {
    const client = this.client;
    const subscription = client._subscriptions.get(pattern);
    if (subscription === undefined) return;
    if (requestId === null || requestId === undefined) {
      client._subscriptions.delete(pattern);
      client._deliver(subscription, { type: "ended", code, text });
    }
  }

  data(topicId, first, payloads) {
    if (!Array.isArray(payloads)) throw new ProtocolError(1007, "a BATCH without an array");
    for (const [subscription, state] of this.routes.get(topicId) ?? []) {
      if (state.resyncing) state.held.push([first, payloads]);
      else this.apply(subscription, state, first, payloads);
    }
  }

  apply(subscription, state, first, payloads) {
    const client = this.client;
    if (state.table) {
      if (!state.table.synced) return; // the SNAPSHOT that follows holds these
      for (let i = 0; i < payloads.length; i++) {
        const changes = state.table.applyDelta(first + i, payloads[i]);
        state.offset = state.table.offset;
        if (changes.length) client._deliver(subscription, { type: "changed", topic: state.name, offset: state.offset, changes });
      }
      return;
    }
    for (let i = 0; i < payloads.length; i++) {
      const offset = first + i;
      if (offset <= state.offset) continue; // had it already (a replay overlapping what came live)
      if (state.offset && offset > state.offset + 1) {
        client._deliver(subscription, { type: "lost", topic: state.name, first: state.offset + 1, last: offset - 1, reason: "skipped" });
      }
      state.offset = offset;
      subscription.positions.set(state.name, { epoch: state.epoch, offset });
      client._deliver(subscription, { type: "message", topic: state.name, offset, payload: payloads[i] });
    }
  }

  snapshot(topicId, offset, payload, more) {
    for (const [subscription, state] of this.routes.get(topicId) ?? []) {
      const table = state.table;
      if (table === null) throw new ProtocolError(1007, "a SNAPSHOT of a stream topic");
      const before = table.synced ? table.rows : null;
      if (table.synced && offset < table.offset) continue; // older than what it holds
      if (!table.applySnapshot(offset, payload, more)) continue;
      state.offset = offset;
      subscription.positions.set(state.name, { epoch: state.epoch, offset });
      if (before !== null && equal(before, table.rows)) continue; // a keyframe that agrees
      const reason = before !== null ? "keyframe differed" : state.resetReason;
      this.client._deliver(subscription, { type: "reset", topic: state.name, offset, rows: table.rows, reason });
    }
  }

  gap(topicId, first, last) {
    for (const [subscription, state] of this.routes.get(topicId) ?? []) {
      this.client._deliver(subscription, { type: "lost", topic: state.name, first, last, reason: "dropped by the server" });
      if (state.table) {
        // The table is stale: ask for its state again (§9.4).
        const id = this.client._nextId++;
        this.resyncs.set(id, [subscription, state]);
        state.table.synced = false;
        state.resetReason = "resynchronised";
        this.send(KIND.RESYNC, id, topicId, null);
      } else {
        state.offset = Math.max(state.offset, last);
      }
    }
  }
}

export class Subscription {
  constructor(client, pattern, onUpdate, options) {
    this.client = client;
    this.pattern = pattern;
    this.options = options;
    this.topics = new Map(); // topic name -> its state
    this.positions = new Map(); // topic name -> {epoch, offset}: resume from here
    this.notes = new Map(); // topic name -> the server's note (a topic that does not exist)
    this._onUpdate = onUpdate;
    this._settled = false;
    this._ready = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    this._ready.catch(() => {});
  }

  _settle(error) {
    if (this._settled) return;
    this._settled = true;
    if (error) this._reject(error);
    else this._resolve(this);
  }

  /** The position to resume `topic` from ({epoch, offset}), or null. */
  position(topic = this.pattern) {
    const state = this.topics.get(topic);
    return state && state.epoch !== 0 ? { epoch: state.epoch, offset: state.offset } : null;
  }

  /** A table topic's schema ({key, names}: the key field and the others), or null. */
  schema(topic = this.pattern) {
    return this.topics.get(topic)?.table?.schema ?? null;
  }

  /** A table topic's rows (a plain object, key -> row), or null for a stream topic. */
  rows(topic = this.pattern) {
    return this.topics.get(topic)?.table?.rows ?? null;
  }
}
