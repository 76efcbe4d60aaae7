// tickwire's client for JavaScript, over the platform's WebSocket (browsers, Node 22+, or
// Node 20 with --experimental-websocket). This first part speaks the uncompressed binary
// variant, tickwire.v2 (docs/PROTOCOL.md): stream topics with offsets, losses reported,
// publishing with acknowledgement. Compression, tables and reconnection come next
// (docs/javascript.md).

import { KIND, ProtocolError, decodeMessage, encodeMessage } from "./codec.js";

export const SUBPROTOCOL = "tickwire.v2";

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
 * Connect to a tickwire server; resolves once its HELLO has arrived.
 * @param {string} url ws:// or wss://
 * @param {{WebSocket?: typeof WebSocket, token?: string}} [options]
 */
export function connect(url, options = {}) {
  const Socket = options.WebSocket ?? globalThis.WebSocket;
  if (typeof Socket !== "function") {
    throw new TypeError("no WebSocket here: pass options.WebSocket (Node 20: --experimental-websocket)");
  }
  const protocols = [SUBPROTOCOL];
  if (options.token) protocols.push(`tickwire.auth.${options.token}`);
  const ws = new Socket(url, protocols);
  ws.binaryType = "arraybuffer";
  const client = new Client(ws);
  return client._opened;
}

export class Client {
  constructor(ws) {
    this._ws = ws;
    this._nextId = 1;
    this._requests = new Map(); // request id -> {resolve, reject, subscription?}
    this._topics = new Map(); // topic id -> {name, epoch, offset, subscription}
    this._subscriptions = new Map(); // pattern -> Subscription
    this._byRequest = new Map(); // a SUBSCRIBE's request id -> its Subscription, while it lasts
    this.hello = null;
    this.closed = null;
    this._opened = new Promise((resolve, reject) => {
      this._resolveOpen = resolve;
      this._rejectOpen = reject;
    });
    ws.addEventListener("message", (event) => this._receive(event.data));
    ws.addEventListener("close", (event) => this._ended(new ConnectionClosed(event.code, event.reason)));
    ws.addEventListener("error", () => {}); // the close event that follows says why
    ws.addEventListener("open", () => {
      if (ws.protocol !== SUBPROTOCOL) this._fail(1002, `the server chose ${JSON.stringify(ws.protocol)}`);
    });
  }

  /**
   * Subscribe to a topic name or a pattern (`*` for one segment). `onUpdate` gets each
   * update: {type: "message", topic, offset, payload} or {type: "lost", topic, first, last,
   * reason}. Resolves once the subscription is live (its ACK).
   * @returns {Promise<Subscription>}
   */
  subscribe(pattern, onUpdate, { resume = null } = {}) {
    if (this._subscriptions.has(pattern)) {
      return Promise.reject(new RequestError(409, `already subscribed to ${JSON.stringify(pattern)}`));
    }
    const subscription = new Subscription(this, pattern, onUpdate);
    this._subscriptions.set(pattern, subscription);
    const position = resume ? [resume.epoch, resume.offset] : null;
    const id = this._nextId; // the request's: later SUBSCRIBEDs of the pattern carry it
    this._byRequest.set(id, subscription);
    return this._request(KIND.SUBSCRIBE, [pattern, position, {}]).then(
      () => subscription,
      (error) => {
        this._subscriptions.delete(pattern);
        this._byRequest.delete(id);
        throw error;
      },
    );
  }

  /**
   * Publish `payload` to `topic`; resolves with {topicId, offset} once the server has it
   * (its ACK), rejects with RequestError on its ERROR. With `key`, a repeat is published
   * once (§4.10).
   */
  publish(topic, payload, { key = null } = {}) {
    return this._request(KIND.PUBLISH, [topic, payload, key]).then(([topicId, offset]) => ({ topicId, offset }));
  }

  /** Close the connection (1000). */
  close() {
    this._ws.close(1000);
  }

  _request(kind, positions, extra = {}) {
    if (this.closed) return Promise.reject(this.closed);
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      this._requests.set(id, { resolve, reject, ...extra });
      this._ws.send(encodeMessage(kind, id, ...positions));
    });
  }

  _receive(data) {
    if (!(data instanceof ArrayBuffer)) return this._fail(1003, "a text message on a binary variant");
    let message;
    try {
      message = decodeMessage(new Uint8Array(data));
    } catch (error) {
      if (error instanceof ProtocolError) return this._fail(error.code, error.message);
      throw error;
    }
    const [kind, ...p] = message;
    if (this.hello === null && kind !== KIND.HELLO) return this._fail(1002, "no HELLO first");
    switch (kind) {
      case KIND.HELLO:
        this.hello = { sessionId: p[0], serverTimeNs: p[1], heartbeatIntervalMs: p[2], limits: p[3] };
        this._resolveOpen(this);
        return;
      case KIND.ERROR:
        return this._answer(p[0], null, new RequestError(p[1], p[2]));
      case KIND.ACK:
        return this._answer(p[0], [p[1], p[2]], null);
      case KIND.SUBSCRIBED:
        return this._subscribed(p);
      case KIND.DATA:
        return this._data(p[0], p[1], [p[2]]);
      case KIND.BATCH:
        return this._data(p[0], p[1], p[2]);
      case KIND.GAP:
        return this._lost(this._topics.get(p[0]), p[1], p[2], "dropped by the server");
      case KIND.UNSUBSCRIBED:
      case KIND.DICT_OFFER:
      case KIND.SNAPSHOT:
        return; // tables and dictionaries: not in this part yet
      default:
        if (kind >= 64 && kind <= 127) return; // extension kinds: ignored (§4.1)
        return this._fail(1002, `kind ${kind} may not be sent by a server`);
    }
  }

  _answer(id, value, error) {
    const request = id === null || id === undefined ? undefined : this._requests.get(id);
    if (request === undefined) return;
    this._requests.delete(id);
    if (error) request.reject(error);
    else request.resolve(value);
  }

  _subscribed([requestId, topicId, name, epoch, offset, outcome]) {
    const subscription = this._byRequest.get(requestId);
    if (subscription === undefined) return;
    for (const [id, topic] of this._topics) {
      if (topic.name === name && id !== topicId) this._topics.delete(id); // a new id (§4.4)
    }
    const before = subscription.positions.get(name);
    if (before && outcome === 2) this._lost({ name, subscription }, before.offset + 1, null, "not recovered");
    this._topics.set(topicId, { name, epoch, offset, subscription });
    subscription.positions.set(name, { epoch, offset });
  }

  _data(topicId, first, payloads) {
    const topic = this._topics.get(topicId);
    if (topic === undefined) return; // a topic id this client no longer follows
    if (topic.offset && first > topic.offset + 1) {
      this._lost(topic, topic.offset + 1, first - 1, "missed");
    }
    for (let i = 0; i < payloads.length; i++) {
      const offset = first + i;
      if (offset <= topic.offset) continue; // had it already
      topic.offset = offset;
      topic.subscription.positions.set(topic.name, { epoch: topic.epoch, offset });
      topic.subscription._deliver({ type: "message", topic: topic.name, offset, payload: payloads[i] });
    }
  }

  _lost(topic, first, last, reason) {
    if (topic === undefined) return;
    topic.subscription._deliver({ type: "lost", topic: topic.name, first, last, reason });
  }

  _fail(code, reason) {
    // The WebSocket API lets a page close only with 1000 or 3000-4999: the protocol's
    // code (1002, 1003, 1007) goes in the reason, and to the application as is.
    const said = `${code}: ${reason}`.slice(0, 120);
    this._ws.close(code === 1000 || code >= 3000 ? code : 1000, said);
    this._ended(new ConnectionClosed(code, reason));
  }

  _ended(error) {
    if (this.closed) return;
    this.closed = error;
    this._rejectOpen(error);
    for (const request of this._requests.values()) request.reject(error);
    this._requests.clear();
  }
}

export class Subscription {
  constructor(client, pattern, onUpdate) {
    this.client = client;
    this.pattern = pattern;
    this.positions = new Map(); // topic name -> {epoch, offset}: resume from here
    this._onUpdate = onUpdate;
  }

  _deliver(update) {
    this._onUpdate(update);
  }

  /** The position to resume `topic` from after a reconnection ({epoch, offset}). */
  position(topic = this.pattern) {
    return this.positions.get(topic) ?? null;
  }
}
