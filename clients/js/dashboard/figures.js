// The connection's own figures for the dashboard: rates over the last second from the
// client's counters, the compression ratio, and latency from the rows' timestamps. Pure:
// the caller gives the clock.

/** The median of `values` (null when empty). */
export function median(values) {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/**
 * Rates from a client's cumulative `stats` (src/client.js), one reading at a time:
 * `read(stats, nowMs)` returns {updatesPerSecond, bytesPerSecond, ratio, latencyMs, gaps,
 * reconnects} over the time since the previous reading. Latencies are given with
 * `latency(ms)` as updates arrive; the reading takes their median and forgets them.
 */
export class Figures {
  constructor() {
    this._last = null;
    this._latencies = [];
  }

  latency(ms) {
    if (Number.isFinite(ms) && this._latencies.length < 10_000) this._latencies.push(ms);
  }

  read(stats, nowMs) {
    const last = this._last;
    this._last = { at: nowMs, updates: stats.updates, wireBytes: stats.wireBytes, bodyBytes: stats.bodyBytes };
    const seconds = last === null ? 0 : (nowMs - last.at) / 1000;
    const rate = (key) => (seconds > 0 ? (this._last[key] - last[key]) / seconds : null);
    const wire = last === null ? stats.wireBytes : stats.wireBytes - last.wireBytes;
    const body = last === null ? stats.bodyBytes : stats.bodyBytes - last.bodyBytes;
    const latencyMs = median(this._latencies);
    this._latencies = [];
    return {
      updatesPerSecond: rate("updates"),
      bytesPerSecond: rate("wireBytes"),
      // What the bodies would weigh uncompressed, over what crossed the wire.
      ratio: wire > 0 ? body / wire : null,
      latencyMs,
      gaps: stats.gaps,
      reconnects: stats.reconnects,
    };
  }
}

/** A number as the figures show it: 1234567 -> "1.23 M". */
export function short(n, unit = "") {
  if (n === null || n === undefined || !Number.isFinite(n)) return "–";
  const abs = Math.abs(n);
  const [scaled, prefix] = abs >= 1e9 ? [n / 1e9, "G"] : abs >= 1e6 ? [n / 1e6, "M"] : abs >= 1e3 ? [n / 1e3, "k"] : [n, ""];
  const digits = Math.abs(scaled) >= 100 ? 0 : Math.abs(scaled) >= 10 ? 1 : 2;
  return `${scaled.toFixed(digits)} ${prefix}${unit}`.trim();
}
