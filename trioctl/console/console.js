// trioctl web console: the daemon's own JSON-RPC over WebSocket, no build step.
// The token comes from the URL fragment (#token=..., never sent to the server)
// or the form, and goes as the subprotocol "bearer.<token>" beside "trioctl.v1".
"use strict";

const REFRESH_MS = 2000;
const ACTIONS = {
  start: ["shutoff", "crashed"],
  suspend: ["running"],
  resume: ["paused"],
  shutdown: ["running"],
  destroy: ["running", "paused"],
};
let ws = null;
let token = null;
let role = null;
let nextId = 1;
const pending = new Map();
const domains = new Map();
const busy = new Set();

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function setStatus(text, kind) {
  const status = $("#status");
  status.textContent = text;
  status.className = "status " + (kind || "");
}

function log(text, isError) {
  const list = $("#events");
  const time = new Date().toLocaleTimeString();
  list.prepend(el("li", isError ? { class: "error" } : {}, `${time} ${text}`));
  while (list.children.length > 200) list.lastChild.remove();
}

function call(method, params) {
  return new Promise((resolve, reject) => {
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      reject(new Error("not connected"));
      return;
    }
    const id = nextId++;
    pending.set(id, { resolve, reject });
    ws.send(JSON.stringify({ jsonrpc: "2.0", id, method, params: params || {} }));
  });
}

function onMessage(event) {
  const message = JSON.parse(event.data);
  if (message.method === "events.event") {
    const e = message.params;
    log(`${e.domain} ${e.kind} ${e.detail}`);
    refreshSoon();
    return;
  }
  const waiter = pending.get(message.id);
  if (!waiter) return;
  pending.delete(message.id);
  if (message.error) {
    const reason = message.error.data && message.error.data.reason;
    waiter.reject(new Error(`${reason || message.error.code}: ${message.error.message}`));
  } else {
    waiter.resolve(message.result);
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  setStatus("connecting");
  ws = new WebSocket(`${scheme}//${location.host}/`, ["trioctl.v1", "bearer." + token]);
  ws.addEventListener("message", onMessage);
  ws.addEventListener("open", async () => {
    setStatus("connected", "ok");
    $("#login").hidden = true;
    try {
      const version = await call("connect.get_version");
      role = version.role || "read";
      $("#whoami").textContent = `trioctl ${version.daemon}, role ${role}`;
      await call("events.subscribe");
    } catch (error) {
      log(error.message, true);
    }
    refresh();
  });
  ws.addEventListener("close", (event) => {
    for (const waiter of pending.values()) waiter.reject(new Error("connection closed"));
    pending.clear();
    setStatus(`disconnected (${event.code})`, "bad");
    if (event.code === 1006 && !role) {
      $("#login").hidden = false;
      log("the daemon refused the connection: check the token", true);
      return;
    }
    setTimeout(connect, 2000);
  });
}

function seconds(value) {
  return value < 10 ? value.toFixed(1) + " s" : Math.round(value) + " s";
}

async function act(name, action) {
  busy.add(name);
  render();
  log(`${name}: ${action}...`);
  try {
    await call("domain." + action, { name });
    log(`${name}: ${action} done`);
  } catch (error) {
    log(`${name}: ${action} failed: ${error.message}`, true);
  } finally {
    busy.delete(name);
    refresh();
  }
}

function render() {
  const body = $("#domains tbody");
  body.replaceChildren();
  const canWrite = role === "write" || role === "admin";
  let hung = 0;
  for (const d of domains.values()) {
    const unresponsive = d.monitor === "unresponsive";
    if (unresponsive) hung++;
    const actions = el("td", {});
    if (canWrite) {
      for (const [action, states] of Object.entries(ACTIONS)) {
        if (!states.includes(d.state)) continue;
        const button = el("button", {
          class: action === "destroy" ? "danger" : "",
          "data-action": action,
          onclick: () => act(d.name, action),
        }, action);
        if (busy.has(d.name) && action !== "destroy") button.disabled = true;
        actions.append(button);
      }
    }
    const job = d.job;
    body.append(el("tr", { class: unresponsive ? "hung" : "", "data-domain": d.name },
      el("td", {}, d.name),
      el("td", { class: "state-" + d.state }, d.state),
      el("td", { class: "mon-" + d.monitor }, d.monitor),
      el("td", { class: "num" }, d.pid === null ? "" : String(d.pid)),
      el("td", {}, job ? `${job.procedure} (${job.client})` + (job.queued ? ` +${job.queued} queued` : "") : ""),
      el("td", { class: "num" }, job ? seconds(job.held_seconds) : ""),
      el("td", {}, (d.taints || []).join(", ")),
      actions));
  }
  $("#domain-summary").textContent = `${domains.size} defined, ${hung} unresponsive`;
}

function parseMetrics(text) {
  const values = new Map();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const space = line.lastIndexOf(" ");
    values.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return values;
}

function rows(selector, entries) {
  const body = $(selector + " tbody");
  body.replaceChildren();
  for (const [label, value] of entries) {
    body.append(el("tr", {}, el("th", {}, label), el("td", { class: "num" }, String(value ?? ""))));
  }
}

async function refreshMetrics() {
  const response = await fetch("/metrics", { headers: { Authorization: "Bearer " + token } });
  if (!response.ok) return;
  const m = parseMetrics(await response.text());
  const g = (name) => m.get(name);
  rows("#pools", [
    ["general workers (free)", `${g('trioctl_pool_workers{pool="general"}')} (${g('trioctl_pool_free_workers{pool="general"}')})`],
    ["priority workers (free)", `${g('trioctl_pool_workers{pool="priority"}')} (${g('trioctl_pool_free_workers{pool="priority"}')})`],
    ["queued for a worker: high", g('trioctl_pool_queue_depth{priority="high"}')],
    ["queued for a worker: low", g('trioctl_pool_queue_depth{priority="low"}')],
    ["domain jobs held", g("trioctl_jobs_held")],
    ["callers queued for a job", g("trioctl_jobs_queued")],
    ["events dropped", g("trioctl_events_dropped_total")],
  ]);
  rows("#clients", [
    ["api clients", g('trioctl_clients{endpoint="api"}')],
    ["admin clients", g('trioctl_clients{endpoint="admin"}')],
    ["max_clients", g("trioctl_clients_max")],
    ["messages in flight", g("trioctl_client_messages_in_flight")],
  ]);
}

let refreshing = false;
let again = false;

async function refresh() {
  if (refreshing) { again = true; return; }
  refreshing = true;
  try {
    // Cached state only: answers at once even while domains hang.
    const list = await call("connect.list_domains");
    domains.clear();
    for (const d of list.domains) domains.set(d.name, d);
    render();
    await refreshMetrics();
  } catch (error) {
    log("refresh: " + error.message, true);
  } finally {
    refreshing = false;
    if (again) { again = false; refresh(); }
  }
}

let soon = null;
function refreshSoon() {
  if (soon === null) soon = setTimeout(() => { soon = null; refresh(); }, 100);
}

function start() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  token = fragment.get("token") || sessionStorage.getItem("trioctl.token");
  if (fragment.has("token")) {
    sessionStorage.setItem("trioctl.token", token);
    history.replaceState(null, "", location.pathname + location.search);
  }
  $("#login").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("#token").value.trim();
    sessionStorage.setItem("trioctl.token", token);
    connect();
  });
  if (token) connect();
  else $("#login").hidden = false;
  setInterval(() => { if (ws && ws.readyState === WebSocket.OPEN) refresh(); }, REFRESH_MS);
}

start();
