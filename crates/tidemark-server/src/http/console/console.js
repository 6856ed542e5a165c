"use strict";
// The operator console's script, served as /console.js: the page's
// Content-Security-Policy runs no inline script. The state comes from the
// feed /v1/console/events once a second; flags, services and the schema
// are polled. The token is kept in sessionStorage and sent in a header.
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("tidemark-token") || "";
$("token").value = token ? "••••••" : "";
let isAdmin = false;

function headers() { const h = {"content-type": "application/json"}; if (token) h.authorization = "Bearer " + token; return h; }
// The token the server last refused (401): the pollers wait for another
// one (or for the feed to be let in) instead of being refused every 2 s.
let refusedToken = null;
async function api(method, path, body) {
  const r = await fetch(path, {method, headers: headers(), body: body ? JSON.stringify(body) : undefined});
  if (r.status === 401) refusedToken = token;
  const j = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((j.error && j.error.message) || r.statusText);
  return j;
}

// One row per key, kept across refreshes: a cell's text is written only
// when it changed, new rows are added and gone ones removed, so a button
// found before a refresh is still the one on the page, and focus stays.
// `setup(tr, item)` adds what a row holds besides its text cells, once;
// `update(tr, item)` runs on every refresh.
function syncRows(tbody, items, keyOf, cellsOf, setup, update) {
  const old = new Map();
  for (const tr of tbody.rows) old.set(tr.dataset.key, tr);
  const seen = new Set();
  let at = tbody.firstElementChild;
  for (const item of items) {
    const key = String(keyOf(item));
    if (seen.has(key)) continue;
    seen.add(key);
    const cells = cellsOf(item).map((v) => (v === null || v === undefined ? "" : String(v)));
    let tr = old.get(key);
    if (tr) {
      old.delete(key);
    } else {
      tr = document.createElement("tr");
      tr.dataset.key = key;
      for (const _ of cells) tr.append(document.createElement("td"));
      if (setup) setup(tr, item);
    }
    cells.forEach((v, i) => { if (tr.cells[i].textContent !== v) tr.cells[i].textContent = v; });
    if (update) update(tr, item);
    if (tr === at) at = at.nextElementSibling; else tbody.insertBefore(tr, at);
  }
  for (const tr of old.values()) tr.remove();
}
function setText(id, v) { const s = v === null || v === undefined ? "–" : String(v); if ($(id).textContent !== s) $(id).textContent = s; }

// The chart: [server unix ms, remaining], oldest first. The server's
// samples since the recovery began (the feed's `progress`), then one per
// state, stamped with the server's clock (`now_ms`), so the whole series
// is on one time line. Past CHART_MAX every other point is dropped: the
// whole recovery stays in view.
const chartSamples = [];
const CHART_MAX = 1200;
function addSample(t, v) {
  const last = chartSamples[chartSamples.length - 1];
  chartSamples.push([last && t < last[0] ? last[0] : t, v]);
  if (chartSamples.length > CHART_MAX) {
    const end = chartSamples.length - 1;
    const kept = chartSamples.filter((_, i) => i % 2 === 0 || i === end);
    chartSamples.length = 0;
    chartSamples.push(...kept);
  }
}
function drawChart() {
  const c = $("chart"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  if (chartSamples.length < 2) return;
  const max = Math.max(1, ...chartSamples.map(([, v]) => v));
  g.strokeStyle = "#f5b84a"; g.lineWidth = 2; g.beginPath();
  const t0 = chartSamples[0][0], span = Math.max(1, chartSamples[chartSamples.length - 1][0] - t0);
  chartSamples.forEach(([t, v], i) => {
    const x = (t - t0) * c.width / span, y = c.height - 4 - v * (c.height - 8) / max;
    i ? g.lineTo(x, y) : g.moveTo(x, y);
  });
  g.stroke();
}

function renderCluster(s) {
  if (s.term === undefined) {
    setText("term", null);
    setText("primary", "single instance (embedded engine; HA needs PostgreSQL)");
    syncRows($("members"), [], () => "", () => []);
    return;
  }
  setText("term", s.term);
  setText("primary", s.primary || "none online (failover in progress)");
  syncRows($("members"), s.members || [], (m) => m.url,
    (m) => [m.url, m.alive === false ? "down" : m.role, m.term, m.heartbeat_age_ms + " ms ago", m.version, m.quiesce ? "offline in " + m.quiesce.seconds_left + " s" : ""],
    (tr, m) => {
      const td = document.createElement("td"), b = document.createElement("button");
      b.type = "button"; b.textContent = "Promote"; b.className = "admin-only" + (isAdmin ? "" : " hidden");
      b.addEventListener("click", () => {
        if (!confirm("Make " + m.url + " the primary?")) return;
        api("POST", "/v1/cluster/promote", {url: m.url}).catch((e) => alert(e.message));
      });
      td.append(b); tr.append(td);
    },
    (tr, m) => { tr.querySelector("button").hidden = m.role !== "standby" || m.alive === false; });
}

// The quiesce countdown ticks from the seconds the server said were left
// when the state arrived: the browser's clock may be off the server's.
let offlineAt = null;
function tickQuiesce() {
  if (offlineAt === null) { setText("quiesce", "none"); return; }
  const left = Math.max(0, Math.round((offlineAt - Date.now()) / 1000));
  setText("quiesce", left > 0 ? "offline in " + left + " s" : "offline");
}

function render(s) {
  if (!s || s.error) { showServerError(s && s.error); return; }
  const now = s.now_ms ?? Date.now();
  const st = s.state || "–";
  // A server past its quiesce deadline is offline, whatever its data's state.
  const offline = s.quiesce && s.quiesce.seconds_left === 0;
  setText("state", offline ? "offline (" + st + ")" : st);
  $("state").className = "big state-" + (offline ? "offline" : st);
  setText("role", s.role ? "· " + s.role : "");
  setText("epoch", s.epoch); setText("seq", s.seq);
  setText("schema", s.schema_version); setText("store", s.store); setText("boot", s.boot);
  const r = s.recovery || {};
  setText("flagged", r.flagged); setText("cleared", r.cleared);
  setText("remaining", r.remaining);
  setText("waiting", (r.waiting_for_sources || []).join(", ") || null);
  if (r.estimated_end && r.remaining > 0) {
    const end = Date.parse(r.estimated_end);
    const secs = Math.max(0, Math.round((end - now) / 1000));
    // Shown on the browser's clock, counted on the server's.
    setText("eta", "in " + secs + " s (" + new Date(Date.now() + end - now).toLocaleTimeString() + ")");
  } else {
    setText("eta", st === "recovering" ? "not yet known" : null);
  }
  const pct = st === "normal" || st === "recovered" ? 100 : (r.flagged ? Math.round(100 * (r.cleared || 0) / r.flagged) : 0);
  $("progress").style.width = pct + "%";
  addSample(now, r.remaining || 0);
  // Rate: the fall from the highest point of the last 10 s, while keys
  // remain (a finished recovery has none; a long wait before the replay
  // is not spread over it).
  const recent = chartSamples.filter(([t]) => now - t <= 10000);
  const peak = recent.reduce((a, b) => (b[1] >= a[1] ? b : a), recent[0] || [now, 0]);
  const rate = r.remaining > 0 && now > peak[0] ? (peak[1] - r.remaining) / ((now - peak[0]) / 1000) : 0;
  setText("rate", rate > 0 ? rate.toFixed(1) + " keys/s" : null);
  drawChart();
  renderCluster(s);
  const q = s.quiesce;
  offlineAt = q ? Date.now() + 1000 * q.seconds_left : null;
  $("quiesce-message").textContent = q ? q.message : "";
  tickQuiesce();
  setStatus("live");
}
function setStatus(text, stale) {
  $("status-line").textContent = text;
  $("status-line").classList.toggle("stale", !!stale);
}
// The server could not read its state (e.g. PostgreSQL unreachable during
// a failover): the page keeps the last good values and says why.
function showServerError(err) {
  setStatus("server: " + ((err && err.message) || "the state could not be read") + " (showing the last state received)", true);
}

// Paging of flagged keys happens on the server (a million flags stay
// responsive): a stack of cursors, the first one empty. Only the answer to
// the latest request is shown.
let flagCursors = [""], flagRequest = 0;
async function refreshFlags() {
  const mine = ++flagRequest;
  try {
    const q = $("flag-search").value;
    const after = flagCursors[flagCursors.length - 1];
    let path = "/v1/recovery/flags?limit=50";
    if (q) path += "&prefix=" + encodeURIComponent(q);
    if (after) path += "&after=" + encodeURIComponent(after);
    const f = await api("GET", path);
    if (mine !== flagRequest) return;
    syncRows($("flags"), f.flags || [], (x) => x.table + "/" + x.key, (x) => [x.table, x.key, x.source, x.through_seq]);
    $("flags-next").disabled = !f.next;
    $("flags-next").dataset.next = f.next || "";
    $("flags-prev").disabled = flagCursors.length < 2;
    $("flags-first").disabled = flagCursors.length < 2;
    setText("flags-page", "page " + flagCursors.length + " · " + (f.remaining ?? 0) + " flagged in all");
  } catch (e) { /* the feed's status line says what is wrong */ }
}
// S8, by name: a service server is quiesced through this DB server, which
// sends the notice down its watch stream (or has the instance of a cluster
// that holds the stream send it; one connected nowhere is refused).
function serviceActions(tr, x) {
  const td = document.createElement("td");
  const send = document.createElement("button"), cancel = document.createElement("button");
  send.type = cancel.type = "button";
  send.textContent = "Quiesce…"; cancel.textContent = "Cancel notice";
  send.className = "svc-quiesce admin-only" + (isAdmin ? "" : " hidden");
  cancel.className = "svc-cancel admin-only" + (isAdmin ? "" : " hidden");
  const path = "/v1/services/" + encodeURIComponent(x.name) + "/quiesce";
  send.addEventListener("click", () => {
    const text = (prompt("Take service server " + x.name + " offline in how many seconds? Its users are told.", "300") || "").trim();
    if (text === "") return;
    const seconds = Number(text);
    if (!Number.isInteger(seconds) || seconds < 0) { alert("give a whole number of seconds, 0 or more"); return; }
    api("POST", path, {seconds}).then(refreshServices).catch((e) => alert(e.message));
  });
  cancel.addEventListener("click", () => api("DELETE", path).then(refreshServices).catch((e) => alert(e.message)));
  td.append(send, " ", cancel);
  tr.append(td);
}
async function refreshServices() {
  try {
    const list = await api("GET", "/v1/services");
    syncRows($("services"), list, (x) => x.name,
      (x) => [x.name, x.policy, x.cache_entries, x.schema_version, x.connected ? "connected" : "not here",
        x.quiesce ? (x.quiesce.seconds_left > 0 ? "offline in " + x.quiesce.seconds_left + " s" : "offline") : ""],
      serviceActions);
  } catch (e) { /* the feed's status line says what is wrong */ }
}
async function refreshSchema() {
  try {
    const p = await api("GET", "/v1/schema/publish");
    setText("schema-current", "version " + p.current_version + (p.complete ? " (every connected server runs it)" : ""));
    setText("schema-pending", p.pending_version ? "version " + p.pending_version + " staged" : "none");
    const j = p.job;
    setText("schema-job", j ? j.kind + " " + j.from_version + " → " + j.to_version + ": " + j.step + (j.error ? " (" + j.error + ")" : "") : "none");
    const w = $("schema-warnings"), warnings = p.warnings || [];
    if ([...w.children].map((li) => li.textContent).join("\n") !== warnings.join("\n")) {
      w.replaceChildren(...warnings.map((text) => { const li = document.createElement("li"); li.textContent = text; return li; }));
    }
    const lagging = p.lagging || [];
    syncRows($("schema-servers"), p.servers || [], (x) => x.name, (x) => [x.name, x.version ?? "?", x.connected ? "yes" : "no"],
      null, (tr, x) => tr.classList.toggle("lagging", lagging.includes(x.name)));
  } catch (e) { /* the feed's status line says what is wrong */ }
}

// Server-sent events over fetch, so the token goes in a header. A feed
// silent for FEED_SILENCE_MS (the server sends a state a second and a
// keep-alive every 15 s) is taken for dead (a crashed host, a laptop that
// slept) and opened again; a new token opens it again at once.
const FEED_SILENCE_MS = 20000;
let feed = null, wakeFeed = null, reconnectNow = false;
function restartFeed() {
  reconnectNow = true;
  if (feed) feed.abort(new Error("the token changed"));
  if (wakeFeed) wakeFeed();
}
function pauseFeed(ms) {
  return new Promise((done) => {
    const t = setTimeout(done, ms);
    wakeFeed = () => { clearTimeout(t); done(); };
  }).finally(() => { wakeFeed = null; });
}
async function stream() {
  for (;;) {
    const ctrl = new AbortController();
    feed = ctrl;
    reconnectNow = false;
    let silence = 0, wait = 1000;
    const watch = () => {
      clearTimeout(silence);
      silence = setTimeout(() => ctrl.abort(new Error("no data for " + FEED_SILENCE_MS / 1000 + " s")), FEED_SILENCE_MS);
    };
    try {
      watch();
      const r = await fetch("/v1/console/events", {headers: headers(), signal: ctrl.signal});
      if (r.status === 401) {
        wait = 5000;
        // A revoked token: its actions go too (the server refuses them).
        if (isAdmin && token) { isAdmin = false; showAdmin(); $("token-state").textContent = "token refused: no actions"; }
        throw new Error(token ? "the token was refused; enter a token above" : "enter a token above (reader or admin)");
      }
      if (!r.ok) { const j = await r.json().catch(() => ({})); throw new Error((j.error && j.error.message) || r.statusText); }
      refusedToken = null;
      setStatus("connected");
      const reader = r.body.getReader(), dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) throw new Error("the server closed the feed");
        watch();
        buf += dec.decode(value, {stream: true});
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const ev = buf.slice(0, i); buf = buf.slice(i + 2);
          const lines = ev.split("\n");
          const kind = (lines.find((l) => l.startsWith("event:")) || "event: message").slice(6).trim();
          const data = lines.filter((l) => l.startsWith("data:")).map((l) => l.slice(5)).join("\n");
          if (!data) continue;
          if (kind === "progress") {
            // The server's samples since the recovery started.
            chartSamples.length = 0;
            for (const [t, v] of JSON.parse(data)) addSample(t, v);
            drawChart();
          } else if (kind === "error") {
            showServerError(JSON.parse(data).error);
          } else if (kind === "state") {
            render(JSON.parse(data));
          }
        }
      }
    } catch (e) {
      const why = ctrl.signal.aborted && ctrl.signal.reason instanceof Error ? ctrl.signal.reason : e;
      if (!reconnectNow) setStatus(why.message.startsWith("enter a token") || why.message.startsWith("the token was refused") ? why.message : "reconnecting: " + why.message, true);
    } finally {
      clearTimeout(silence);
      ctrl.abort();
    }
    if (!reconnectNow) await pauseFeed(wait);
  }
}

// Pollers never overlap (a tick is skipped while the last request runs).
// They go on in a hidden tab: a page behind another must be current when
// it is looked at, and a browser slows hidden timers by itself.
function poll(fn, ms) {
  let busy = false;
  const tick = async () => {
    if (busy || (refusedToken !== null && refusedToken === token)) return;
    busy = true;
    try { await fn(); } finally { busy = false; }
  };
  setInterval(tick, ms);
  tick();
}

function showAdmin() {
  for (const el of document.querySelectorAll(".admin")) el.classList.toggle("hidden", !isAdmin);
  for (const el of document.querySelectorAll(".admin-only")) el.classList.toggle("hidden", !isAdmin);
}
// Actions show only for a token the server takes for an admin's
// (GET /v1/whoami); the server checks every action again anyway.
async function checkToken() {
  const asked = token;
  let text = "";
  try {
    const w = await api("GET", "/v1/whoami");
    if (asked !== token) return;
    // Actions need a typed admin token, even in protected mode (the page
    // then shows data only): a browser acts only as someone.
    isAdmin = !!token && w.role === "admin";
    if (!token) text = w.protected ? "protected mode: create an admin token ('tidemark token create') and enter it to act here" : "";
    else if (w.role === "admin") text = "admin";
    else if (w.role) text = "not an admin token: no actions";
    else text = "token refused: no actions";
  } catch (e) {
    if (asked !== token) return;
    isAdmin = false;
    text = "could not check the token: " + e.message;
  }
  $("token-state").textContent = text;
  showAdmin();
}
$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const v = $("token").value.trim();
  if (v === "••••••") { checkToken(); return; }
  // An empty submit signs out.
  const changed = v !== token;
  token = v;
  if (v) sessionStorage.setItem("tidemark-token", v); else sessionStorage.removeItem("tidemark-token");
  $("token").value = v ? "••••••" : "";
  checkToken();
  if (changed) { restartFeed(); refreshFlags(); refreshServices(); refreshSchema(); }
});
$("flags-next").addEventListener("click", () => { const n = $("flags-next").dataset.next; if (n) { flagCursors.push(n); refreshFlags(); } });
$("flags-prev").addEventListener("click", () => { if (flagCursors.length > 1) { flagCursors.pop(); refreshFlags(); } });
$("flags-first").addEventListener("click", () => { flagCursors = [""]; refreshFlags(); });
let searchTimer = 0;
$("flag-search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => { flagCursors = [""]; refreshFlags(); }, 250);
});
$("schema-publish").addEventListener("click", () => {
  if (confirm("Publish the staged schema to every instance and service server?")) {
    api("POST", "/v1/schema/publish").then(refreshSchema).catch((e) => alert(e.message));
  }
});
$("schema-rollback").addEventListener("click", () => {
  if (confirm("Roll the schema back to the previous version (refused if the newer one holds data)?")) {
    api("POST", "/v1/schema/rollback").then(refreshSchema).catch((e) => alert(e.message));
  }
});
$("q-send").addEventListener("click", () => {
  // A notice is cancelled as easily (Cancel), so only one that takes the
  // server offline at once is confirmed; an empty field is not 0 (S4: users
  // are told ahead of time).
  const text = $("q-secs").value.trim();
  const seconds = Number(text);
  if (text === "" || !Number.isInteger(seconds) || seconds < 0) {
    alert("give the seconds until the server goes offline: a whole number, 0 or more");
    return;
  }
  if (seconds === 0 && !confirm("Take this server offline now, with no warning to its users?")) return;
  api("POST", "/v1/quiesce", {seconds, message: $("q-msg").value || undefined}).catch((e) => alert(e.message));
});
$("q-cancel").addEventListener("click", () => api("DELETE", "/v1/quiesce").catch((e) => alert(e.message)));
$("abort").addEventListener("click", () => {
  const reason = $("abort-reason").value.trim();
  if (!reason) { alert("give a reason first"); return; }
  if (confirm("Abort the recovery? Every flag is dropped and outdated records will be served as current.")) {
    api("POST", "/v1/recovery/abort", {reason}).catch((e) => alert(e.message));
  }
});
checkToken();
setInterval(tickQuiesce, 1000);
poll(refreshFlags, 2000);
poll(refreshSchema, 2000);
poll(refreshServices, 2000);
stream();
