/* The fronts of several searches on one plot (ids from ?ids=1,2 or the checkboxes). */
"use strict";
(() => {
  const { api, esc, el, chart, legend, marker, CATEGORICAL } = ddsm;
  ddsm.header("compare");
  const $ = (sel) => document.querySelector(sel);
  const params = new URLSearchParams(location.search);
  const chosen = new Set((params.get("ids") || "").split(",").filter(Boolean).map(Number));
  let searches = [];

  async function draw() {
    const ids = searches.filter((s) => chosen.has(s.id)).map((s) => s.id);
    history.replaceState(null, "", `/ui/compare?ids=${ids.join(",")}`);
    const views = await Promise.all(ids.map((i) => api(`/searches/${i}`)));
    const info = Object.fromEntries(searches.map((s) => [s.id, s]));
    const extractors = [...new Set(ids.map((i) => info[i].extractor))];
    const warn = $("#extractor-warning");
    if (extractors.length > 1) {
      ddsm.showMessage(warn, `These searches measured FID with different extractors (${extractors.join("; ")}): their FIDs are not comparable.`);
    } else { warn.className = "msg"; warn.textContent = ""; }
    const pts = views.flatMap((v) => v.front);
    const xs = pts.map((p) => p.gflops), ys = pts.map((p) => p.fid);
    const pad = (lo, hi) => { const r = (hi - lo) || Math.abs(hi) || 1; return [lo - 0.05 * r, hi + 0.05 * r]; };
    const [xlo, xhi] = pts.length ? pad(Math.min(...xs), Math.max(...xs)) : [0, 1];
    let [ylo, yhi] = pts.length ? pad(Math.min(...ys), Math.max(...ys)) : [0, 1];
    if (pts.length && Math.min(...ys) >= 0) ylo = Math.max(0, ylo); // an FID is never negative
    const ylabel = extractors.length === 1 ? ddsm.fidLabel(extractors[0]) : "FID (extractors differ, see the warning)";
    const c = chart($("#fronts"), { width: 880, height: 520, legendWidth: 200,
      x: { label: "GFLOPs per generated image (sum over all sampler steps)", lo: xlo, hi: xhi }, y: { label: ylabel, lo: ylo, hi: yhi } });
    const items = [];
    views.forEach((v, k) => {
      const col = CATEGORICAL[k % CATEGORICAL.length];
      const front = [...v.front].sort((a, b) => a.gflops - b.gflops);
      if (!front.length) return;
      let d = `M${c.sx(front[0].gflops)} ${c.sy(front[0].fid)}`;
      for (const f of front.slice(1)) d += `H${c.sx(f.gflops)}V${c.sy(f.fid)}`;
      el("path", { class: "front", "data-search": v.id, d, fill: "none", stroke: col, "stroke-width": 2 }, c.data);
      for (const f of front) el("circle", { cx: c.sx(f.gflops), cy: c.sy(f.fid), r: 3.5, fill: col }, c.data);
      const pick = v.result && v.result.pick;
      // results.json's pick (ddsm_core.results): objectives = [FID, GFLOPs]
      if (pick && pick.objectives) marker(c.data, "ring", c.sx(pick.objectives[1]), c.sy(pick.objectives[0]), col, 5);
      items.push({ label: `#${v.id} ${v.name}`.slice(0, 26), color: col, shape: "line" });
    });
    if (!views.length) el("text", { x: c.m.left + 20, y: c.m.top + 30 }, c.data, "choose searches on the left");
    legend(c, items, "search (front)");
  }

  async function init() {
    searches = (await api("/ui/data/overview")).sort((a, b) => b.id - a.id);
    $("#choices").innerHTML = searches.map((s) => `<label style="display: block"><input type="checkbox" data-id="${s.id}"
      ${chosen.has(s.id) ? "checked" : ""}> #${s.id} ${esc(s.name)} <span class="muted">${esc(s.status)}, ${esc(s.sampler)}-${s.steps}</span></label>`).join("")
      || `<span class="note">no searches yet</span>`;
    $("#choices").addEventListener("change", (ev) => {
      const i = Number(ev.target.dataset.id);
      if (ev.target.checked) chosen.add(i); else chosen.delete(i);
      draw().catch((e) => ddsm.showMessage($("#error"), e.message));
    });
    await draw();
  }
  init().catch((e) => ddsm.showMessage($("#error"), e.message));
})();
