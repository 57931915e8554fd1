// The acestream-edge dashboard: polls /proxy/status?history=1 and /proxy/engines every 2 s and
// renders them, and the channel list (/proxy/channels, with the checker's findings) every 10 s. No build step, no CDN: uPlot (sparklines) and hls.js (preview) are served by the
// proxy itself. With an admin token, it is asked once, kept in sessionStorage and sent as a
// Bearer header (never in a URL).
"use strict";

const TOKEN_KEY = "acestream-edge-token";
const POLL_MS = 2000;
const charts = new Map(); // content id -> uPlot
const $ = (id) => document.getElementById(id);
let hls = null;

function headers() {
  const t = sessionStorage.getItem(TOKEN_KEY);
  return t ? { Authorization: "Bearer " + t } : {};
}

async function getJson(path) {
  const r = await fetch(path, { headers: headers(), cache: "no-store" });
  if (r.status === 401 || r.status === 403) {
    const body = await r.json().catch(() => ({}));
    throw { auth: true, message: body.error || "admin token needed" };
  }
  if (!r.ok) throw { message: path + ": HTTP " + r.status };
  return r.json();
}

function mbps(bps) { return (bps / 1e6).toFixed(2) + " Mbit/s"; }
function duration(s) {
  s = Math.floor(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? h + "h " + m + "m" : m ? m + "m " + (s % 60) + "s" : s + "s";
}
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function phaseText(s) {
  if (s.phase === "lingering" && s.linger_seconds != null) {
    return "lingering (" + Math.max(0, Math.ceil(s.linger_seconds - s.idle_seconds)) + " s left)";
  }
  return s.phase;
}

function chartFor(s, box) {
  const h = s.history || [];
  const data = [h.map((p) => p[0] / 1000), h.map((p) => p[1] / 1e6), h.map((p) => p[2] / 1e6)];
  let u = charts.get(s.stream_id);
  if (u && u.root.parentNode !== box) { u.destroy(); u = null; }
  if (!u) {
    u = new uPlot({
      width: Math.min(box.clientWidth || 600, 900), height: 140,
      legend: { show: true, live: false }, cursor: { show: false },
      axes: [
        { stroke: "#8d96a0", grid: { show: false }, values: (u, ts) => ts.map((t) => new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })) },
        { size: 48, label: "Mbit/s", stroke: "#8d96a0", grid: { stroke: "rgba(128,128,128,.2)" } },
      ],
      series: [{ label: "time" }, { label: "ingest (from the engine), Mbit/s", stroke: "#3b82f6", width: 1.5 }, { label: "egress (to viewers, all together), Mbit/s", stroke: "#22c55e", width: 1.5 }],
    }, data, box);
    charts.set(s.stream_id, u);
  } else {
    u.setData(data);
  }
  box.dataset.points = String(h.length);
}

// A session's ingest and egress in bit/s, from its byte counters: since this page's previous
// poll, or on the first render since the session was created (the history's samples are two
// seconds apart and its first may predate the first viewer's bytes).
const seenBytes = new Map();
function rates(s) {
  const now = Date.now();
  const prev = seenBytes.get(s.stream_id);
  const from = prev || { t: Date.parse(s.created_at), i: 0, o: 0 };
  const secs = (now - from.t) / 1000;
  // Polls closer than half a second keep the last figure (too short to measure).
  const enough = prev ? secs >= 0.5 : secs > 0.05;
  if (!prev || enough) seenBytes.set(s.stream_id, { t: now, i: s.bytes_in, o: s.bytes_out, r: prev ? prev.r : null });
  const kept = seenBytes.get(s.stream_id);
  if (!enough) return kept.r || [0, 0];
  kept.r = [Math.max(0, s.bytes_in - from.i) * 8 / secs, Math.max(0, s.bytes_out - from.o) * 8 / secs];
  return kept.r;
}

// The spread of the viewers' lag behind the live edge ("lag 0.2–14.5 s"), empty without viewers.
function lagSpread(clients) {
  const lags = clients.map((c) => c.lag_seconds).filter((x) => x != null);
  if (!lags.length) return "";
  const lo = Math.min(...lags), hi = Math.max(...lags);
  return "lag " + (hi - lo < 0.1 ? hi.toFixed(1) : lo.toFixed(1) + "–" + hi.toFixed(1)) + " s";
}

function renderSession(s, engines) {
  const id = s.stream_id;
  const card = el("div", { class: "session", "data-id": id });
  const short = id.slice(0, 8) + "…" + id.slice(-4);
  const stats = s.engine_stats;
  const last = (s.history || []).slice(-1)[0];
  card.append(el("div", { class: "top" },
    el("span", { class: "id", title: id + " (click to copy)", onclick: () => navigator.clipboard && navigator.clipboard.writeText(id) }, short),
    el("span", { class: "phase " + s.phase }, phaseText(s)),
    el("span", {}, "engine " + (s.engine_host ? s.engine_host + ":" + s.engine_port : "–")),
    el("span", { class: "clients" }, s.client_count + " client" + (s.client_count === 1 ? "" : "s")),
    el("span", { class: "muted lag", title: "how far behind the live edge its viewers are: least – most" }, lagSpread(s.clients)),
    el("span", { class: "muted" }, "first byte " + (s.first_byte_ms != null ? s.first_byte_ms + " ms" : "–")),
    el("span", { class: "muted dvr", title: "DVR: how far back viewers can rewind (offset=-<s>), and its size on disk" },
      s.dvr_seconds > 0 ? "rewind " + duration(s.dvr_seconds) + " (" + (s.dvr_bytes / 1e6).toFixed(0) + " MB)" : ""),
    el("span", { class: "muted" }, "failovers " + s.failovers),
    el("span", { class: "muted" }, last ? "in " + mbps(last[1]) + " · out " + mbps(last[2]) : ""),
    stats ? el("span", { class: "muted" }, "engine: " + (stats.status || "?") + ", " + (stats.peers ?? "?") + " peers, " + (stats.speed_down ?? "?") + " KB/s") : "",
    el("button", { type: "button", class: "preview-button", onclick: () => preview(id) }, "preview"),
  ));
  const chart = el("div", { class: "chart" });
  card.append(chart);
  const clients = el("details", {}, el("summary", {}, "clients"));
  const table = el("table", {}, el("thead", {}, el("tr", {}, ...["address", "protocol", "connected", "bytes", "lag"].map((h) => el("th", {}, h)))));
  const body = el("tbody");
  for (const c of s.clients) {
    body.append(el("tr", {}, el("td", {}, c.address || "–"), el("td", {}, c.protocol), el("td", {}, duration(c.connected_seconds)),
      el("td", {}, (c.bytes_sent / 1e6).toFixed(1) + " MB"), el("td", {}, c.lag_seconds.toFixed(1) + " s" + (c.dvr ? " (DVR)" : ""))));
  }
  table.append(body);
  clients.append(table);
  card.append(clients);
  return [card, chart];
}

function render(status, engines) {
  $("uptime").textContent = duration(status.uptime_seconds);
  $("version").textContent = "v" + status.version;
  $("sessions-count").textContent = status.sessions.length;
  let ts = 0, hlsN = 0, inBps = 0, outBps = 0;
  const rate = new Map();
  for (const s of status.sessions) {
    for (const c of s.clients) c.protocol === "hls" ? hlsN++ : ts++;
    const [i, o] = rates(s);
    rate.set(s.stream_id, o);
    inBps += i; outBps += o;
  }
  for (const id of [...seenBytes.keys()]) if (!rate.has(id)) seenBytes.delete(id);
  // The sessions people watch first (most viewers), then by how much they send.
  const sessions = [...status.sessions].sort((x, y) => (y.client_count - x.client_count) || (rate.get(y.stream_id) - rate.get(x.stream_id)));
  $("clients-count").textContent = ts + " / " + hlsN;
  $("egress").textContent = mbps(outBps);
  $("ingest").textContent = mbps(inBps);
  const box = $("sessions");
  const open = new Set([...box.querySelectorAll("details[open]")].map((d) => d.closest(".session").dataset.id));
  box.replaceChildren();
  if (!status.sessions.length) box.append(el("p", { class: "empty" }, "No session."));
  const seen = new Set();
  for (const s of sessions) {
    const [card, chart] = renderSession(s, engines);
    if (open.has(s.stream_id)) card.querySelector("details").open = true;
    box.append(card);
    chartFor(s, chart);
    seen.add(s.stream_id);
  }
  for (const [id, u] of charts) if (!seen.has(id)) { u.destroy(); charts.delete(id); }
  const tbody = $("engines").querySelector("tbody");
  tbody.replaceChildren(...engines.engines.map((e) => el("tr", {},
    el("td", {}, e.address),
    el("td", { class: e.healthy ? "ok health" : "bad health" }, e.healthy ? "healthy" : "unhealthy" + (e.not_candidate ? " (" + e.not_candidate + ")" : "")),
    el("td", {}, e.forwarded ? "yes" : "no"),
    el("td", {}, e.active_streams),
    el("td", {}, e.score),
    el("td", {}, e.recently_failed ? "recently failed" : "–"))));
}

const CHANNELS_EVERY_MS = 10000;
let channels = null; // the last /proxy/channels answer
let channelsAt = 0;

function channelStatus(c) {
  if (!c.health) return "unchecked";
  return c.health.alive ? "alive" : "dead";
}

function ago(unix) {
  return duration(Math.max(0, Date.now() / 1000 - unix)) + " ago";
}

function renderChannels() {
  const box = $("channels-box");
  if (!channels || !channels.count) { box.hidden = true; return; }
  box.hidden = false;
  const text = $("channels-filter").value.trim().toLowerCase();
  const status = $("channels-status").value;
  const shown = channels.channels.filter((c) => {
    const group = (c.attrs && c.attrs["group-title"]) || "";
    return (!text || c.name.toLowerCase().includes(text) || group.toLowerCase().includes(text))
      && (!status || channelStatus(c) === status);
  });
  const alive = channels.channels.filter((c) => channelStatus(c) === "alive").length;
  $("channels-count").textContent = "(" + shown.length + " of " + channels.count + ", " + alive + " alive)";
  $("channels").querySelector("tbody").replaceChildren(...shown.map((c) => {
    const st = channelStatus(c);
    const h = c.health || {};
    const logo = c.attrs && c.attrs["tvg-logo"];
    return el("tr", { class: "channel", "data-key": c.key, "data-status": st },
      el("td", {}, ...(logo ? [el("img", { src: logo, alt: "", loading: "lazy", referrerpolicy: "no-referrer" })] : []), c.name),
      el("td", {}, (c.attrs && c.attrs["group-title"]) || "–"),
      el("td", { class: "status " + (st === "alive" ? "ok" : st === "dead" ? "bad" : "unchecked"), title: h.reason || "" },
        st === "alive" ? (h.from_session ? "alive (watched)" : "alive") : st === "dead" ? "not playing: " + (h.reason || "") : "not checked yet"),
      el("td", {}, h.first_byte_ms != null ? (h.first_byte_ms / 1000).toFixed(1) + " s" : "–"),
      el("td", {}, h.last_checked ? ago(h.last_checked) : "–"),
      el("td", {}, el("button", { type: "button", class: "play", onclick: () => preview(c.key) }, "play")));
  }));
}

async function pollChannels() {
  if (Date.now() - channelsAt < CHANNELS_EVERY_MS) return;
  channelsAt = Date.now();
  try {
    channels = await getJson("/proxy/channels");
  } catch (e) {
    channels = null;
  }
  renderChannels();
}

async function poll() {
  try {
    const [status, engines] = await Promise.all([getJson("/proxy/status?history=1"), getJson("/proxy/engines")]);
    $("login").hidden = true;
    $("main").hidden = false;
    render(status, engines);
    pollChannels();
  } catch (e) {
    if (e.auth) {
      $("main").hidden = true;
      $("login").hidden = false;
      $("login-error").textContent = sessionStorage.getItem(TOKEN_KEY) ? e.message : "";
    }
  }
}

// `id`: a content id, or a channel's key (`infohash:<hex>` for an infohash).
function preview(id) {
  const video = $("preview");
  $("preview-box").hidden = false;
  $("preview-box").scrollIntoView({ block: "start" });
  if (hls) hls.destroy();
  const [param, value] = id.startsWith("infohash:") ? ["infohash", id.slice(9)] : ["id", id];
  const src = "/ace/manifest.m3u8?" + param + "=" + encodeURIComponent(value);
  if (window.Hls && Hls.isSupported()) {
    hls = new Hls();
    hls.loadSource(src);
    hls.attachMedia(video);
    hls.on(Hls.Events.MANIFEST_PARSED, () => video.play().catch(() => {}));
  } else {
    video.src = src; // Safari plays HLS natively
    video.play().catch(() => {});
  }
}

$("channels-filter").addEventListener("input", renderChannels);
$("channels-status").addEventListener("change", renderChannels);
$("preview-close").addEventListener("click", () => {
  if (hls) { hls.destroy(); hls = null; }
  $("preview").removeAttribute("src");
  $("preview-box").hidden = true;
});
$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value);
  $("token").value = "";
  poll();
});
// The video's position, for tests and for a wall screen's watchdog.
setInterval(() => { $("preview").dataset.currentTime = $("preview").currentTime.toFixed(1); }, 500);
// `#preview=<id>` opens a session's preview at once (a deep link for a wall screen).
const deep = location.hash.match(/^#preview=([0-9a-fA-F]{40})$/);
if (deep) preview(deep[1]);
poll();
setInterval(poll, POLL_MS);
