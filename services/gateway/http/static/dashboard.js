// Tether dashboard: polls /api/overview every second and redraws; no build step, no dependencies.
"use strict";

const el = (tag, attrs = {}, text = "") => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== "") e.textContent = text;
  return e;
};

function fillTable(id, rows, cells, attrs) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows.map((r) => {
    const tr = el("tr", attrs ? attrs(r) : {});
    for (const [text, cls] of cells(r)) tr.appendChild(el("td", cls ? { class: cls } : {}, String(text ?? "")));
    return tr;
  }));
}

const pct = (x) => (x === null || x === undefined ? "–" : `${(x * 100).toFixed(1)}%`);

function kpis(s) {
  const items = [["requests", s.requests], ["success rate", pct(s.successRate)],
    ["throttle rate", pct(s.throttleRate)], ["shed rate", pct(s.shedRate)], ["stale-cache rate", pct(s.staleCacheRate)], ["gateways", s.gateways]];
  document.getElementById("kpis").replaceChildren(...items.map(([label, value]) => {
    const d = el("div", { class: "kpi", "data-kpi": label });
    d.append(el("b", {}, String(value)), el("span", {}, label));
    return d;
  }));
}

function svgEl(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function throughput(series) {
  const svg = document.getElementById("throughput");
  const max = Math.max(1, ...series.map((p) => p[1]));
  const pts = series.map((p, i) => `${(i / Math.max(1, series.length - 1)) * 600},${150 - (p[1] / max) * 140}`);
  const label = svgEl("text", { x: 4, y: 12, "font-size": 11, fill: "#6b7280" });
  label.textContent = `max ${max}/s`;
  svg.replaceChildren(svgEl("polyline", { points: pts.join(" "), fill: "none", stroke: "#2563eb", "stroke-width": 2 }), label);
}

function latency(byModel) {
  const svg = document.getElementById("latency");
  const models = Object.entries(byModel);
  const max = Math.max(1, ...models.map(([, v]) => v.p95 || 0));
  const w = 600 / Math.max(1, models.length);
  const parts = [];
  models.forEach(([name, v], i) => {
    const x = i * w;
    for (const [key, color, off] of [["p50", "#2563eb", 0.1], ["p95", "#93c5fd", 0.5]]) {
      const h = ((v[key] || 0) / max) * 120;
      parts.push(svgEl("rect", { x: x + w * off, y: 135 - h, width: w * 0.35, height: h, fill: color, "data-model": name }));
    }
    const t = svgEl("text", { x: x + 4, y: 152, "font-size": 11, fill: "#1d2330" });
    t.textContent = `${name} p50 ${v.p50 ?? "–"} p95 ${v.p95 ?? "–"}`;
    parts.push(t);
  });
  svg.replaceChildren(...parts);
}

function render(d) {
  kpis(d.slis);
  throughput(d.slis.throughput);
  latency(d.slis.latencyMs);
  fillTable("nodes", d.workers, (w) => [[w.workerId], [w.health + (w.draining ? " (draining)" : ""), w.health], [w.tier],
    [w.region], [w.models.map((m) => `${m.modelId}:${m.version} ${m.state}`).join(", ")], [`${w.queueDepth}/${w.capacity}`],
    [`${w.heartbeatAgeS}s`]], (w) => ({ "data-worker-id": w.workerId, "data-health": w.health }));
  fillTable("models", d.models, (m) => [[m.modelId + (m.aliasOf ? ` → ${m.aliasOf.modelId}` : "")], [m.version], [m.task],
    [m.replicas], [m.queueDepth]]);
  fillTable("jobs", d.jobs, (j) => [[j.jobId, "mono"], [j.tenantId], [`${j.modelId}:${j.version}`], [j.status, j.status],
    [j.attempts], [j.workerId]], (j) => ({ "data-job-id": j.jobId, "data-status": j.status }));
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

async function poll() {
  try {
    const r = await fetch("/api/overview", { cache: "no-store" });
    if (r.ok) render(await r.json());
    else document.getElementById("updated").textContent = `error ${r.status}`;
  } catch (e) {
    document.getElementById("updated").textContent = `disconnected (${e})`;
  }
  setTimeout(poll, 1000);
}
poll();
