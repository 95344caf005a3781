// tidegate status page: fetches /api/status every 2 s and draws it. No libraries, no network
// beyond the gateway itself. Every figure is written into an element with a stable id, with the
// exact number in its data-value attribute (the text is formatted for people).
"use strict";

const REFRESH_MS = 2000;

function fmtInt(n) { return Math.round(n).toLocaleString("en-US"); }
function fmtNum(n, digits) { return Number(n).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 }); }
function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return i === 0 ? `${Math.round(n)} B` : `${n.toFixed(1)} ${units[i]}`;
}
function fmtAge(s) {
  s = Math.max(0, Math.floor(s));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  if (s < 172800) return `${Math.floor(s / 3600)}h${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d${String(Math.floor(s % 86400 / 3600)).padStart(2, "0")}h`;
}
function fmtTime(ms) { return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z"); }
function fmtClock(ms) { return new Date(ms).toISOString().slice(11, 19); }
function shorten(text, n) { return text.length > n ? text.slice(0, n - 1) + "…" : text; }

// Consecutive entries from the same place that start alike are shown once, with a count.
function collapse(entries, key) {
  const out = [];
  for (const e of entries) {
    const last = out[out.length - 1];
    if (last && key(last.entry) === key(e)) { last.count += 1; continue; }
    out.push({ entry: e, count: 1 });
  }
  return out;
}

function setFigure(id, value, text) {
  const el = document.getElementById(id);
  if (!el) return;
  el.dataset.value = String(value);
  el.textContent = text;
}
function setState(id, good, text, warn) {
  const el = document.getElementById(id);
  el.dataset.state = good ? "ok" : (warn ? "warn" : "bad");
  el.textContent = text;
}
function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}
function fillTable(id, rows, columns, emptyText, rowAttrs) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren();
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = cell(tr, emptyText, "empty");
    td.colSpan = columns;
    body.appendChild(tr);
    return;
  }
  for (const r of rows) {
    const tr = document.createElement("tr");
    rowAttrs(tr, r);
    body.appendChild(tr);
  }
}

// ------------------------------------------------------------------ charts

function niceStep(v) {
  // The smallest step of 1, 2, 2.5 or 5 times a power of ten that is at least v.
  if (v <= 0) return 0.25;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function minutesLabel(m) {
  if (m === 0) return "now";
  return m < 1 ? `-${Math.round(m * 60)}s` : `-${m}m`;
}

function drawChart(canvas, times, values, opts) {
  const ratio = window.devicePixelRatio || 1;
  const cssWidth = canvas.clientWidth || canvas.width;
  const cssHeight = canvas.clientHeight || canvas.height;
  canvas.width = Math.round(cssWidth * ratio);
  canvas.height = Math.round(cssHeight * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, cssWidth, cssHeight);
  const left = 58, right = 10, top = 8, bottom = 22;
  const w = cssWidth - left - right, h = cssHeight - top - bottom;
  const top4 = (Math.max(0, ...values) * 1.05) / 4;
  // Byte charts step in whole KiB/MiB so the labels come out round.
  const scale = opts.bytes ? Math.pow(1024, Math.max(0, Math.floor(Math.log(Math.max(top4, 1)) / Math.log(1024)))) : 1;
  const max = 4 * scale * niceStep(top4 / scale);
  ctx.font = "11px system-ui, 'DejaVu Sans', sans-serif";
  ctx.fillStyle = "#6b7785";
  ctx.strokeStyle = "#e3e8ee";
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let i = 0; i <= 4; i += 1) {
    const y = top + h - (h * i) / 4;
    ctx.beginPath(); ctx.moveTo(left, Math.round(y) + 0.5); ctx.lineTo(left + w, Math.round(y) + 0.5); ctx.stroke();
    ctx.fillText(opts.format((max * i) / 4), left - 6, y);
  }
  const now = times.length ? times[times.length - 1] : Date.now();
  const spanMs = Math.max(60000, times.length ? now - times[0] : 60000);
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  const stepMin = spanMs > 600000 ? 2 : (spanMs > 180000 ? 1 : (spanMs > 90000 ? 0.5 : 0.25));
  for (let m = 0; m * 60000 <= spanMs; m += stepMin) {
    const x = left + w - (w * m * 60000) / spanMs;
    ctx.fillText(minutesLabel(m), x, top + h + 5);
  }
  if (times.length < 2) {
    ctx.textBaseline = "middle";
    ctx.fillText("collecting samples…", left + w / 2, top + h / 2);
    return;
  }
  const xOf = (t) => left + w - (w * (now - t)) / spanMs;
  const yOf = (v) => top + h - (h * Math.max(0, v)) / max;
  ctx.beginPath();
  ctx.moveTo(xOf(times[0]), yOf(values[0]));
  for (let i = 1; i < times.length; i += 1) ctx.lineTo(xOf(times[i]), yOf(values[i]));
  ctx.strokeStyle = opts.color;
  ctx.lineWidth = 1.6;
  ctx.stroke();
  ctx.lineTo(xOf(times[times.length - 1]), top + h);
  ctx.lineTo(xOf(times[0]), top + h);
  ctx.closePath();
  ctx.fillStyle = opts.color + "22";
  ctx.fill();
}

const CHARTS = [
  { id: "chart-ingest-rate", key: "ingest_rate", color: "#1f6fb2", format: (v) => fmtNum(v, 1), last: (v) => `${fmtNum(v, 1)}/s` },
  { id: "chart-backlog", key: "backlog", color: "#b7791f", format: (v) => fmtNum(v, 0), last: (v) => fmtInt(v) },
  { id: "chart-uplink", key: "uplink_bps", color: "#1e8a4c", bytes: true, format: fmtBytes, last: (v) => `${fmtBytes(v)}/s` },
  { id: "chart-compression", key: "compression_ratio", color: "#7d3c98", format: (v) => `${fmtNum(v, 2)}×`, last: (v) => `${fmtNum(v, 1)}×` },
  { id: "chart-batch-size", key: "batch_size", color: "#c0392b", format: (v) => fmtNum(v, 0), last: (v) => fmtNum(v, 1) },
];

// ------------------------------------------------------------------ rendering

function render(doc) {
  const t = doc.totals;
  document.getElementById("gateway-id").textContent = doc.gateway_id;
  document.getElementById("version").textContent = doc.version;
  document.title = `tidegate ${doc.gateway_id}`;
  setState("health", doc.healthy, doc.healthy ? "healthy" : "unhealthy");
  document.getElementById("health").title = Object.entries(doc.health).map(([k, v]) => `${k}: ${v}`).join("\n");
  document.getElementById("uptime").textContent = fmtAge(doc.uptime_s);
  setState("upstream-state", doc.upstream.up, doc.upstream.up ? "up" : "down");
  document.getElementById("upstream-url").textContent = doc.upstream.url;
  setState("mqtt-state", t.mqtt_connected === 1, t.mqtt_connected === 1 ? "connected" : "disconnected");
  setState("clock-state", t.clock_synchronised === 1, t.clock_synchronised === 1 ? "synchronised" : "not synchronised", true);
  document.getElementById("updated-at").textContent = fmtTime(doc.now_ms);

  setFigure("readings-in", t.readings_in, fmtInt(t.readings_in));
  setFigure("rejected", t.rejected, fmtInt(t.rejected));
  setFigure("duplicates", t.deduplicated, fmtInt(t.deduplicated));
  setFigure("readings-out", t.readings_out, fmtInt(t.readings_out));
  setFigure("batches-out", t.batches_out, fmtInt(t.batches_out));
  setFigure("backlog", t.backlog, fmtInt(t.backlog));
  setFigure("oldest-age", t.oldest_unforwarded_age_s, fmtAge(t.oldest_unforwarded_age_s));
  setFigure("uplink-bytes", t.uplink_bytes, fmtBytes(t.uplink_bytes));
  setFigure("log-bytes", t.log_bytes, fmtBytes(t.log_bytes));
  setFigure("quota-bytes", t.quota_bytes, t.quota_bytes ? fmtBytes(t.quota_bytes) : "none");
  setFigure("disk-free", t.disk_free_bytes, fmtBytes(t.disk_free_bytes));
  setFigure("dropped-by-quota", t.dropped_by_quota, fmtInt(t.dropped_by_quota));
  setFigure("broker-dropped", t.broker_dropped, fmtInt(t.broker_dropped));
  setFigure("batch-max", doc.batch.max_readings, fmtInt(doc.batch.max_readings));
  setFigure("batch-linger", doc.batch.linger_s, `${fmtNum(doc.batch.linger_s * 1000, 0)} ms`);

  const history = doc.history;
  const times = history.t || [];
  const rates = history.ingest_rate || [];
  const lastRate = rates.length ? rates[rates.length - 1] : 0;
  setFigure("ingest-rate", lastRate, fmtNum(lastRate, 1));
  const ratios = history.compression_ratio || [];
  const ratio = ratios.length ? ratios[ratios.length - 1] : 0;
  setFigure("compression-ratio", ratio, ratio ? `${fmtNum(ratio, 1)}×` : "–");
  const span = times.length > 1 ? (times[times.length - 1] - times[0]) / 1000 : 0;
  document.getElementById("history-span").textContent = fmtAge(span);
  for (const chart of CHARTS) {
    const values = history[chart.key] || [];
    drawChart(document.getElementById(chart.id), times, values, chart);
    const last = values.length ? values[values.length - 1] : 0;
    setFigure(`${chart.id}-last`, last, chart.last(last));
  }

  fillTable("streams-table", doc.streams, 8, "no readings yet", (tr, s) => {
    tr.dataset.stream = s.stream;
    cell(tr, s.stream);
    cell(tr, fmtInt(s.readings_in), "num readings-in").dataset.value = s.readings_in;
    cell(tr, fmtNum(s.rate, 1), "num rate").dataset.value = s.rate;
    cell(tr, fmtInt(s.readings_out), "num readings-out").dataset.value = s.readings_out;
    cell(tr, fmtInt(s.backlog), "num backlog").dataset.value = s.backlog;
    cell(tr, fmtAge(s.oldest_unforwarded_age_s), "num oldest").dataset.value = s.oldest_unforwarded_age_s;
    cell(tr, fmtBytes(s.log_bytes), "num log-bytes").dataset.value = s.log_bytes;
    cell(tr, fmtInt(s.dropped_by_quota), "num dropped").dataset.value = s.dropped_by_quota;
  });
  document.getElementById("device-count").textContent = `(${doc.devices.length})`;
  fillTable("devices-table", doc.devices, 6, "no devices seen yet", (tr, d) => {
    tr.dataset.device = d.device;
    if (d.age_s > 300) tr.className = "stale";
    cell(tr, d.device, "device");
    cell(tr, d.stream);
    cell(tr, `${fmtAge(d.age_s)} ago`, "last-seen").dataset.value = d.last_seen_ms;
    cell(tr, fmtNum(d.rate, 2), "num rate").dataset.value = d.rate;
    cell(tr, fmtInt(d.readings), "num readings").dataset.value = d.readings;
    cell(tr, Object.entries(d.values).map(([k, v]) => `${k} ${v}`).join(" · "), "values");
  });
  fillTable("dead-letters-table", collapse(doc.dead_letters, (d) => `${d.reason} ${d.topic}`).slice(0, 8), 4, "none", (tr, item) => {
    const d = item.entry;
    const when = cell(tr, fmtClock(d.received_ms), "when");
    when.title = fmtTime(d.received_ms);
    cell(tr, d.reason, "reason");
    cell(tr, `${d.source}:${d.topic}`, "topic");
    const td = cell(tr, shorten(d.message, 160) + " ", "message");
    td.title = d.message;
    const raw = document.createElement("code");
    raw.textContent = d.raw_hex.slice(0, 48) + (d.raw_bytes > 24 ? "…" : "");
    td.appendChild(raw);
    if (item.count > 1) {
      const badge = document.createElement("span");
      badge.className = "repeat";
      badge.textContent = `×${item.count}`;
      td.appendChild(badge);
    }
  });
  fillTable("errors-table", collapse(doc.errors, (e) => e.logger + e.message.slice(0, 40)).slice(0, 8), 4, "no warnings or errors", (tr, item) => {
    const e = item.entry;
    const when = cell(tr, fmtClock(e.ts_ms), "when");
    when.title = fmtTime(e.ts_ms);
    cell(tr, e.level, `level-${e.level}`);
    cell(tr, e.logger);
    const td = cell(tr, shorten(e.message, 160), "message");
    td.title = e.message;
    if (item.count > 1) {
      const badge = document.createElement("span");
      badge.className = "repeat";
      badge.textContent = `×${item.count}`;
      td.appendChild(badge);
    }
  });
}

async function refresh() {
  try {
    const response = await fetch("/api/status", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
  } catch (err) {
    setState("health", false, "gateway not answering");
    document.getElementById("health").title = String(err);
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
