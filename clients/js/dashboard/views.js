// The dashboard's views of a topic: a table with its changed cells marked (and, for quotes,
// a live chart of one symbol), the game world on a canvas, and a stream's latest messages.
// Each view takes the client's updates as they come and draws at most once a frame.

import uPlot from "uplot";

const h = (tag, attributes = {}, ...children) => {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  element.append(...children);
  return element;
};

/** A cell's text: a `ts` field in nanoseconds as a time of day (UTC, to the microsecond). */
const cellText = (field, value) => {
  if (field === "ts" && (typeof value === "bigint" || (typeof value === "number" && value > 1e15))) {
    const ns = BigInt(value);
    const time = new Date(Number(ns / 1_000_000n)).toISOString().slice(11, 23);
    return `${time}${String((ns / 1000n) % 1000n).padStart(3, "0")}`;
  }
  return text(value);
};
const text = (value) => (value === null || value === undefined ? "" : typeof value === "object" ? JSON.stringify(value, plain) : String(value));
const plain = (_, value) => (typeof value === "bigint" ? value.toString() : value instanceof Uint8Array ? `<${value.length} bytes>` : value);
const MARK_MS = 800;
const compare = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

/** Calls `draw` once in the next animation frame, however often it is asked. */
function painter(draw) {
  let asked = false;
  return () => {
    if (asked) return;
    asked = true;
    requestAnimationFrame(() => {
      asked = false;
      draw();
    });
  };
}

/**
 * A table topic as an HTML table, one row per key in key order; each changed cell is
 * marked for a moment (green up, red down, blue otherwise). `onSelect(key)` on a click.
 */
export class TableView {
  constructor(container, { topic, columns = null, onSelect = null, maxRows = 2000 }) {
    this.topic = topic;
    this.only = columns; // the fields shown after the key, in this order (null: all)
    this.maxRows = maxRows;
    this.element = h("table", { class: "rows", "data-topic": topic });
    this.head = h("thead");
    this.body = h("tbody");
    this.element.append(this.head, this.body);
    container.append(h("section", { class: "table" }, h("h2", {}, topic), this.element));
    this.columns = null;
    this.rows = new Map(); // key (as a property name) -> {tr, cells: Map(field -> td)}
    this.dirty = new Map(); // key -> Set of fields, or null: the whole row
    this.source = null; // the rows object of the client's table
    this.marked = new Map(); // a changed cell -> until when it stays marked
    this.unmark = null; // the timer that clears marks when nothing else draws
    this.paint = painter(() => this.draw());
    if (onSelect) {
      this.body.addEventListener("click", (event) => {
        const tr = event.target.closest("tr");
        if (tr) onSelect(tr.dataset.key);
      });
    }
  }

  update(update, subscription) {
    if (update.type === "reset") {
      const schema = subscription.schema(this.topic);
      const names = this.only ? this.only.filter((name) => schema.names.includes(name)) : schema.names;
      this.columns = [schema.key, ...names];
      this.head.replaceChildren(h("tr", {}, ...this.columns.map((c) => h("th", {}, c))));
      this.body.replaceChildren();
      this.rows.clear();
      this.dirty.clear();
      this.source = update.rows;
      for (const key of Object.keys(update.rows)) this.dirty.set(key, null);
    } else if (update.type === "changed") {
      this.source = subscription.rows(this.topic);
      for (const { key, fields } of update.changes) {
        const name = String(key);
        const known = this.dirty.get(name);
        if (known === null || !this.rows.has(name)) this.dirty.set(name, null);
        else this.dirty.set(name, new Set([...(known ?? []), ...fields]));
      }
    } else return;
    this.paint();
  }

  draw() {
    if (this.columns === null || this.source === null) return;
    const now = performance.now();
    let inserted = false;
    for (const [key, fields] of this.dirty) {
      const row = this.source[key];
      const known = this.rows.get(key);
      if (row === undefined) {
        known?.tr.remove();
        this.rows.delete(key);
        continue;
      }
      if (known === undefined) {
        if (this.rows.size >= this.maxRows) continue;
        const cells = new Map(this.columns.map((c) => [c, h("td", { "data-field": c }, cellText(c, row[c]))]));
        const tr = h("tr", { "data-key": key }, ...cells.values());
        this.rows.set(key, { tr, cells });
        inserted = true;
        continue;
      }
      for (const field of fields ?? this.columns) {
        const cell = known.cells.get(field);
        if (cell === undefined) continue;
        const before = cell.textContent;
        const after = cellText(field, row[field]);
        if (before === after) continue;
        cell.textContent = after;
        const direction = Number(after) > Number(before) ? "up" : Number(after) < Number(before) ? "down" : "changed";
        // Marked for MARK_MS: a class, cleared by a later frame. (An animation per cell
        // made Chromium repaint the whole table every frame: 0.5 frames a second.)
        cell.dataset.changed = direction;
        cell.className = `mark-${direction}`;
        this.marked.set(cell, now + MARK_MS);
      }
    }
    for (const [cell, until] of this.marked) {
      if (until > now) continue;
      cell.className = "";
      this.marked.delete(cell);
    }
    if (this.marked.size && this.unmark === null) {
      this.unmark = setTimeout(() => {
        this.unmark = null;
        this.paint();
      }, MARK_MS / 4);
    }
    this.dirty.clear();
    if (inserted) {
      const keys = [...this.rows.keys()].sort((a, b) => compare(isNaN(a) ? a : Number(a), isNaN(b) ? b : Number(b)));
      this.body.replaceChildren(...keys.map((k) => this.rows.get(k).tr));
    }
  }
}

/** A live chart of one row's numeric fields over the last `seconds`, with uPlot. */
export class ChartView {
  constructor(container, { fields, seconds = 60, maxPoints = 3000 }) {
    this.fields = fields;
    this.seconds = seconds;
    this.maxPoints = maxPoints;
    this.key = null;
    this.chosen = false; // by someone (a click, the list), not by the chart itself
    this.counts = new Map(); // key -> changes, until the busiest is known
    this.seen = 0;
    this.busiestAfter = 500;
    this.select = h("select", { id: "symbol", "aria-label": "symbol" });
    this.select.addEventListener("change", () => this.choose(this.select.value));
    this.box = h("div", { class: "chart" });
    container.append(h("section", { class: "chart-section" }, h("h2", {}, "chart of ", this.select), this.box));
    this.data = [[], ...fields.map(() => [])];
    this.plot = new uPlot(
      {
        width: 640,
        height: 260,
        scales: { x: { time: true } },
        series: [{}, ...fields.map((f, i) => ({ label: f, stroke: ["#2b8a3e", "#c92a2a", "#1864ab"][i % 3], width: 1.5 }))],
        axes: [{}, { size: 70 }],
      },
      this.data,
      this.box,
    );
    this.points = 0; // points drawn so far (tests watch it move)
    this.paint = painter(() => this.draw());
  }

  /** Offer `keys` in the choice (the first becomes the chosen one if none is yet). */
  offer(keys) {
    const sorted = [...keys].sort();
    this.select.replaceChildren(...sorted.map((k) => h("option", { value: k }, k)));
    if (this.key !== null && sorted.includes(this.key)) {
      this.select.value = this.key;
    } else if (sorted.length) {
      // The first offer, or a table that no longer has the key (a new server's): start
      // again from the first key, and follow the busiest once it is known.
      this.chosen = false;
      this.counts = new Map();
      this.seen = 0;
      this.choose(sorted[0], { chosen: false });
    }
  }

  /**
   * Until someone chooses, the chart follows the key that changed most in its first
   * `busiestAfter` changes (the first key in order may hardly move).
   */
  changed(key) {
    if (this.chosen || this.counts === null) return;
    this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
    if (++this.seen < this.busiestAfter) return;
    const [busiest] = [...this.counts].reduce((a, b) => (b[1] > a[1] ? b : a));
    this.counts = null;
    if (busiest !== this.key) this.choose(busiest, { chosen: false });
  }

  choose(key, { chosen = true } = {}) {
    this.chosen ||= chosen;
    this.key = key;
    this.select.value = key;
    this.data = [[], ...this.fields.map(() => [])];
    this.plot.setData(this.data);
  }

  /** A row of the chosen key changed at `timeMs` (the row's own time, or now). */
  point(key, row, timeMs) {
    this.changed(key);
    if (key !== this.key) return;
    const values = this.fields.map((f) => (row[f] === null || row[f] === undefined ? null : Number(row[f])));
    const [xs, ...ys] = this.data;
    xs.push(timeMs / 1000);
    values.forEach((v, i) => ys[i].push(v));
    const cutoff = timeMs / 1000 - this.seconds;
    let drop = 0;
    while (drop < xs.length && (xs[drop] < cutoff || xs.length - drop > this.maxPoints)) drop++;
    if (drop) for (const series of this.data) series.splice(0, drop);
    this.paint();
  }

  draw() {
    this.plot.setData(this.data);
    this.points++;
  }
}

const KIND_COLOURS = { player: "#1c7ed6", npc: "#f08c00", projectile: "#e03131" };
const WORLD = 1000; // metres along each side (tickwire.sim.game.WORLD)

/** The game world's entities on a canvas: one dot each, coloured by kind, with a heading. */
export class WorldView {
  constructor(container, { topic }) {
    this.topic = topic;
    this.canvas = h("canvas", { width: "640", height: "640", id: "world", "data-topic": topic });
    this.counts = h("p", { class: "counts" });
    container.append(h("section", { class: "world" }, h("h2", {}, topic), this.canvas, this.counts));
    this.rows = null;
    this.frames = 0; // frames drawn so far (tests watch it move)
    this.paint = painter(() => this.draw());
  }

  update(update, subscription) {
    if (update.type === "reset" || update.type === "changed") {
      this.rows = subscription.rows(this.topic);
      this.paint();
    }
  }

  draw() {
    const context = this.canvas.getContext("2d");
    const scale = this.canvas.width / WORLD;
    context.fillStyle = "#0b1016";
    context.fillRect(0, 0, this.canvas.width, this.canvas.height);
    const kinds = {};
    for (const entity of Object.values(this.rows ?? {})) {
      const kind = entity.kind ?? "?";
      kinds[kind] = (kinds[kind] ?? 0) + 1;
      const x = entity.x * scale;
      const y = this.canvas.height - entity.y * scale;
      const radius = kind === "projectile" ? 1.5 : kind === "player" ? 4 : 3;
      context.fillStyle = KIND_COLOURS[kind] ?? "#adb5bd";
      context.beginPath();
      context.arc(x, y, radius, 0, 2 * Math.PI);
      context.fill();
      if (kind !== "projectile" && Number.isFinite(entity.heading)) {
        const angle = (entity.heading * Math.PI) / 180;
        context.strokeStyle = context.fillStyle;
        context.beginPath();
        context.moveTo(x, y);
        context.lineTo(x + Math.cos(angle) * 8, y - Math.sin(angle) * 8);
        context.stroke();
      }
    }
    this.counts.textContent = Object.entries(kinds)
      .sort()
      .map(([kind, n]) => `${n} ${kind}`)
      .join(", ");
    this.frames++;
  }
}

/** A stream topic (or pattern): its latest messages, newest first. */
export class StreamView {
  constructor(container, { pattern, keep = 200 }) {
    this.keep = keep;
    this.list = h("ol", { class: "stream", reversed: "" });
    container.append(h("section", {}, h("h2", {}, pattern), this.list));
    this.pending = [];
    this.paint = painter(() => this.draw());
  }

  update(update) {
    if (update.type === "message") this.pending.push(`${update.topic} #${update.offset} ${text(update.payload)}`);
    else if (update.type === "lost") this.pending.push(`${update.topic}: lost ${update.first ?? "?"}..${update.last ?? "?"} (${update.reason})`);
    else return;
    if (this.pending.length > this.keep) this.pending.splice(0, this.pending.length - this.keep);
    this.paint();
  }

  draw() {
    const items = this.pending.map((line) => h("li", {}, line)).reverse();
    this.pending = [];
    this.list.prepend(...items);
    while (this.list.children.length > this.keep) this.list.lastElementChild.remove();
  }
}
