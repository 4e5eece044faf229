/* ddsm dashboard: shared helpers (REST calls with the session's API key, formatting, SVG charts).
   Plain browser JavaScript, no build step and no outside requests. */
"use strict";

const ddsm = (() => {
  const KEY = "ddsm-api-key"; // sessionStorage only: gone when the browser tab closes
  const SVG_NS = "http://www.w3.org/2000/svg";
  const TERMINAL = ["COMPLETE", "FAILED", "CANCELLED"];

  function key() { return sessionStorage.getItem(KEY) || ""; }

  function errorText(status, data) {
    const detail = data && data.detail !== undefined ? data.detail : data;
    if (Array.isArray(detail)) {
      return `${status}: ` + detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`).join("; ");
    }
    return `${status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`;
  }

  async function api(path, opts = {}) {
    const headers = { Accept: "application/json" };
    if (key()) headers["X-API-Key"] = key();
    let body = opts.body;
    if (body !== undefined) { body = JSON.stringify(body); headers["Content-Type"] = "application/json"; }
    const r = await fetch(path, { method: opts.method || "GET", headers, body });
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
    if (!r.ok) { const e = new Error(errorText(r.status, data)); e.status = r.status; e.data = data; throw e; }
    return data;
  }

  // An image the API serves, fetched with the session's key (an <img src> cannot send it) and set on
  // img as an object URL; an image is immutable per URL, so it is fetched once.
  const images = new Map();
  async function showImage(img, path) {
    if (img.dataset.src === path) return;
    img.dataset.src = path;
    if (!images.has(path)) {
      const headers = key() ? { "X-API-Key": key() } : {};
      const r = await fetch(path, { headers });
      if (!r.ok) { img.alt = `${r.status}: ${path}`; delete img.dataset.src; return; }
      images.set(path, URL.createObjectURL(await r.blob()));
    }
    img.src = images.get(path);
  }

  function header(active) {
    const el = document.getElementById("top");
    const links = [["/", "Dashboard", "home"], ["/ui/searches/new", "New search", "new"],
                   ["/ui/compare", "Compare fronts", "compare"], ["/docs", "API docs", "docs"]];
    el.innerHTML = `<span class="brand">ddsm</span>` +
      links.map(([href, label, id]) => `<a href="${href}" class="${id === active ? "active" : ""}">${label}</a>`).join("") +
      `<form class="key" id="key-form"><span id="key-state"></span>
         <input id="api-key" type="password" placeholder="API key" autocomplete="off">
         <button type="submit" id="key-save">Use key</button>
         <button type="button" id="key-forget">Forget</button></form>`;
    const state = () => { el.querySelector("#key-state").textContent = key() ? "key set for this tab" : "no API key"; };
    el.querySelector("#key-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const v = el.querySelector("#api-key").value.trim();
      if (v) sessionStorage.setItem(KEY, v);
      el.querySelector("#api-key").value = "";
      state();
    });
    el.querySelector("#key-forget").addEventListener("click", () => { sessionStorage.removeItem(KEY); state(); });
    state();
  }

  // ------------------------------------------------------------------ formatting
  const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const num = (v, digits = 3) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toPrecision(digits));
  const pct = (v, digits = 1) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(digits)}%`);
  const statusBadge = (s) => `<span class="status ${esc(s)}">${esc(s)}</span>`;
  const bar = (p) => `<span class="bar" title="${p.toFixed(1)}%"><span style="width:${Math.min(100, p).toFixed(1)}%"></span></span> ${p.toFixed(0)}%`;
  const fidLabel = (extractor) => `FID (${extractor})`;
  const widthLabel = (w) => (Number.isInteger(w * 100) ? String(Number(w)) : w.toFixed(3));
  // A search's cost in its own objective first, the other unit beside it where known: GFLOPs per image
  // always, the latency table's predicted ms per image when the search has one. x: {gflops, predicted_ms}.
  function costText(x, objective) {
    const g = x.gflops !== null && x.gflops !== undefined ? `${num(x.gflops, 4)} GFLOPs` : null;
    const ms = x.predicted_ms !== null && x.predicted_ms !== undefined ? `${num(x.predicted_ms, 4)} ms (predicted)` : null;
    const [own, other] = objective === "latency" ? [ms, g] : [g, ms];
    return own ? `${own} per image${other ? ` · ${other}` : ""}` : "–";
  }
  const costName = (objective) => (objective === "latency" ? "predicted time" : "GFLOPs");
  // A pick's saving vs full width in its search's objective, the other unit's in brackets where known.
  function savingText(p) {
    const other = p.objective === "latency" ? ["GFLOPs", p.saving] : ["predicted time", p.latency_saving];
    return `${pct(p.cost_saving)} ${costName(p.objective)}` +
      (other[1] !== null && other[1] !== undefined ? ` <span class="muted">(${other[0]} ${pct(other[1])})</span>` : "");
  }
  function intervalText(intervals) {
    const entries = Object.entries(intervals || {});
    return entries.map(([k, [lo, hi]]) => `${k} [${num(lo)}, ${num(hi)}]`).join(", ");
  }

  // ------------------------------------------------------------------ SVG
  function el(tag, attrs = {}, parent = null, text = null) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) node.setAttribute(k, v);
    if (text !== null) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function niceTicks(lo, hi, count = 6) {
    if (!(hi > lo)) { const pad = Math.abs(lo) * 0.1 || 1; lo -= pad; hi += pad; }
    const raw = (hi - lo) / count;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
    const ticks = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toPrecision(12));
    return { lo: Math.floor(lo / step) * step, hi: Math.ceil(hi / step) * step, ticks };
  }

  // Axes, grid and labels; returns scales and a layer for the data. opts: {width, height, x: {label,
  // lo, hi, ticks?}, y: {...}, legendWidth}. Ticks are "nice" unless given.
  function chart(svg, opts) {
    svg.innerHTML = "";
    const W = opts.width, H = opts.height;
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("width", W);
    svg.setAttribute("height", H);
    const m = { left: 62, right: 16 + (opts.legendWidth || 0), top: opts.title ? 26 : 12, bottom: 44 };
    const xs = opts.x.ticks ? { lo: opts.x.lo, hi: opts.x.hi, ticks: opts.x.ticks } : niceTicks(opts.x.lo, opts.x.hi);
    const ys = opts.y.ticks ? { lo: opts.y.lo, hi: opts.y.hi, ticks: opts.y.ticks } : niceTicks(opts.y.lo, opts.y.hi);
    const pw = W - m.left - m.right, ph = H - m.top - m.bottom;
    const sx = (v) => m.left + ((v - xs.lo) / (xs.hi - xs.lo || 1)) * pw;
    const sy = (v) => m.top + ph - ((v - ys.lo) / (ys.hi - ys.lo || 1)) * ph;
    const grid = el("g", { class: "grid" }, svg);
    const axis = el("g", { class: "axis" }, svg);
    for (const t of xs.ticks) {
      el("line", { x1: sx(t), x2: sx(t), y1: m.top, y2: m.top + ph }, grid);
      el("line", { x1: sx(t), x2: sx(t), y1: m.top + ph, y2: m.top + ph + 4 }, axis);
      el("text", { x: sx(t), y: m.top + ph + 17, "text-anchor": "middle" }, axis, opts.x.format ? opts.x.format(t) : String(t));
    }
    for (const t of ys.ticks) {
      el("line", { x1: m.left, x2: m.left + pw, y1: sy(t), y2: sy(t) }, grid);
      el("line", { x1: m.left - 4, x2: m.left, y1: sy(t), y2: sy(t) }, axis);
      el("text", { x: m.left - 7, y: sy(t) + 4, "text-anchor": "end" }, axis, opts.y.format ? opts.y.format(t) : String(t));
    }
    el("rect", { x: m.left, y: m.top, width: pw, height: ph, fill: "none", stroke: "#8a93a3" }, axis);
    el("text", { class: "axis-label x-label", x: m.left + pw / 2, y: H - 8, "text-anchor": "middle" }, svg, opts.x.label);
    el("text", { class: "axis-label y-label", x: 0, y: 0, "text-anchor": "middle",
                 transform: `translate(15 ${m.top + ph / 2}) rotate(-90)` }, svg, opts.y.label);
    if (opts.title) el("text", { x: m.left, y: 17, "font-weight": 600 }, svg, opts.title);
    const data = el("g", { class: "data" }, svg);
    return { svg, data, sx, sy, m, pw, ph, W, H };
  }

  // A legend in the chart's right margin: items [{label, color, shape: "dot"|"line"|"dash"|"ring"|"diamond"|"square"}]
  function legend(c, items, title = null) {
    const g = el("g", { class: "legend" }, c.svg);
    let y = c.m.top + 6;
    const x = c.W - c.m.right + 14;
    if (title) { el("text", { x, y: y + 4, "font-weight": 600 }, g, title); y += 18; }
    for (const it of items) {
      marker(g, it.shape || "dot", x + 7, y, it.color);
      el("text", { x: x + 20, y: y + 4 }, g, it.label);
      y += 17;
    }
    return g;
  }

  function marker(parent, shape, x, y, color, size = 5) {
    switch (shape) {
      case "line": return el("line", { x1: x - 8, x2: x + 8, y1: y, y2: y, stroke: color, "stroke-width": 2 }, parent);
      case "dash": return el("line", { x1: x - 8, x2: x + 8, y1: y, y2: y, stroke: color, "stroke-width": 2, "stroke-dasharray": "4 3" }, parent);
      case "ring": return el("circle", { cx: x, cy: y, r: size + 3, fill: "none", stroke: color, "stroke-width": 2.5 }, parent);
      case "diamond": return el("path", { d: `M${x} ${y - size - 3}L${x + size + 3} ${y}L${x} ${y + size + 3}L${x - size - 3} ${y}Z`, fill: "none", stroke: color, "stroke-width": 2.5 }, parent);
      case "square": return el("rect", { x: x - size + 1, y: y - size + 1, width: 2 * size - 2, height: 2 * size - 2, fill: color }, parent);
      default: return el("circle", { cx: x, cy: y, r: size - 1, fill: color }, parent);
    }
  }

  // Sequential colours (viridis-like) for generations; categorical ones for searches.
  const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  function seqColor(t) {
    t = Math.max(0, Math.min(1, t)) * (VIRIDIS.length - 1);
    const i = Math.min(Math.floor(t), VIRIDIS.length - 2), f = t - i;
    const c = VIRIDIS[i].map((v, k) => Math.round(v + f * (VIRIDIS[i + 1][k] - v)));
    return `rgb(${c.join(",")})`;
  }
  const CATEGORICAL = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];

  // A strategy as a width-per-step line: x = sampler step (1 = the noisiest, on the left).
  function strategyPlot(svg, widths, genome, opts = {}) {
    const steps = genome.length;
    const c = chart(svg, {
      width: opts.width || 440, height: opts.height || 250, title: opts.title,
      x: { label: "sampler step (1 = noisiest)", lo: 0.5, hi: steps + 0.5, ticks: tickSteps(steps) },
      y: { label: "width (fraction of channels)", lo: 0, hi: 1.05, ticks: [0, 0.25, 0.5, 0.75, 1] },
    });
    el("line", { x1: c.sx(0.5), x2: c.sx(steps + 0.5), y1: c.sy(1), y2: c.sy(1), stroke: "#999", "stroke-dasharray": "4 3" }, c.data);
    const pts = genome.map((g, i) => `${c.sx(i + 1)},${c.sy(widths[g])}`);
    el("polyline", { class: "strategy-line", points: pts.join(" "), fill: "none", stroke: opts.color || "#2458c6", "stroke-width": 2 }, c.data);
    genome.forEach((g, i) => el("circle", { class: "strategy-step", cx: c.sx(i + 1), cy: c.sy(widths[g]), r: 3.5, fill: opts.color || "#2458c6" }, c.data));
    svg.dataset.genome = genome.join(",");
    return c;
  }
  function tickSteps(steps) {
    const every = Math.max(1, Math.ceil(steps / 10));
    const out = [1];
    for (let s = every; s <= steps; s += every) if (s !== 1) out.push(s);
    return out;
  }

  // Poll ``fn`` every ``ms`` until it returns false; a failing call shows its message and retries.
  function poll(fn, ms, errorEl) {
    let stopped = false;
    const tick = async () => {
      if (stopped) return;
      let again = true;
      try {
        again = (await fn()) !== false;
        if (errorEl && errorEl.dataset.source === "poll") { errorEl.className = "msg"; errorEl.textContent = ""; }
      } catch (e) {
        if (errorEl) { errorEl.className = "msg error"; errorEl.textContent = e.message; errorEl.dataset.source = "poll"; }
      }
      const stamp = document.getElementById("updated");
      if (stamp) stamp.textContent = `updated ${new Date().toLocaleTimeString()}${again ? ", refreshing every " + ms / 1000 + " s" : ""}`;
      if (again) setTimeout(tick, ms);
    };
    tick();
    return () => { stopped = true; };
  }

  function showMessage(elm, text, kind = "error") { elm.className = `msg ${kind}`; elm.textContent = text; elm.dataset.source = "action"; }

  return { api, showImage, key, header, esc, num, pct, statusBadge, bar, fidLabel, widthLabel, intervalText, costText,
           costName, savingText, el, chart,
           legend, marker, seqColor, CATEGORICAL, niceTicks, strategyPlot, poll, showMessage, TERMINAL };
})();
