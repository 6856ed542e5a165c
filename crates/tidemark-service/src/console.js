"use strict";
// The service server's console script, served as /console.js (the page's
// Content-Security-Policy runs no inline script). It polls this server's
// own state once a second, one request at a time (also in a hidden tab:
// the page must be current when it is looked at); the countdown ticks locally from the seconds the server last
// said were left (the browser's clock may be off the server's). When a
// poll fails, the page keeps the last values and says so.
const $ = (id) => document.getElementById(id);
let offlineAt = null, busy = false;
function tick() {
  if (offlineAt === null) { $("quiesce").textContent = "none"; return; }
  const left = Math.max(0, Math.round((offlineAt - Date.now()) / 1000));
  const text = left > 0 ? "offline in " + left + " s" : "offline";
  if ($("quiesce").textContent !== text) $("quiesce").textContent = text;
}
function status(text, stale) {
  $("status-line").textContent = text;
  $("status-line").classList.toggle("stale", !!stale);
}
async function refresh() {
  if (busy) return;
  busy = true;
  try {
    const r = await fetch("/v1/state");
    const s = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error((s.error && s.error.message) || r.statusText);
    $("id").textContent = "· " + s.id;
    $("policy").textContent = s.policy;
    $("cache").textContent = s.cache_entries;
    $("db").textContent = s.db;
    $("connected").textContent = s.connected ? "connected" : "disconnected";
    $("connected").className = s.connected ? "ok" : "bad";
    $("epoch").textContent = s.db_epoch;
    $("schema").textContent = s.schema_version;
    offlineAt = s.quiesce_in === null || s.quiesce_in === undefined ? null : Date.now() + 1000 * s.quiesce_in;
    // The message of the notice the countdown is of: the sooner of this
    // server's own (S8) and the DB server's.
    const dbn = s.quiesce && s.quiesce.notice, own = s.own_quiesce;
    const n = own && (!dbn || own.ms_left <= dbn.ms_left) ? own : dbn;
    $("quiesce-message").textContent = offlineAt !== null && n ? n.message : "";
    status("live");
    tick();
  } catch (e) {
    status("reconnecting: " + e.message + " (showing the last state received)", true);
  } finally {
    busy = false;
  }
}
document.addEventListener("visibilitychange", refresh);
refresh();
setInterval(refresh, 1000);
setInterval(tick, 250);
