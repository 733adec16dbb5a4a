// kronos-stream dashboard: a symbol picker, the server-rendered fan chart (refreshed on every new
// forecast of the symbol from /v1/stream), scores per model version, swaps and dead letters.
// No library: fetch() for the JSON and the SVG, and for the event stream too (EventSource cannot send
// the API key header). The key lives in this tab's sessionStorage only.
"use strict";

const KEY_STORE = "kronos-api-key";
const KEY_HEADER = document.querySelector('meta[name="kronos-key-header"]').content;
const BARS = 64;
const POLL_MS = 5000;
const SYMBOLS_EVERY = 6; // polls

const $ = (id) => document.getElementById(id);
let symbol = null;
let stream = null; // AbortController of the open stream
let lastEventId = null;
let chartQueued = false;
let polls = 0;

function setStatus(state, text) {
  const el = $("status");
  el.dataset.state = state;
  el.textContent = text;
}

function headers() {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { [KEY_HEADER]: key } : {};
}

async function call(path, accept = "application/json") {
  const response = await fetch(path, { headers: { Accept: accept, ...headers() }, cache: "no-store" });
  if (response.status === 401 || response.status === 403) {
    setStatus("unauthorized", "API key needed or refused: enter it above");
    throw new Error(`${path}: ${response.status}`);
  }
  if (!response.ok) {
    let detail = "";
    try { const body = await response.json(); detail = body.message ?? body.detail; } catch (e) { /* not JSON */ }
    throw new Error(`${path}: ${response.status} ${detail || ""}`);
  }
  return accept === "application/json" ? response.json() : response.text();
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
}

function fmt(x, pct) {
  if (x === null || x === undefined || Number.isNaN(x)) return "n/a";
  return pct ? `${(100 * x).toFixed(1)}%` : Number(x).toPrecision(5);
}

// -- symbols ------------------------------------------------------------------------------------

async function loadSymbols() {
  const { symbols } = await call("/v1/symbols");
  const select = $("symbol");
  const wanted = decodeURIComponent(location.hash.slice(1)) || symbol || symbols[0];
  const have = Array.from(select.options).map((o) => o.value).join("\n");
  if (have !== symbols.join("\n")) {
    select.replaceChildren(...symbols.map((s) => new Option(s, s)));
  }
  if (wanted && symbols.includes(wanted)) {
    select.value = wanted;
    if (wanted !== symbol) choose(wanted);
  }
  return symbols;
}

function choose(next) {
  symbol = next;
  history.replaceState(null, "", `#${encodeURIComponent(next)}`);
  $("chart-title").textContent = `Forecast: ${next}`;
  lastEventId = null;
  loadChart();
  openStream();
}

// -- the chart ----------------------------------------------------------------------------------

async function loadChart() {
  if (!symbol) return;
  const text = await call(`/ui/chart.svg?symbol=${encodeURIComponent(symbol)}&bars=${BARS}`, "image/svg+xml");
  const doc = new DOMParser().parseFromString(text, "image/svg+xml");
  const svg = document.importNode(doc.documentElement, true);
  if (svg.dataset.symbol !== symbol) return; // the picker moved on meanwhile
  $("chart").replaceChildren(svg);
  const info = svg.dataset.asOf
    ? `forecast at ${svg.dataset.asOf} by model ${svg.dataset.modelVersion} (${svg.dataset.bars} bars shown)`
    : "no forecast yet";
  $("forecast-info").textContent = info;
}

function queueChart() {
  // coalesce a burst of forecasts into one redraw
  if (chartQueued) return;
  chartQueued = true;
  setTimeout(() => { chartQueued = false; loadChart().catch(showError); }, 100);
}

// -- the live stream (server-sent events over fetch) ----------------------------------------------

function openStream() {
  if (stream) stream.abort();
  const controller = new AbortController();
  stream = controller;
  const run = async () => {
    let delay = 500;
    while (!controller.signal.aborted) {
      try {
        const h = { Accept: "text/event-stream", ...headers() };
        if (lastEventId) h["Last-Event-ID"] = lastEventId;
        const response = await fetch(`/v1/stream?symbols=${encodeURIComponent(symbol)}`,
          { headers: h, signal: controller.signal, cache: "no-store" });
        if (response.status === 401 || response.status === 403) {
          setStatus("unauthorized", "API key needed or refused: enter it above");
          return;
        }
        if (!response.ok) throw new Error(`/v1/stream: ${response.status}`);
        setStatus("live", `live: ${symbol}`);
        delay = 500;
        await readEvents(response.body, controller.signal);
      } catch (err) {
        if (controller.signal.aborted) return;
        setStatus("error", `stream interrupted (${err.message}); reconnecting`);
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10000);
    }
  };
  run();
}

async function readEvents(body, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { data: [] };
  while (!signal.aborted) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let nl;
    while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + (buffer.startsWith("\r\n", nl) ? 2 : 1));
      if (line === "") {
        if (event.data.length) dispatch(event);
        event = { data: [] };
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") event.data.push(val);
        else if (field === "id") event.id = val;
        else if (field === "event") event.type = val;
      }
    }
  }
}

function dispatch(event) {
  if (event.id) lastEventId = event.id;
  if (event.type === "gap") { queueChart(); return; } // missed forecasts: redraw from the latest
  let forecast;
  try { forecast = JSON.parse(event.data.join("\n")); } catch (e) { return; }
  if (forecast && forecast.symbol === symbol) queueChart();
}

// -- scores, swaps, dead letters ----------------------------------------------------------------

function scoreRows(body) {
  // /v1/scores: {"hours": 24, "versions": {version: report}}, by version name
  return Object.entries(body.versions).map(([version, report]) => ({ version, ...report }))
    .sort((a, b) => a.version.localeCompare(b.version));
}

function roleOf(version, models) {
  // "V@model": version V's scores with the model's own bands (under published calibrated ones)
  const [name, bands] = version.split("@");
  const row = (models.versions || []).find((v) => v.version === name);
  const role = [row && row.role, name === models.serving ? "serving" : ""].filter(Boolean).join(", ");
  return bands ? `${role || "-"} (model's own bands)` : role;
}

async function loadScores() {
  const [body, models] = await Promise.all([call("/v1/scores"), call("/v1/models").catch(() => ({}))]);
  const rows = scoreRows(body);
  const tbody = $("scores").tBodies[0];
  tbody.replaceChildren(...rows.map((r) => {
    const row = document.createElement("tr");
    row.dataset.version = r.version;
    const s = r;
    cell(row, r.version);
    cell(row, roleOf(r.version, models));
    cell(row, s.count ?? s.forecasts ?? "n/a");
    cell(row, fmt(s.mae));
    cell(row, fmt(s.skill_mae, true));
    cell(row, fmt(s.crps));
    const cov = document.createElement("td");
    cov.className = "coverage";
    cov.textContent = fmt(s.coverage, true);
    row.appendChild(cov);
    cell(row, fmt(s.nominal_coverage, true));
    return row;
  }));
}

async function loadEvents() {
  const body = await call("/v1/events");
  const swaps = body.swaps.recent.map((s) => {
    const li = document.createElement("li");
    li.textContent = `${s.at}: ${s.old_version} -> ${s.new_version}`;
    return li;
  });
  if (!swaps.length) {
    const li = document.createElement("li");
    li.textContent = "none since the daemon started";
    swaps.push(li);
  }
  $("swaps").replaceChildren(...swaps);
  const results = Object.entries(body.swaps.by_result).filter(([, n]) => n > 0);
  $("swap-results").textContent = results.length
    ? "tried: " + results.map(([k, n]) => `${k} ${n}`).join(", ") : "";
  const dl = body.dead_letters;
  // every kind with at least one, then the total (a quiet daemon shows only "total 0")
  const kinds = Object.entries(dl.by_kind).filter(([, n]) => n > 0);
  if (dl.truncated > 0) kinds.push(["(sent truncated)", dl.truncated]);
  if (dl.failed > 0) kinds.push(["(failed, only logged)", dl.failed]);
  kinds.push(["total", Object.values(dl.by_kind).reduce((a, b) => a + b, 0)]);
  $("dead-letters").tBodies[0].replaceChildren(...kinds.map(([kind, n]) => {
    const row = document.createElement("tr");
    row.dataset.kind = kind;
    cell(row, kind);
    cell(row, String(n));
    return row;
  }));
}

// -- start --------------------------------------------------------------------------------------

function showError(err) {
  if ($("status").dataset.state !== "unauthorized") setStatus("error", err.message);
}

async function refresh() {
  await Promise.all([loadSymbols(), loadScores(), loadEvents()].map((p) => p.catch(showError)));
}

function poll() {
  // scores and events every POLL_MS, the symbol list (a Redis SCAN) every SYMBOLS_EVERY polls
  polls += 1;
  const calls = [loadScores(), loadEvents()];
  if (polls % SYMBOLS_EVERY === 0) calls.push(loadSymbols());
  return Promise.all(calls.map((p) => p.catch(showError)));
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("api-key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORE, key); else sessionStorage.removeItem(KEY_STORE);
    $("api-key").value = "";
    setStatus("starting", "connecting");
    refresh();
    if (symbol) { loadChart().catch(showError); openStream(); }
  });
  $("forget-key").addEventListener("click", () => { sessionStorage.removeItem(KEY_STORE); location.reload(); });
  $("symbol").addEventListener("change", (e) => choose(e.target.value));
  refresh();
  setInterval(poll, POLL_MS);
});
