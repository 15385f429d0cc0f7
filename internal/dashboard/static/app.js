// natserve dashboard: polls /api/state every second and draws the state
// and the charts (plain canvas, no library).
"use strict";

const $ = (sel) => document.querySelector(sel);
const colors = { rps: "#58a6ff", http: "#39c5cf", err: "#f85149", p50: "#3fb950", p99: "#bc8cff", grid: "#263240", text: "#7d8a99" };

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(k == null ? "" : String(k)));
  return e;
}
const num = (v, d = 1) => (v == null || isNaN(v)) ? "–" : Number(v).toFixed(d);
function dur(s) {
  if (!s) return "–";
  if (s < 60) return Math.floor(s) + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + Math.floor(s % 60) + "s";
  return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
}
const last = (a) => a && a.length ? a[a.length - 1] : {};
// The mean over the last n points (a steadier number than one second).
function recent(series, key, n = 5) {
  const s = (series || []).slice(-n);
  if (!s.length) return null;
  return s.reduce((a, p) => a + (p[key] || 0), 0) / s.length;
}

function row(tbody, key, cells) {
  let tr = tbody.querySelector(`tr[data-key="${CSS.escape(key)}"]`);
  if (!tr) { tr = el("tr", { "data-key": key }); tbody.append(tr); }
  tr.replaceChildren(...cells);
  tr.dataset.seen = "1";
  return tr;
}
function prune(tbody) {
  for (const tr of [...tbody.children]) { if (!tr.dataset.seen) tr.remove(); delete tr.dataset.seen; }
}

function drawChart(canvas, series, lines, unit) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * dpr; canvas.height = h * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  const left = 44, bottom = 16, top = 6;
  const now = Date.now(), span = 5 * 60 * 1000;
  let max = 0;
  for (const p of series) for (const l of lines) max = Math.max(max, p[l.key] || 0);
  max = max > 0 ? max * 1.15 : 1;
  g.strokeStyle = colors.grid; g.fillStyle = colors.text; g.font = "10px system-ui, sans-serif"; g.lineWidth = 1;
  for (let i = 0; i <= 3; i++) {
    const y = top + (h - top - bottom) * i / 3;
    g.beginPath(); g.moveTo(left, y); g.lineTo(w, y); g.stroke();
    g.fillText(num(max * (1 - i / 3), max < 10 ? 1 : 0) + unit, 2, y + 3);
  }
  for (let m = 0; m <= 5; m++) {
    const x = left + (w - left) * (1 - m / 5);
    const label = m === 0 ? "now" : `-${m}m`;
    g.fillText(label, Math.min(x - 10, w - g.measureText(label).width - 2), h - 3);
  }
  const X = (t) => left + (w - left) * (1 - (now - t) / span);
  const Y = (v) => top + (h - top - bottom) * (1 - v / max);
  for (const l of lines) {
    g.strokeStyle = l.color; g.lineWidth = 1.6; g.beginPath();
    let started = false;
    for (const p of series) {
      if (now - p.t > span) continue;
      const x = X(p.t), y = Y(p[l.key] || 0);
      if (started) g.lineTo(x, y); else { g.moveTo(x, y); started = true; }
    }
    g.stroke();
  }
}

function chartBox(name) {
  let box = document.getElementById("chart-" + name);
  if (!box) {
    box = el("div", { class: "chart", id: "chart-" + name },
      el("h3", {}, name),
      el("div", { class: "legend" }, legend([["req/s", colors.rps], ["HTTP req/s", colors.http], ["errors/s", colors.err]])),
      el("canvas", { class: "rate" }),
      el("div", { class: "legend" }, legend([["p50 ms", colors.p50], ["p99 ms", colors.p99]])),
      el("canvas", { class: "latency" }));
    $("#charts").append(box);
  }
  box.dataset.seen = "1";
  return box;
}
function legend(items) {
  const s = el("span");
  for (const [label, color] of items) {
    const b = el("b", {}, "■ "); b.style.color = color;
    s.append(b, label + "   ");
  }
  return s;
}

function render(st) {
  $("#clock").textContent = new Date(st.time).toLocaleTimeString();
  const alive = (st.nodes || []).filter((n) => n.alive).length;
  $("#summary").textContent = `${(st.deployments || []).length} deployments · ${alive}/${(st.nodes || []).length} nodes · ${st.ingresses} ingress(es) · controller ${st.leader || "–"}`;
  const err = $("#error");
  err.hidden = !st.error; err.textContent = st.error || "";

  const deps = $("#deployments tbody"), reps = $("#replicas tbody");
  for (const d of st.deployments || []) {
    const rps = recent(d.series, "rps"), p50 = last(d.series).p50_ms, p99 = last(d.series).p99_ms, eps = recent(d.series, "err_ps");
    const auto = d.autoscaling ? `target ${d.autoscaling.target}, ${num(d.autoscaling.ongoing_requests)} ongoing` : "–";
    const tr = row(deps, d.name, [
      el("td", {}, d.name), el("td", { class: "dim" }, d.class), el("td", {}, d.route || "–"),
      el("td", {}, el("span", { class: "status " + d.status, title: d.message || "" }, d.status)),
      el("td", { class: "num" }, `${d.ready}/${d.target}`),
      el("td", { class: "num rps" }, num(rps)), el("td", { class: "num" }, num(p50, 2)), el("td", { class: "num" }, num(p99, 2)),
      el("td", { class: "num" }, num(eps)),
      el("td", { class: "num requests" }, d.totals.requests), el("td", { class: "num errors" }, d.totals.errors),
      el("td", { class: "num http" }, d.totals.http),
      el("td", { class: "dim", title: (d.autoscaling && d.autoscaling.last_decision) || "" }, auto),
    ]);
    tr.dataset.deployment = d.name;
    for (const r of d.replicas || []) {
      row(reps, r.id, [el("td", {}, d.name), el("td", { class: "dim" }, r.id), el("td", {}, r.node), el("td", { class: "num" }, r.pid || "–"),
        el("td", {}, el("span", { class: "status " + r.state, title: r.error || "" }, r.state)), el("td", { class: "num" }, dur(r.uptime_s))]);
    }
    const box = chartBox(d.name);
    drawChart(box.querySelector("canvas.rate"), d.series || [], [{ key: "rps", color: colors.rps }, { key: "http_rps", color: colors.http }, { key: "err_ps", color: colors.err }], "");
    drawChart(box.querySelector("canvas.latency"), d.series || [], [{ key: "p50_ms", color: colors.p50 }, { key: "p99_ms", color: colors.p99 }], "");
  }
  prune(deps); prune(reps);
  for (const box of [...$("#charts").children]) { if (!box.dataset.seen) box.remove(); delete box.dataset.seen; }

  const nodes = $("#nodes tbody");
  for (const n of st.nodes || []) {
    row(nodes, n.name, [el("td", {}, n.name), el("td", { class: "dim" }, n.host), el("td", {}, el("span", { class: "status " + (n.alive ? "HEALTHY" : "FAILED") }, n.alive ? "yes" : "no")),
      el("td", { class: "num" }, n.max_replicas ? `${n.replicas}/${n.max_replicas}` : n.replicas), el("td", { class: "dim" }, (n.classes || []).join(", "))]);
  }
  prune(nodes);

  const evs = $("#events");
  evs.replaceChildren(...(st.events || []).slice(-50).reverse().map((e) =>
    el("li", { class: e.kind }, el("time", {}, new Date(e.time).toLocaleTimeString()), e.message)));
  if (!(st.events || []).length) evs.replaceChildren(el("li", { class: "dim" }, "no events since the dashboard started"));
}

async function poll() {
  try {
    const r = await fetch("api/state", { cache: "no-store", credentials: "same-origin" });
    if (r.status === 401) { $("#error").hidden = false; $("#error").textContent = "unauthorized: open the URL natserve printed (with ?token=…)"; return; }
    render(await r.json());
  } catch (e) {
    $("#error").hidden = false; $("#error").textContent = "dashboard unreachable: " + e;
  } finally {
    setTimeout(poll, 1000);
  }
}
poll();
