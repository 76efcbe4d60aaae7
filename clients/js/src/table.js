// Table topics (docs/PROTOCOL.md §9): the schema SUBSCRIBED carries, SNAPSHOT and delta
// payloads applied to plain objects. Pure, no I/O.

import { ProtocolError } from "./codec.js";

export const FIELD = Object.freeze({ ANY: 0, INT: 1, FLOAT: 2, FIXED: 3, STR: 4, BOOL: 5, ENUM: 6, QUANTIZED: 7 });

const MIN_WIRE = -(2n ** 63n);
const MAX_WIRE = 2n ** 64n - 1n;
const bad = (message) => new ProtocolError(1007, message);
const isInteger = (wire) => Number.isInteger(wire) || typeof wire === "bigint";

/**
 * The exact decimal n × 10^-decimals as a string ("189.1200" for 1891200 with 4
 * decimals): a FIXED field's value, which a float could not hold exactly (§9.1).
 */
export function decimalString(n, decimals) {
  const negative = n < 0; // n: a safe integer or a BigInt
  const digits = (negative ? -n : n).toString().padStart(decimals + 1, "0");
  const cut = digits.length - decimals;
  return `${negative ? "-" : ""}${digits.slice(0, cut)}.${digits.slice(cut)}`;
}

function integerOf(big) {
  return big >= -9007199254740991n && big <= 9007199254740991n ? Number(big) : big;
}

function decoderOf(name, type, parameters) {
  const wrong = (what) => bad(`table field ${JSON.stringify(name)}: expected ${what}`);
  switch (type) {
    case FIELD.ANY:
      return (wire) => wire;
    case FIELD.INT:
      return (wire) => {
        if (wire === null || isInteger(wire)) return wire;
        throw wrong("an integer");
      };
    case FIELD.FLOAT:
      return (wire) => {
        if (wire === null || typeof wire === "number") return wire; // msgpack: 5.0 may be sent as a float
        throw wrong("a float");
      };
    case FIELD.STR:
      return (wire) => {
        if (wire === null || typeof wire === "string") return wire;
        throw wrong("a string");
      };
    case FIELD.BOOL:
      return (wire) => {
        if (wire === null || typeof wire === "boolean") return wire;
        throw wrong("a boolean");
      };
    case FIELD.ENUM: {
      const [choices] = parameters;
      if (!Array.isArray(choices) || !choices.every((c) => typeof c === "string")) throw bad("an ENUM's choices");
      return (wire) => {
        if (Number.isInteger(wire) && wire >= 0 && wire < choices.length) return choices[wire];
        if (wire === null || typeof wire === "string") return wire;
        throw bad(`table field ${JSON.stringify(name)}: not a choice index`);
      };
    }
    case FIELD.FIXED:
    case FIELD.QUANTIZED: {
      const [decimals, step = 1] = parameters;
      if (!Number.isInteger(decimals) || decimals < -18 || decimals > 18) throw bad("a field's decimals");
      if (!Number.isInteger(step) || step < 1 || step > 1e9 || (type === FIELD.QUANTIZED && step !== 1)) {
        throw bad("a field's step");
      }
      const scale = 10n ** BigInt(Math.abs(decimals));
      const quantized = type === FIELD.QUANTIZED;
      const divisor = 10 ** Math.max(decimals, 0);
      return (wire) => {
        if (wire === null) return null;
        let units;
        if (Number.isSafeInteger(wire) && Number.isSafeInteger(wire * step)) {
          if (quantized && decimals > 0) return wire / divisor; // correctly rounded, as Python's
          if (decimals > 0) return decimalString(wire * step, decimals);
          units = BigInt(wire * step);
        } else {
          if (!isInteger(wire) || BigInt(wire) < MIN_WIRE || BigInt(wire) > MAX_WIRE) throw wrong("an int64");
          units = BigInt(wire) * BigInt(step);
          if (decimals > 0) return quantized ? Number(decimalString(units, decimals)) : decimalString(units, decimals);
        }
        const whole = units * scale;
        return quantized ? Number(whole) : integerOf(whole);
      };
    }
    default:
      throw bad(`table field ${JSON.stringify(name)}: unknown type ${type}`);
  }
}

/** A table's schema (§9.1), read from SUBSCRIBED's `info`: throws ProtocolError 1007 if malformed. */
export class Schema {
  constructor(info) {
    if (!Array.isArray(info) || info.length < 3) throw bad("invalid table schema");
    const [key, keyType, fields] = info;
    if (typeof key !== "string" || (keyType !== FIELD.STR && keyType !== FIELD.INT) || !Array.isArray(fields)) {
      throw bad("invalid table schema");
    }
    if (fields.length > 63) throw bad("a table schema of more than 63 fields");
    this.key = key;
    this.keyType = keyType;
    this.fields = fields.map((entry) => {
      if (!Array.isArray(entry) || entry.length < 2 || typeof entry[0] !== "string") throw bad("invalid table field");
      const [name, type, ...parameters] = entry;
      if (name === key || name === "__proto__") throw bad(`a table field named ${JSON.stringify(name)}`);
      return { name, type, parameters, decode: decoderOf(name, type, parameters) };
    });
    this.names = this.fields.map((f) => f.name);
  }

  /** Whether `other` is the same schema (a re-SUBSCRIBED topic keeps its rows when it is). */
  sameAs(other) {
    return JSON.stringify([this.key, this.keyType, this.fields.map((f) => [f.name, f.type, f.parameters])]) ===
      JSON.stringify([other.key, other.keyType, other.fields.map((f) => [f.name, f.type, f.parameters])]);
  }

  checkKey(key) {
    const ok = this.keyType === FIELD.STR ? typeof key === "string" : isInteger(key);
    if (!ok) throw bad("table row key of the wrong type");
    return key;
  }
}

/**
 * A subscriber's copy of one table (§9.4): `rows` is a plain object (no prototype), key ->
 * row, each row a plain object of its fields with the key among them. Integer keys are
 * property names, as JavaScript makes them ("7"); each row's key field keeps the integer.
 */
export class TableView {
  constructor(schema) {
    this.schema = schema;
    this.rows = Object.create(null);
    this.offset = 0;
    this.synced = false;
    this._staged = null; // [offset, rows] of a snapshot in parts
    this._limit = 2 ** schema.fields.length; // masks are below it (exact as a float)
  }

  /** Apply a SNAPSHOT (part); returns true once the snapshot is whole and applied. */
  applySnapshot(offset, payload, more) {
    const { schema } = this;
    const width = schema.fields.length + 1;
    if (!Array.isArray(payload) || payload.length % width) throw bad(`a snapshot holds rows of ${width} values`);
    if (this._staged && this._staged[0] !== offset) throw bad("a snapshot part of another offset before the last part");
    const rows = this._staged ? this._staged[1] : Object.create(null);
    for (let start = 0; start < payload.length; start += width) {
      const key = schema.checkKey(payload[start]);
      const row = { [schema.key]: key };
      for (let i = 0; i < schema.fields.length; i++) {
        const field = schema.fields[i];
        row[field.name] = field.decode(payload[start + 1 + i]);
      }
      rows[key] = row;
    }
    if (more) {
      this._staged = [offset, rows];
      return false;
    }
    this._staged = null;
    this.rows = rows;
    this.offset = offset;
    this.synced = true;
    return true;
  }

  /**
   * Apply a delta at `offset` (§9.2): returns its changes, [{key, row, fields}] (`row` null
   * when deleted, `fields` the names that changed), empty when the state already had it.
   * A malformed delta throws ProtocolError 1007 and changes nothing.
   */
  applyDelta(offset, payload) {
    if (offset <= this.offset) return [];
    const entries = this.decodeDelta(payload);
    const { rows, schema } = this;
    const changes = [];
    for (const [key, values] of entries) {
      if (values === null) {
        delete rows[key];
        changes.push({ key, row: null, fields: [] });
        continue;
      }
      let row = rows[key];
      if (row === undefined) {
        row = rows[key] = { [schema.key]: key };
        for (const name of schema.names) row[name] = null;
      }
      Object.assign(row, values);
      changes.push({ key, row, fields: Object.keys(values) });
    }
    this.offset = offset;
    return changes;
  }

  /** The entries of a delta: [key, {name: value} | null], all decoded before any is applied. */
  decodeDelta(payload) {
    if (!Array.isArray(payload)) throw bad("a table delta is an array");
    const { schema } = this;
    const out = [];
    let i = 0;
    while (i < payload.length) {
      if (i + 1 >= payload.length) throw bad("a table delta entry needs a key and a mask");
      const key = schema.checkKey(payload[i]);
      const mask = payload[i + 1];
      if (!isInteger(mask) || mask < 0 || mask >= this._limit) throw bad("invalid table delta entry");
      i += 2;
      if (mask == 0) {
        out.push([key, null]);
        continue;
      }
      const values = {};
      if (typeof mask === "number" && mask <= 0x7fffffff) {
        for (let bit = 0, m = mask; m; bit++, m >>>= 1) {
          if (!(m & 1)) continue;
          if (i >= payload.length) throw bad("a table delta entry is missing values");
          const field = schema.fields[bit];
          values[field.name] = field.decode(payload[i++]);
        }
      } else {
        for (let bit = 0, m = BigInt(mask); m; bit++, m >>= 1n) {
          if (!(m & 1n)) continue;
          if (i >= payload.length) throw bad("a table delta entry is missing values");
          const field = schema.fields[bit];
          values[field.name] = field.decode(payload[i++]);
        }
      }
      out.push([key, values]);
    }
    return out;
  }
}
