/* The fronts of several searches on one plot (ids from ?ids=1,2 or the checkboxes). */
"use strict";
(() => {
  const { api, esc, el, chart, legend, marker, CATEGORICAL } = ddsm;
  ddsm.header("compare");
  const $ = (sel) => document.querySelector(sel);
  const params = new URLSearchParams(location.search);
  const chosen = new Set((params.get("ids") || "").split(",").filter(Boolean).map(Number));
  let searches = [];
  // the cost axis: "" lets the API choose (the searches' shared objective, else GFLOPs with a note)
  $("#axis").value = ["gflops", "latency"].includes(params.get("axis")) ? params.get("axis") : "";
  const X_LABELS = { gflops: "GFLOPs per generated image (sum over all sampler steps)",
                     latency: "predicted latency per generated image (ms, latency table)" };
  const SHORT = { gflops: "GFLOPs", latency: "ms" };

  // The fronts, hypervolumes and shared reference point come from GET /searches/compare (the same
  // numbers as `ddsm compare`); the page only draws them.
  async function draw() {
    const ids = searches.filter((s) => chosen.has(s.id)).map((s) => s.id);
    const axis = $("#axis").value;
    const query = `ids=${ids.join(",")}${axis ? `&axis=${axis}` : ""}`;
    history.replaceState(null, "", `/ui/compare?${query}`);
    const warn = $("#extractor-warning"), note = $("#axis-note");
    warn.className = "msg"; warn.textContent = "";
    note.className = "msg"; note.textContent = "";
    let body = { searches: [], extractor: null, reference: null, axis: axis || "gflops" };
    if (ids.length) {
      try {
        body = await api(`/searches/compare?${query}`);
      } catch (e) { // 422: FIDs from different extractors, an axis a search lacks; 409: no front yet
        ddsm.showMessage(warn, `Cannot compare: ${e.message}`);
      }
    }
    // searches of different objectives are compared in the unit they share: the API says so
    if (body.note) ddsm.showMessage(note, `Compared in ${body.unit}: ${body.note}`, "info");
    const info = Object.fromEntries(searches.map((s) => [s.id, s]));
    const pts = body.searches.flatMap((v) => v.front);
    if (body.reference) pts.push(body.reference);
    const xs = pts.map((p) => p.cost), ys = pts.map((p) => p.fid);
    const pad = (lo, hi) => { const r = (hi - lo) || Math.abs(hi) || 1; return [lo - 0.05 * r, hi + 0.05 * r]; };
    const [xlo, xhi] = pts.length ? pad(Math.min(...xs), Math.max(...xs)) : [0, 1];
    let [ylo, yhi] = pts.length ? pad(Math.min(...ys), Math.max(...ys)) : [0, 1];
    if (pts.length && Math.min(...ys) >= 0) ylo = Math.max(0, ylo); // an FID is never negative
    const ylabel = body.extractor ? ddsm.fidLabel(body.extractor) : "FID";
    const c = chart($("#fronts"), { width: 880, height: 520, legendWidth: 200,
      x: { label: X_LABELS[body.axis], lo: xlo, hi: xhi }, y: { label: ylabel, lo: ylo, hi: yhi } });
    // the pick (from the overview) on the comparison's axis: GFLOPs, or its predicted ms
    const pickCost = (p) => (body.axis === "latency" ? p.predicted_ms : p.gflops);
    const items = [];
    body.searches.forEach((v, k) => {
      const col = CATEGORICAL[k % CATEGORICAL.length];
      const front = [...v.front].sort((a, b) => a.cost - b.cost);
      if (!front.length) return;
      let d = `M${c.sx(front[0].cost)} ${c.sy(front[0].fid)}`;
      for (const f of front.slice(1)) d += `H${c.sx(f.cost)}V${c.sy(f.fid)}`;
      el("path", { class: "front", "data-search": v.id, d, fill: "none", stroke: col, "stroke-width": 2 }, c.data);
      for (const f of front) el("circle", { cx: c.sx(f.cost), cy: c.sy(f.fid), r: 3.5, fill: col }, c.data);
      const pick = info[v.id] && info[v.id].pick;
      if (pick && pickCost(pick) !== null && pickCost(pick) !== undefined) {
        marker(c.data, "ring", c.sx(pickCost(pick)), c.sy(pick.fid), col, 5);
      }
      items.push({ label: `#${v.id} ${info[v.id] ? info[v.id].name : ""}`.slice(0, 26), color: col, shape: "line" });
    });
    if (body.reference) {
      marker(c.data, "diamond", c.sx(body.reference.cost), c.sy(body.reference.fid), "#5b6474", 5);
      items.push({ label: "reference point", color: "#5b6474", shape: "diamond" });
    }
    if (!ids.length) el("text", { x: c.m.left + 20, y: c.m.top + 30 }, c.data, "choose searches on the left");
    legend(c, items, "search (front)");
    $("#hv-table tbody").innerHTML = body.searches.map((v) => `<tr data-id="${v.id}"><td>#${v.id} ${esc(info[v.id] ? info[v.id].name : "")}</td>
      <td class="num">${v.n_points}</td><td class="num">${ddsm.num(v.hypervolume, 4)}</td>
      <td class="num">${ddsm.num(v.normalized, 4)}</td><td class="num">${ddsm.num(v.min_cost, 4)}</td>
      <td class="num">${ddsm.num(v.min_fid, 4)}</td></tr>`).join("");
    $("#min-cost").textContent = `min ${SHORT[body.axis]}`;
    $("#hv-ref").textContent = body.reference
      ? `reference point (${ddsm.num(body.reference.cost, 4)} ${SHORT[body.axis]}, FID ${ddsm.num(body.reference.fid, 4)}): 1.1 x the worst of all fronts, in ${body.unit}`
      : "";
  }

  async function init() {
    searches = (await api("/ui/data/overview")).sort((a, b) => b.id - a.id);
    $("#choices").innerHTML = searches.map((s) => `<label style="display: block"><input type="checkbox" data-id="${s.id}"
      ${chosen.has(s.id) ? "checked" : ""}> #${s.id} ${esc(s.name)} <span class="muted">${esc(s.status)}, ${esc(s.sampler)}-${s.steps}</span></label>`).join("")
      || `<span class="note">no searches yet</span>`;
    $("#axis").addEventListener("change", () => draw().catch((e) => ddsm.showMessage($("#error"), e.message)));
    $("#choices").addEventListener("change", (ev) => {
      const i = Number(ev.target.dataset.id);
      if (ev.target.checked) chosen.add(i); else chosen.delete(i);
      draw().catch((e) => ddsm.showMessage($("#error"), e.message));
    });
    await draw();
  }
  init().catch((e) => ddsm.showMessage($("#error"), e.message));
})();
