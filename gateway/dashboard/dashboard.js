// The dashboard: plain JavaScript over the gateway's own API, no build step, no dependency.
"use strict";

const $ = (selector) => document.querySelector(selector);
const session = {
  get appId() { return sessionStorage.getItem("vdip.app_id"); },
  get key() { return sessionStorage.getItem("vdip.key"); },
};
let timers = [];

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { "X-API-Key": session.key, ...(options.headers || {}) } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.message || `HTTP ${response.status}`);
  return body.data;
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (className) td.className = className;
  return td;
}

function fill(tbody, rows, toCells, onClick) {
  tbody.replaceChildren(...rows.map((row) => {
    const tr = document.createElement("tr");
    tr.append(...toCells(row));
    if (onClick) { tr.className = "clickable"; tr.addEventListener("click", () => onClick(row)); }
    return tr;
  }));
}

function when(iso) { return new Date(iso).toLocaleString(); }

// ------------------------------------------------------------------------------ chart

function drawChart(series) {
  const svg = $("#chart");
  const width = 800, height = 200, gap = 1;
  const top = Math.max(1, ...series.map((p) => p.total_events));
  const barWidth = width / Math.max(series.length, 1);
  const bars = [];
  series.forEach((point, i) => {
    let y = height;
    for (const status of ["processed", "pending", "failed"]) {
      const value = point[`${status}_events`];
      if (!value) continue;
      const h = (value / top) * (height - 10);
      y -= h;
      bars.push(`<rect class="${status}" x="${i * barWidth + gap}" y="${y}" width="${Math.max(barWidth - 2 * gap, 1)}" height="${h}">` +
        `<title>${when(point.time_bucket)}: ${value} ${status}</title></rect>`);
    }
  });
  svg.innerHTML = bars.join("");
  svg.dataset.total = String(series.reduce((sum, p) => sum + p.total_events, 0));
}

async function loadStatistics() {
  const period = $("#period").value;
  const data = await api(`/api/statistics/dashboard/${encodeURIComponent(session.appId)}?time_period=${period}`);
  const t = data.totals;
  $("#totals").innerHTML = "";
  for (const [label, value] of [["total", t.total_events], ["processed", t.processed_events], ["pending", t.pending_events], ["failed", t.failed_events]]) {
    const span = document.createElement("span");
    span.innerHTML = `<b></b> ${label}`;
    span.querySelector("b").textContent = value;
    span.dataset.metric = label;
    $("#totals").append(span);
  }
  drawChart(data.series);
  fill($("#by-type tbody"), Object.entries(data.by_event_type), ([type, c]) =>
    [cell(type), cell(c.total_events), cell(c.processed_events), cell(c.pending_events), cell(c.failed_events)]);
}

// ------------------------------------------------------------------------------ events

async function loadEvents() {
  const page = await api(`/api/events/app/${encodeURIComponent(session.appId)}?limit=20`);
  fill($("#events tbody"), page.events, (e) =>
    [cell(when(e.received_at)), cell(e.event_type), cell(e.status, `status-${e.status}`), cell(e.event_id)], showEvent);
}

async function showEvent(row) {
  const event = await api(`/api/events/${row.event_id}`);
  $("#detail-id").textContent = event.event_id;
  $("#detail-payload").textContent = JSON.stringify(event.payload, null, 2);
  $("#detail-routing").textContent = JSON.stringify(event.routing, null, 2);
  fill($("#detail-deliveries tbody"), event.deliveries, (d) =>
    [cell(d.rule_id), cell(d.destination_type), cell(d.status, `status-${d.status === "delivered" ? "processed" : d.status}`),
     cell(d.attempts), cell(d.last_error || d.last_status_code)]);
  $("#detail").hidden = false;
}

async function loadRules() {
  const rules = await api(`/api/statistics/rules/${encodeURIComponent(session.appId)}`);
  fill($("#rules tbody"), rules, (r) =>
    [cell(r.rule_name), cell(r.destination_type), cell(r.is_active ? "yes" : "no"), cell(r.matches), cell(r.delivered), cell(r.failed)]);
}

async function loadDeadLetters() {
  const letters = await api(`/api/dead-letters/app/${encodeURIComponent(session.appId)}?limit=10`);
  fill($("#dead-letters tbody"), letters, (d) =>
    [cell(new Date(d.timestamp_ms).toLocaleString()), cell(d.stage), cell(d.error), cell(d.source)]);
}

function progress(job) {
  const td = document.createElement("td");
  const bar = document.createElement("progress");
  bar.max = 100;
  bar.value = job.percent;
  td.append(bar, ` ${job.percent}% (${job.scanned} of ${job.total})`);
  return td;
}

function what(job) {
  if (job.kind === "replay") return `replay ${when(job.params.start)} – ${when(job.params.end)}`;
  if (job.kind === "deletion") return `deletion of ${job.params.values} value(s) at ${job.params.path}`;
  return job.kind;
}

async function loadJobs() {
  const jobs = await api(`/api/applications/${encodeURIComponent(session.appId)}/jobs?limit=10`);
  fill($("#jobs tbody"), jobs, (j) =>
    [cell(when(j.created_at)), cell(what(j)),
     cell(j.state, `status-${j.state === "done" ? "processed" : j.state === "failed" ? "failed" : "pending"}`),
     progress(j), cell(j.sent), cell(j.skipped), cell(j.eta_s === null ? "" : `${Math.ceil(j.eta_s)} s`)]);
}

// ------------------------------------------------------------------------------ wiring

function every(ms, load) {
  const run = () => load().catch((error) => console.warn(error));
  run();
  timers.push(setInterval(run, ms));
}

async function open() {
  const app = await api(`/api/applications/${encodeURIComponent(session.appId)}`);  // checks the key
  const quota = app.quota;
  $("#quota").textContent = `Ingest quota: ${quota.events_per_s} events/s, ${quota.burst} at once` +
    (quota.default ? " (the default)" : "");
  $("#sign-in").hidden = true;
  $("#board").hidden = false;
  $("#sign-out").hidden = false;
  $("#who").textContent = session.appId;
  every(2000, loadEvents);
  every(3000, loadStatistics);
  every(5000, loadRules);
  every(10000, loadDeadLetters);
  every(2000, loadJobs);
}

function signOut() {
  timers.forEach(clearInterval);
  timers = [];
  sessionStorage.clear();
  location.reload();
}

$("#sign-in").addEventListener("submit", async (e) => {
  e.preventDefault();
  sessionStorage.setItem("vdip.app_id", $("#app-id").value.trim());
  sessionStorage.setItem("vdip.key", $("#key").value.trim());
  try {
    await open();
  } catch (error) {
    sessionStorage.clear();
    $("#sign-in-error").textContent = `Cannot open this application: ${error.message}`;
  }
});
$("#sign-out").addEventListener("click", signOut);
$("#period").addEventListener("change", () => loadStatistics().catch(console.warn));
$("#detail-close").addEventListener("click", () => { $("#detail").hidden = true; });
if (session.appId && session.key) open().catch(() => sessionStorage.clear());
