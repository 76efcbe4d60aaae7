// The dashboard's figures (dashboard/figures.js): rates over the time between readings,
// the compression ratio of what arrived meanwhile, the median latency.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Figures, median, short } from "../dashboard/figures.js";

test("median", () => {
  assert.equal(median([]), null);
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
});

test("rates are over the time since the last reading; latencies are forgotten once read", () => {
  const figures = new Figures();
  const stats = { updates: 0, wireBytes: 0, bodyBytes: 0, gaps: 0, reconnects: 0 };
  const first = figures.read(stats, 1000);
  assert.equal(first.updatesPerSecond, null); // nothing to compare with yet
  Object.assign(stats, { updates: 500, wireBytes: 2000, bodyBytes: 5000, gaps: 1, reconnects: 1 });
  for (const ms of [5, 1, 9]) figures.latency(ms);
  figures.latency(Number.NaN); // a row without a time: not a latency
  const second = figures.read(stats, 1500);
  assert.deepEqual(second, {
    updatesPerSecond: 1000,
    bytesPerSecond: 4000,
    ratio: 2.5,
    latencyMs: 5,
    gaps: 1,
    reconnects: 1,
  });
  assert.equal(figures.read(stats, 2500).latencyMs, null);
  assert.equal(figures.read(stats, 3500).ratio, null); // nothing arrived
});

test("short numbers", () => {
  assert.equal(short(null), "–");
  assert.equal(short(950), "950");
  assert.equal(short(2490, "B/s"), "2.49 kB/s");
  assert.equal(short(44_900, "B/s"), "44.9 kB/s");
  assert.equal(short(1_234_567), "1.23 M");
});
