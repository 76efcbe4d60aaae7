// Types of tickwire's JavaScript client (src/client.js, src/codec.js).

export declare const SUBPROTOCOL: "tickwire.v2";

export interface Hello {
  sessionId: string;
  serverTimeNs: number;
  heartbeatIntervalMs: number;
  limits: number[];
}

export interface Position {
  epoch: number;
  offset: number;
}

export interface MessageUpdate {
  type: "message";
  topic: string;
  offset: number;
  payload: unknown;
}

export interface LostUpdate {
  type: "lost";
  topic: string;
  first: number;
  last: number | null;
  reason: "dropped by the server" | "missed" | "not recovered";
}

export type Update = MessageUpdate | LostUpdate;

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
  position(topic?: string): Position | null;
}

export declare class Client {
  readonly hello: Hello | null;
  readonly closed: ConnectionClosed | null;
  subscribe(
    pattern: string,
    onUpdate: (update: Update) => void,
    options?: { resume?: Position | null },
  ): Promise<Subscription>;
  publish(topic: string, payload: unknown, options?: { key?: string | null }): Promise<{ topicId: number; offset: number }>;
  close(): void;
}

export declare function connect(
  url: string,
  options?: { WebSocket?: typeof WebSocket; token?: string },
): Promise<Client>;

export declare const KIND: Readonly<Record<string, number>>;
export declare function decodeMessage(bytes: Uint8Array): unknown[];
export declare function encodeMessage(kind: number, ...positions: unknown[]): Uint8Array;

export declare class ZstdDecoder {
  addDictionary(id: number, bytes: Uint8Array): void;
  decompress(body: Uint8Array, id: number, limit: number): Uint8Array;
}
export declare function loadDecoder(bytes?: Uint8Array): Promise<ZstdDecoder>;
