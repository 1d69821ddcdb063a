// The dashboard: plain JavaScript over the gateway's own API, no build step, no dependency.
"use strict";

const $ = (selector) => document.querySelector(selector);
const session = {
  get appId() { return sessionStorage.getItem("vdip.app_id"); },
  get key() { return sessionStorage.getItem("vdip.key"); },
  get admin() { return sessionStorage.getItem("vdip.admin") === "1"; },
};
let timers = [];

// The API's errors keep what it said of each field (``error.errors``: [{field, reason}]).
async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { "X-API-Key": session.key, ...(options.headers || {}) } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(body.message || `HTTP ${response.status}`);
    error.errors = body.errors || [];
    throw error;
  }
  return body.data;
}

function send(method, path, body) {
  return api(path, { method, headers: { "Content-Type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body) });
}

function button(label, onClick, className) {
  const element = Object.assign(document.createElement("button"), { type: "button", textContent: label });
  if (className) element.className = className;
  element.addEventListener("click", onClick);
  return element;
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
function ms(value) { return value === null || value === undefined ? "" : `${Math.round(value)} ms`; }

// ------------------------------------------------------------------------------ chart

// The time ranges of the picker: the period of their buckets and how far back they reach.
const RANGES = {
  "6h": ["hourly", 6], "24h": ["hourly", 24], "7d": ["hourly", 24 * 7], "30d": ["daily", 24 * 30],
  "90d": ["daily", 24 * 90], "12w": ["weekly", 24 * 7 * 12], "52w": ["weekly", 24 * 7 * 52],
};

function svgElement(name, attributes, text) {
  const element = document.createElementNS("http://www.w3.org/2000/svg", name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

function bucketLabel(iso, period) {
  const at = new Date(iso);
  return period === "hourly" ? at.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" })
    : at.toLocaleDateString([], { month: "short", day: "numeric" });
}

// Stacked bars by status, with a y axis (events), an x axis (bucket start, local time) and a
// tooltip per bar.
function drawChart(series, period) {
  const svg = $("#chart");
  const left = 56, right = 790, top = 10, bottom = 200, gap = 1;
  const highest = Math.max(1, ...series.map((p) => p.total_events));
  const step = (right - left) / Math.max(series.length, 1);
  const parts = [];
  for (const value of new Set([0, Math.round(highest / 2), highest])) {  // whole numbers, each once
    const y = bottom - (value / highest) * (bottom - top);
    parts.push(svgElement("line", { x1: left, x2: right, y1: y, y2: y, class: "grid" }));
    parts.push(svgElement("text", { x: left - 6, y: y + 4, class: "tick y" }, String(value)));
  }
  parts.push(svgElement("text", { x: 12, y: (top + bottom) / 2, class: "axis-title", transform: `rotate(-90 12 ${(top + bottom) / 2})` }, "events"));
  const labels = Math.min(series.length, 6);
  for (let n = 0; n < labels; n++) {
    const i = Math.round((n * (series.length - 1)) / Math.max(labels - 1, 1));
    const anchor = n === 0 ? "start" : n === labels - 1 ? "end" : "middle";  // the ends stay inside
    const x = n === 0 ? left : n === labels - 1 ? right : left + (i + 0.5) * step;
    parts.push(svgElement("text", { x, y: bottom + 16, class: "tick x", "text-anchor": anchor }, bucketLabel(series[i].time_bucket, period)));
  }
  parts.push(svgElement("text", { x: (left + right) / 2, y: bottom + 36, class: "axis-title" }, `${period} buckets, local time`));
  series.forEach((point, i) => {
    let y = bottom;
    for (const status of ["processed", "pending", "failed"]) {
      const value = point[`${status}_events`];
      if (!value) continue;
      const h = (value / highest) * (bottom - top);
      y -= h;
      const bar = svgElement("rect", { class: status, x: left + i * step + gap, y, width: Math.max(step - 2 * gap, 1), height: h });
      bar.append(svgElement("title", {}, `${bucketLabel(point.time_bucket, period)}: ${value} ${status} of ${point.total_events}`));
      parts.push(bar);
    }
  });
  svg.replaceChildren(...parts);
  svg.dataset.total = String(series.reduce((sum, p) => sum + p.total_events, 0));
}

async function loadStatistics() {
  const [period, hours] = RANGES[$("#range").value];
  const start = new Date(Date.now() - hours * 3600 * 1000).toISOString();
  const data = await api(`/api/statistics/dashboard/${encodeURIComponent(session.appId)}` +
    `?time_period=${period}&start_date=${encodeURIComponent(start)}`);
  const t = data.totals;
  $("#totals").innerHTML = "";
  for (const [label, value] of [["total", t.total_events], ["processed", t.processed_events], ["pending", t.pending_events], ["failed", t.failed_events]]) {
    const span = document.createElement("span");
    span.innerHTML = `<b></b> ${label}`;
    span.querySelector("b").textContent = value;
    span.dataset.metric = label;
    $("#totals").append(span);
  }
  drawChart(data.series, period);
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
  const routing = event.routing || {};
  $("#detail-summary").textContent = routing.error ? `Routing failed: ${routing.error}` :
    `${(routing.matched_rules || []).length} of ${routing.rules_evaluated ?? 0} rule(s) evaluated matched` +
    (routing.routed_at ? `, routed ${when(routing.routed_at)}` : "");
  fill($("#detail-matches tbody"), routing.deliveries || [], (d) =>
    [cell(d.rule_id), cell(d.destination_type), cell(d.delivery_id)]);
  $("#detail-routing").textContent = JSON.stringify(event.routing, null, 2);
  fill($("#detail-deliveries tbody"), event.deliveries, (d) =>
    [cell(d.rule_id), cell(d.destination_type), cell(d.status, `status-${d.status === "delivered" ? "processed" : d.status}`),
     cell(d.attempts), cell(d.last_error || d.last_status_code)]);
  $("#detail").hidden = false;
}

async function loadRules() {
  const rules = await api(`/api/statistics/rules/${encodeURIComponent(session.appId)}`);
  fill($("#rules tbody"), rules, (r) => {
    const actions = cell("");
    actions.append(
      button("edit", () => editRule(r.rule_id).catch(showRulesError)),
      button(r.is_active ? "switch off" : "switch on", () => toggleRule(r.rule_id).catch(showRulesError)),
      button("delete", () => deleteRule(r).catch(showRulesError)),
    );
    return [cell(r.rule_name), cell(r.destination_type), cell(r.is_active ? "yes" : "no"), cell(r.matches),
            cell(r.delivered), cell(r.failed), actions];
  });
}

function showRulesError(error) { $("#rules-message").textContent = error.message; }

// ------------------------------------------------------------------------------ the rule editor

const CONFIG_EXAMPLES = { queue: { topic: "" }, webhook: { url: "https://" }, database_table: { table: "" } };
let editing = null;  // the rule id being edited; null: a new rule

function clearFieldErrors() {
  document.querySelectorAll("#rule-form .field-error").forEach((e) => e.remove());
  document.querySelectorAll("#rule-form [aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid"));
  $("#rule-error").textContent = "";
}

// Each error next to the input it names ("body.condition.$and" -> condition), the rest below.
function showFieldErrors(error) {
  const unplaced = [];
  for (const { field, reason } of error.errors || []) {
    const name = field.replace(/^body\.(rule\.)?/, "").split(".")[0];
    const input = document.querySelector(`#rule-form [data-field="${CSS.escape(name)}"]`);
    if (!input) { unplaced.push(`${field}: ${reason}`); continue; }
    input.setAttribute("aria-invalid", "true");
    const note = Object.assign(document.createElement("span"), { className: "field-error", textContent: reason });
    note.dataset.for = name;
    input.after(note);
  }
  $("#rule-error").textContent = [error.message, ...unplaced].join(" — ");
}

function parsed(id, field) {
  try {
    return JSON.parse($(id).value);
  } catch (e) {
    const error = new Error("Not JSON");
    error.errors = [{ field: `body.${field}`, reason: `not JSON: ${e.message}` }];
    throw error;
  }
}

function ruleFields() {
  return {
    app_id: session.appId,
    rule_name: $("#rule-name").value.trim(),
    event_type_filter: $("#rule-type").value.trim() || null,
    condition: parsed("#rule-condition", "condition"),
    destination_type: $("#rule-destination").value,
    destination_config: parsed("#rule-config", "destination_config"),
    priority: Number($("#rule-priority").value || 0),
    is_active: $("#rule-active").checked,
  };
}

function openEditor(rule) {
  editing = rule ? rule.rule_id : null;
  clearFieldErrors();
  $("#rule-secret").hidden = true;
  $("#rule-verdict").replaceChildren();
  $("#rule-form-title").textContent = rule ? `Edit rule ${rule.rule_id}` : "New rule";
  $("#rule-name").value = rule ? rule.rule_name : "";
  $("#rule-type").value = rule && rule.event_type_filter ? rule.event_type_filter : "";
  $("#rule-condition").value = JSON.stringify(rule ? rule.condition : {}, null, 1);
  $("#rule-destination").value = rule ? rule.destination_type : "queue";
  $("#rule-config").value = JSON.stringify(rule ? rule.destination_config : CONFIG_EXAMPLES.queue);
  $("#rule-priority").value = rule ? rule.priority : 0;
  $("#rule-active").checked = rule ? rule.is_active : true;
  $("#rule-form").hidden = false;
}

async function editRule(ruleId) {
  $("#rule-form").hidden = true;  // until it holds this rule: nothing typed meanwhile is lost to it
  openEditor(await api(`/api/routing-rules/${ruleId}`));
}

async function saveRule(event) {
  event.preventDefault();
  clearFieldErrors();
  try {
    const fields = ruleFields();
    const saved = editing === null ? await send("POST", "/api/routing-rules", fields)
      : await send("PUT", `/api/routing-rules/${editing}`, fields);
    editing = saved.rule_id;
    $("#rule-form-title").textContent = `Edit rule ${saved.rule_id}`;
    if (saved.webhook_secret) {
      $("#rule-secret").textContent = `Webhook signing secret (shown once): ${saved.webhook_secret}`;
      $("#rule-secret").hidden = false;
    }
    $("#rule-error").textContent = `Saved rule ${saved.rule_id}.`;
    await loadRules();
  } catch (error) {
    showFieldErrors(error);
  }
}

async function toggleRule(ruleId) {
  await send("PATCH", `/api/routing-rules/${ruleId}/toggle`);
  await loadRules();
}

async function deleteRule(rule) {
  if (!confirm(`Delete the rule "${rule.rule_name}"?`)) return;
  await send("DELETE", `/api/routing-rules/${rule.rule_id}`);
  if (editing === rule.rule_id) $("#rule-form").hidden = true;
  await loadRules();
}

async function useLatestEvent() {
  const page = await api(`/api/events/app/${encodeURIComponent(session.appId)}?limit=1`);
  if (!page.events.length) throw new Error("No event stored yet");
  const [latest] = page.events;
  $("#rule-sample").value = JSON.stringify({ event_type: latest.event_type, payload: latest.payload }, null, 1);
}

async function testRule() {
  clearFieldErrors();
  try {
    const fields = ruleFields();
    const rule = { rule_name: fields.rule_name || "draft", event_type_filter: fields.event_type_filter, condition: fields.condition };
    const [verdict] = await send("POST", "/api/routing-rules/test", { app_id: session.appId, rule, event: parsed("#rule-sample", "event") });
    const lines = [verdict.matched ? "Matches the sample event." : "Does not match the sample event:"];
    $("#rule-verdict").replaceChildren(...lines.concat(verdict.reasons).map((text) =>
      Object.assign(document.createElement("p"), { textContent: text, className: verdict.matched ? "status-processed" : "status-failed" })));
  } catch (error) {
    showFieldErrors(error);
  }
}

// ------------------------------------------------------------------------------ webhook endpoints

function percent(rate) { return rate === null ? "no delivery ended in 24 h" : `${Math.round(rate * 100)} % delivered over 24 h`; }

function endpointCard(e) {
  const card = Object.assign(document.createElement("div"), { className: "endpoint" });
  card.dataset.ruleId = e.rule_id;
  const title = Object.assign(document.createElement("h3"), { textContent: `${e.rule_name} → ${e.url}` });
  const state = document.createElement("p");
  state.className = e.disabled_at ? "state status-failed" : e.failing_since ? "state status-pending" : "state status-processed";
  state.textContent = e.disabled_at ? `disabled ${when(e.disabled_at)}: ${e.disabled_reason}`
    : e.failing_since ? `failing since ${when(e.failing_since)}` : e.is_active ? "healthy" : "switched off";
  const stats = Object.assign(document.createElement("p"), {
    textContent: `${percent(e.success_rate_24h)}: ${e.delivered_24h} delivered, ${e.failed_24h} failed, ${e.under_way} under way`,
  });
  const actions = document.createElement("p");
  if (e.disabled_at) actions.append(button("re-enable", () => act(reenable(e.rule_id))));
  actions.append(
    button("rotate secret", () => act(rotate(e.rule_id))),
    button("redeliver failed (7 days)", () => act(redeliverFailed(e.rule_id))),
  );
  const table = document.createElement("table");
  table.innerHTML = "<thead><tr><th>attempted</th><th>status</th><th>attempts</th><th>HTTP</th><th>latency</th><th>error</th></tr></thead><tbody></tbody>";
  fill(table.querySelector("tbody"), e.last_attempts, (a) =>
    [cell(when(a.updated_at)), cell(a.status), cell(a.attempts), cell(a.last_status_code), cell(ms(a.last_latency_ms)), cell(a.last_error)]);
  card.append(title, state, stats, actions, table);
  return card;
}

async function loadEndpoints() {
  const endpoints = await api(`/api/webhooks/app/${encodeURIComponent(session.appId)}`);
  $("#endpoints").replaceChildren(...endpoints.map(endpointCard));
}

async function act(doing) {
  try {
    $("#endpoints-message").textContent = await doing;
    await loadEndpoints();
  } catch (error) {
    $("#endpoints-message").textContent = error.message;
  }
}

async function reenable(ruleId) {
  const rule = await api(`/api/routing-rules/${ruleId}`);
  const fields = ["app_id", "rule_name", "event_type_filter", "condition", "destination_type", "destination_config", "priority", "is_active"];
  await send("PUT", `/api/routing-rules/${ruleId}`, Object.fromEntries(fields.map((f) => [f, rule[f]])));
  return `Rule ${ruleId} re-enabled.`;
}

async function rotate(ruleId) {
  const rule = await send("POST", `/api/routing-rules/${ruleId}/rotate-secret`);
  return `New signing secret of rule ${ruleId} (shown once): ${rule.webhook_secret}`;
}

async function redeliverFailed(ruleId) {
  const since = new Date(Date.now() - 7 * 86400 * 1000).toISOString();
  const done = await send("POST", `/api/routing-rules/${ruleId}/redeliver`, { since });
  return `${done.redelivered} failed deliveries of rule ${ruleId} sent again.`;
}

async function loadDeadLetters() {
  const letters = await api(`/api/dead-letters/app/${encodeURIComponent(session.appId)}?limit=10`);
  fill($("#dead-letters tbody"), letters, (d) => {
    const actions = cell("");
    actions.append(button("send back", () => resendDeadLetter(d)));
    return [cell(new Date(d.timestamp_ms).toLocaleString()), cell(d.stage), cell(d.error), cell(d.source), actions];
  });
}

// Sends a dead letter back into events (POST .../resend) and says what became of it.
async function resendDeadLetter(letter) {
  try {
    const done = await send("POST", `/api/dead-letters/app/${encodeURIComponent(session.appId)}/resend`,
      { records: [{ partition: letter.partition, offset: letter.offset }] });
    const [outcome] = done.records;
    $("#dead-letters-message").textContent = `${letter.partition}@${letter.offset}: ${outcome.outcome}` +
      (outcome.reason ? ` (${outcome.reason})` : "") + (outcome.event_id ? `, event ${outcome.event_id}` : "");
  } catch (error) {
    $("#dead-letters-message").textContent = error.message;
  }
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

// ------------------------------------------------------------------------------ the admin's overview

async function loadOverview() {
  const data = await api("/api/overview");
  fill($("#apps tbody"), data.applications, (a) =>
    [cell(a.app_id), cell(a.name), cell(a.is_active ? "yes" : "no"), cell(a.events_per_minute),
     cell(ms(a.accept_to_stored_p99_ms)), cell(a.pending), cell(a.failed, a.failed ? "status-failed" : ""),
     cell(a.last_event_at ? when(a.last_event_at) : "never")], (a) => openApp(a.app_id));
  const p = data.pipeline;
  $("#health").replaceChildren(...[
    [`${p.events_per_s}`, "events/s"], [ms(p.accept_to_stored_p99_ms) || "–", "p99 accept → stored"],
  ].map(([value, label]) => {
    const span = document.createElement("span");
    span.append(Object.assign(document.createElement("b"), { textContent: value }), ` ${label}`);
    return span;
  }));
  fill($("#lags tbody"), p.consumer_lag, (l) =>
    [cell(l.process), cell(l.group), cell(l.topic), cell(l.lag === null ? "unknown" : l.lag)]);
}

function stopTimers() {
  timers.forEach(clearInterval);
  timers = [];
}

async function openOverview() {
  await api("/api/overview");  // checks the admin token
  sessionStorage.setItem("vdip.admin", "1");
  sessionStorage.removeItem("vdip.app_id");
  stopTimers();
  $("#sign-in").hidden = true;
  $("#board").hidden = true;
  $("#all-apps").hidden = true;
  $("#overview").hidden = false;
  $("#sign-out").hidden = false;
  $("#who").textContent = "admin";
  every(5000, loadOverview);
}

async function openApp(appId) {
  sessionStorage.setItem("vdip.app_id", appId);
  stopTimers();
  $("#overview").hidden = true;
  await open();
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
  $("#all-apps").hidden = !session.admin;
  $("#who").textContent = session.appId;
  every(2000, loadEvents);
  every(3000, loadStatistics);
  every(5000, loadRules);
  every(10000, loadDeadLetters);
  every(2000, loadJobs);
  every(5000, loadEndpoints);
}

function signOut() {
  stopTimers();
  sessionStorage.clear();
  location.reload();
}

$("#sign-in").addEventListener("submit", async (e) => {
  e.preventDefault();
  const appId = $("#app-id").value.trim();
  sessionStorage.setItem("vdip.key", $("#key").value.trim());
  try {
    if (appId) {
      sessionStorage.setItem("vdip.app_id", appId);
      await open();
    } else {
      await openOverview();
    }
  } catch (error) {
    sessionStorage.clear();
    $("#sign-in-error").textContent = `Cannot open this application: ${error.message}`;
  }
});
$("#sign-out").addEventListener("click", signOut);
$("#all-apps").addEventListener("click", () => openOverview().catch(console.warn));
$("#rule-new").addEventListener("click", () => openEditor(null));
$("#rule-cancel").addEventListener("click", () => { $("#rule-form").hidden = true; });
$("#rule-form").addEventListener("submit", saveRule);
$("#rule-test").addEventListener("click", testRule);
$("#rule-latest").addEventListener("click", () => useLatestEvent().catch((e) => { $("#rule-error").textContent = e.message; }));
$("#rule-destination").addEventListener("change", () => {
  $("#rule-config").value = JSON.stringify(CONFIG_EXAMPLES[$("#rule-destination").value]);
});
$("#range").addEventListener("change", () => loadStatistics().catch(console.warn));
$("#detail-close").addEventListener("click", () => { $("#detail").hidden = true; });
if (session.appId && session.key) open().catch(() => sessionStorage.clear());
else if (session.key && session.admin) openOverview().catch(() => sessionStorage.clear());
