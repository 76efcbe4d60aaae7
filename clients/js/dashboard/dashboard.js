// tickwire's live dashboard: the page that `tickwire serve` serves on its metrics port
// (docs/javascript.md). It reads /dashboard.json for what to show and where the WebSocket
// server is, connects with tickwire's JavaScript client (zstd with the server's
// dictionaries when the page may run WebAssembly), and shows the topic with the
// connection's own figures. `?url=ws://...&topic=NAME` override the server's choices.

import "uplot/dist/uPlot.min.css";
import "./dashboard.css";

import { connect } from "../src/index.js";
import { Figures, short } from "./figures.js";
import { ChartView, StreamView, TableView, WorldView } from "./views.js";

const $ = (selector) => document.querySelector(selector);

function say(message, state = null) {
  const p = $("#message") ?? $("#view").appendChild(document.createElement("p"));
  p.id = "message";
  p.textContent = message;
  if (state) p.dataset.state = state;
}

function showStatus(status, url) {
  const element = $("#status");
  element.dataset.state = status.type;
  if (status.type === "connected") element.textContent = `connected (${status.subprotocol})`;
  else if (status.type === "disconnected") {
    element.textContent = `disconnected (${status.code}${status.reason ? `: ${status.reason}` : ""}), again in ${(status.retryInMs / 1000).toFixed(1)} s`;
  } else if (status.type === "closed") element.textContent = `closed (${status.code}: ${status.reason})`;
  else if (status.type === "compression unavailable") element.title = `uncompressed: ${status.error}`;
  if (status.type === "disconnected" && status.code === 1006) {
    say(
      `Cannot reach ${url}. Is the server running? If it checks Origin (allowed_origins), ` +
        `it must allow this page's: ${location.origin}.`,
      "error",
    );
  } else if (status.type === "connected") $("#message")?.remove();
}

async function settings() {
  const query = new URLSearchParams(location.search);
  let served = {};
  try {
    const response = await fetch("dashboard.json", { cache: "no-store" });
    if (response.ok) served = await response.json();
  } catch {
    // Served from elsewhere: the query must say where the server is.
  }
  const scheme = served.scheme ?? (location.protocol === "https:" ? "wss" : "ws");
  const host = location.hostname.includes(":") ? `[${location.hostname}]` : location.hostname;
  const url = query.get("url") ?? (served.port ? `${scheme}://${host}:${served.port}${served.path ?? "/"}` : null);
  const topic = query.get("topic");
  const view = topic ? { kind: "auto", topic } : (served.view ?? { kind: "auto", topic: null });
  return { url, view, token: query.get("token") ?? undefined };
}

async function main() {
  const { url, view, token } = await settings();
  if (url === null) return say("No server to show: open this page from tickwire serve, or add ?url=ws://host:port/.", "error");
  $("#endpoint").textContent = url;
  if (view.topic === null) {
    return say("Which topic? Add ?topic=NAME (a table topic, a stream topic or a pattern such as trades.*).", "error");
  }
  const container = $("#view");
  container.replaceChildren();
  const figures = new Figures();
  const dashboard = { view, url, client: null, table: null, chart: null, world: null, stream: null };
  window.tickwire = dashboard; // for the browser tests and the curious

  let client;
  try {
    client = await connect(url, { token, onStatus: (status) => showStatus(status, url) });
  } catch (error) {
    return say(`The server refused this page: ${error.message ?? error}`, "error");
  }
  dashboard.client = client;

  let handle = null;
  if (view.kind === "ticker") {
    dashboard.chart = new ChartView(container, { fields: view.chart ?? ["bid", "ask"] });
    dashboard.table = new TableView(container, { topic: view.topic, columns: view.columns ?? null, onSelect: (key) => dashboard.chart.choose(key) });
    handle = (update, subscription) => {
      dashboard.table.update(update, subscription);
      const now = Date.now();
      if (update.type === "reset") {
        dashboard.chart.offer(Object.keys(update.rows));
        const row = update.rows[dashboard.chart.key];
        if (row) dashboard.chart.point(dashboard.chart.key, row, timeOf(row) ?? now);
      } else if (update.type === "changed") {
        for (const { key, row } of update.changes) {
          if (row === null) continue;
          const at = timeOf(row);
          // The clocks of the server and this machine are taken to agree (the same host,
          // or NTP): HELLO's time is no better, as it includes its own delay.
          if (at !== null) figures.latency(now - at);
          dashboard.chart.point(String(key), row, at ?? now);
        }
      }
    };
  } else if (view.kind === "world") {
    dashboard.world = new WorldView(container, { topic: view.topic });
    handle = (update, subscription) => dashboard.world.update(update, subscription);
  }
  // Any other topic: a table shows as a table, a stream as its latest messages.
  let generic = null;
  const subscription = await client
    .subscribe(view.topic, (update, subscription) => {
      if (handle) return handle(update, subscription);
      generic ??= subscription.schema(update.topic ?? view.topic) ? new TableView(container, { topic: view.topic }) : new StreamView(container, { pattern: view.topic });
      if (generic instanceof TableView) dashboard.table = generic;
      else dashboard.stream = generic;
      generic.update(update, subscription);
    })
    .catch((error) => {
      say(`Cannot subscribe to ${view.topic}: ${error.message}`, "error");
      return null;
    });
  if (subscription === null) return;
  dashboard.subscription = subscription;
  const note = subscription.notes.get(view.topic);
  if (note) say(note);

  /** What the page holds of a table topic now: its offset and rows, BigInts as strings. */
  dashboard.state = (topic = view.topic) => ({
    offset: subscription.position(topic)?.offset ?? null,
    epoch: subscription.position(topic)?.epoch ?? null,
    rows: JSON.parse(JSON.stringify(subscription.rows(topic) ?? {}, (_, v) => (typeof v === "bigint" ? v.toString() : v))),
  });

  const shown = document.querySelectorAll("[data-figure]");
  setInterval(() => {
    const reading = figures.read(client.stats, performance.now());
    dashboard.figures = reading;
    for (const element of shown) {
      const value = reading[element.dataset.figure];
      element.textContent =
        element.dataset.figure === "bytesPerSecond"
          ? short(value, "B/s")
          : element.dataset.figure === "ratio"
            ? value === null ? "–" : `${value.toFixed(2)}×`
            : element.dataset.figure === "latencyMs"
              ? value === null ? "–" : `${value.toFixed(1)} ms`
              : Number.isInteger(value)
                ? String(value)
                : short(value);
    }
    const position = subscription.position(view.topic);
    $("#position").textContent = position ? `${view.topic}: epoch ${position.epoch}, offset ${position.offset}` : "";
  }, 1000);
}

/** A row's own time in milliseconds (a `ts` field in nanoseconds), or null. */
function timeOf(row) {
  const ts = row.ts;
  if (typeof ts === "bigint") return Number(ts) / 1e6;
  if (typeof ts === "number" && ts > 1e15) return ts / 1e6;
  return null;
}

main().catch((error) => say(`The dashboard failed: ${error.stack ?? error}`, "error"));
