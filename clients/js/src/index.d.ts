// Types of tickwire's JavaScript client (src/client.js, src/table.js, src/codec.js, src/zstd.js).

export declare const SUBPROTOCOL: "tickwire.v2";
export declare const SUBPROTOCOL_ZSTD: "tickwire.v2+zstd";

export interface Hello {
  sessionId: string;
  serverTimeNs: number;
  heartbeatIntervalMs: number;
  limits: number[];
  compression: unknown;
}

export interface Position {
  epoch: number;
  offset: number;
}

/** A table row: its fields by name, the key among them; FIXED fields are exact decimal strings. */
export type Row = Record<string, unknown>;
/** A table's rows by key (a plain object without a prototype). */
export type Rows = Record<string, Row>;

export interface MessageUpdate {
  type: "message";
  topic: string;
  offset: number;
  payload: unknown;
}

export interface ResetUpdate {
  type: "reset";
  topic: string;
  offset: number;
  rows: Rows;
  reason: "subscribed" | "reconnected" | "not recovered" | "resynchronised" | "keyframe differed";
}

export interface RowChange {
  key: string | number | bigint;
  /** The row after the change, or null when it was deleted. */
  row: Row | null;
  /** The names of the fields that changed. */
  fields: string[];
}

export interface ChangedUpdate {
  type: "changed";
  topic: string;
  offset: number;
  changes: RowChange[];
}

export interface LostUpdate {
  type: "lost";
  topic: string;
  /** null when the epoch changed: the offsets before and after cannot be compared. */
  first: number | null;
  last: number | null;
  reason: "dropped by the server" | "skipped" | "not recovered";
}

export interface EndedUpdate {
  type: "ended";
  code: number;
  text: string;
}

export type Update = MessageUpdate | ResetUpdate | ChangedUpdate | LostUpdate | EndedUpdate;

export type Status =
  | { type: "connected"; subprotocol: string; reconnects: number }
  | { type: "disconnected"; code: number; reason: string; retryInMs: number }
  | { type: "closed"; code: number; reason: string }
  | { type: "compression unavailable"; error: unknown };

export interface Stats {
  connected: boolean;
  connects: number;
  reconnects: number;
  /** WebSocket messages received, and their bytes as received. */
  messages: number;
  wireBytes: number;
  /** The same bodies' bytes after decompression. */
  bodyBytes: number;
  compressedMessages: number;
  /** Stream messages and table row changes delivered. */
  updates: number;
  /** Losses reported (LostUpdate). */
  gaps: number;
  /** The server's clock minus this one, from HELLO (includes the one-way delay). */
  clockOffsetMs: number;
}

export interface ReconnectPolicy {
  initialDelay?: number;
  maxDelay?: number;
  multiplier?: number;
  /** null: never give up. */
  maxAttempts?: number | null;
}

export interface ConnectOptions {
  WebSocket?: typeof WebSocket;
  token?: string;
  /** false: offer only tickwire.v2 (uncompressed). */
  compression?: boolean;
  /** The decoder's wasm bytes, where it cannot be fetched beside src/zstd.js. */
  zstdWasm?: Uint8Array;
  /** false: one connection, no reconnection. */
  reconnect?: ReconnectPolicy | false;
  onStatus?: (status: Status) => void;
  random?: () => number;
}

export declare class RequestError extends Error {
  readonly code: number;
}

export declare class ConnectionClosed extends Error {
  readonly code: number;
  readonly reason: string;
}

export declare class ProtocolError extends Error {
  readonly code: number;
}

export declare class Subscription {
  readonly client: Client;
  readonly pattern: string;
  readonly positions: Map<string, Position>;
  /** The server's note on a topic that may deliver nothing yet (one that does not exist). */
  readonly notes: Map<string, string>;
  position(topic?: string): Position | null;
  /** A table topic's schema (its key field and the others), or null for a stream topic. */
  schema(topic?: string): Schema | null;
  /** A table topic's rows, or null for a stream topic. */
  rows(topic?: string): Rows | null;
}

export declare class Client {
  readonly url: string;
  readonly hello: Hello | null;
  readonly subprotocol: string | null;
  readonly closed: ConnectionClosed | Error | null;
  readonly stats: Stats;
  subscribe(
    pattern: string,
    onUpdate: (update: Update, subscription: Subscription) => void,
    options?: { resume?: Position | null; options?: Record<string, unknown> },
  ): Promise<Subscription>;
  publish(topic: string, payload: unknown, options?: { key?: string | null }): Promise<{ topicId: number; offset: number }>;
  close(): void;
}

export declare function connect(url: string, options?: ConnectOptions): Promise<Client>;

export declare const KIND: Readonly<Record<string, number>>;
export declare function openEnvelope(
  bytes: Uint8Array,
  zstd: boolean,
): { compressed: boolean; dictionary: number; body: Uint8Array };
export declare function decodeBody(body: Uint8Array): unknown[];
export declare function decodeMessage(bytes: Uint8Array): unknown[];
export declare function encodeMessage(kind: number, ...positions: unknown[]): Uint8Array;

export declare const FIELD: Readonly<Record<string, number>>;
export declare function decimalString(n: number | bigint, decimals: number): string;
export declare class Schema {
  constructor(info: unknown);
  readonly key: string;
  readonly names: string[];
}
export declare class TableView {
  constructor(schema: Schema);
  readonly schema: Schema;
  readonly rows: Rows;
  readonly offset: number;
  readonly synced: boolean;
}

export declare class ZstdDecoder {
  addDictionary(id: number, bytes: Uint8Array, digest?: string | null): void;
  decompress(body: Uint8Array, id: number, limit: number): Uint8Array;
}
export declare function loadDecoder(bytes?: Uint8Array): Promise<ZstdDecoder>;
