/* One search: Pareto scatter, strategy of the hovered/clicked candidate, hypervolume, candidate table. */
"use strict";
(() => {
  const { api, esc, num, pct, statusBadge, bar, el, chart, legend, marker, seqColor, intervalText, costText, savingText } = ddsm;
  ddsm.header("");
  const id = Number(location.pathname.split("/").filter(Boolean).pop());
  const PAGE = 15;
  const st = { search: null, detail: null, sig: "", pinned: null, hover: null, sortKey: "id", sortDir: 1, page: 0, x: null };
  const $ = (sel) => document.querySelector(sel);
  const errorBox = $("#error");
  const PICK = "#d62728", KNEE = "#ff7f0e", FRONT = "#1d2330", UNIFORM = "#7a8496", SELECTED = "#2458c6";

  const byId = () => Object.fromEntries(st.detail.candidates.map((c) => [c.id, c]));
  // x axes of the scatter: the search's objective is its front's (GFLOPs, or predicted ms for objective
  // latency); the others are shown where the candidates have them
  const AXES = { gflops: ["GFLOPs", "GFLOPs per generated image (sum over all sampler steps)"],
                 predicted_ms: ["predicted latency", "predicted latency per generated image (ms, latency table)"],
                 latency_s: ["measured latency", "measured latency per image (s)"] };
  const ownAxis = () => (st.detail.objective === "latency" ? "predicted_ms" : "gflops");
  const fullCost = () => (st.detail.objective === "latency" ? st.detail.full_predicted_ms : st.detail.full_gflops);
  // saved vs full width in the search's objective
  const saved = (c) => (c.cost !== null && c.cost !== undefined && fullCost() ? 1 - c.cost / fullCost() : null);
  const xLabel = () => AXES[st.x][1];
  const fidLabel = () => ddsm.fidLabel(st.detail.extractor);
  const signed = (v) => (v === null || v === undefined ? "–" : `${v >= 0 ? "+" : ""}${Number(v).toFixed(2)}`);
  const widthsText = (g) => g.map((i) => ddsm.widthLabel(st.detail.widths[i])).join(" ");

  // ------------------------------------------------------------------ header and summary
  function imagesText(cfg) {
    // multi-fidelity: each rung's rows are candidates of phase rung0, rung1, ... (the top one: search)
    if (!cfg.rungs || !cfg.rungs.length) return `${cfg.n_images} images per candidate`;
    // searches stored before rung_metric existed were ranked by the rung's FID
    const metric = cfg.rung_metric === "paired" ? "paired distance to full width" : "the rung's FID";
    return `multi-fidelity rungs ${[...cfg.rungs, cfg.n_images].join(" → ")} images (best ${pct(cfg.promote, 0)} promoted per rung by ${metric} and cost; only top-rung candidates enter the front)`;
  }
  // how the pick is chosen (the search's pick_rule); until a tolerance search's finalists are measured
  // the pick so far is the weighted one (argmin FID + weight × cost of the front so far)
  function pickRuleText(d, pick) {
    const weighted = `argmin FID + ${d.weight} × ${d.objective === "latency" ? "predicted ms/image" : "GFLOPs/image"}`;
    if (d.pick_rule !== "tolerance") return `pick = ${weighted}`;
    const rule = `pick = the cheapest front member of equal quality (paired interval vs full width within
      ${+(100 * d.tolerance).toFixed(2)}% of its FID, found by bisection)`;
    return pick && !pick.final ? `${rule}; pick so far = ${weighted}` : `${rule}; weighted pick = ${weighted}`;
  }
  // a finished search's finalists as the strategy files `ddsm search` writes (the report's `final`)
  function strategyFiles(s) {
    const names = s.status === "COMPLETE" && s.result && s.result.final ? Object.keys(s.result.final) : [];
    if (!names.length) return "";
    const links = names.map((n) => `<a href="/searches/${id}/strategies/${encodeURIComponent(n)}"
      download="search-${id}-${esc(n)}.json">${esc(n)}.json</a>`);
    return `<br><span id="strategy-files">strategy files: ${links.join(" · ")}</span>`;
  }
  // How the paired interval was made (ddsm_core.paired.interval_method); older results are bootstraps.
  function pairedHow(p) {
    return p.method === "subsample"
      ? `subsample, ${Math.floor(p.n_images / 2)} of ${p.n_images}`
      : `bootstrap, ${p.n_images}`;
  }
  function renderSummary() {
    const s = st.search, d = st.detail, p = s.progress, cfg = s.config, c = p.candidates;
    document.title = `ddsm search #${s.id} ${s.name}`;
    $("#title").innerHTML = `Search #${s.id} ${esc(s.name)} ${statusBadge(s.status)}`;
    const pick = d.pick;
    const pickText = pick
      ? `<span id="pick-text">${pick.final ? "pick" : "pick so far"}: saves <b>${savingText(pick)}</b>
         (${costText(pick, d.objective)}), ${esc(fidLabel())} <b>${num(pick.fid, 4)}</b></span>` +
        (pick.final_fid !== null && pick.final_fid !== undefined ? `, re-evaluated on ${pick.final_n_images} images: <b>${num(pick.final_fid, 4)}</b>` : "") +
        (intervalText(pick.intervals) ? ` (${esc(intervalText(pick.intervals))})` : "") +
        (pick.paired ? `<br><span id="pick-paired">vs full width on the same seeds: ΔFID <b>${signed(pick.paired.diff)}</b>
          [${signed(pick.paired.low)}, ${signed(pick.paired.high)}] (${Math.round(100 * pick.paired.level)}% ${pairedHow(pick.paired)} images):
          ${pick.paired.equal_quality ? "equal quality" : "not equal"} at tolerance ${num(pick.paired.tolerance)}</span>` : "") +
        (pick.floor ? ` <span id="pick-floor" class="muted">· real-data floor ${num(pick.floor.fid, 4)} (${pick.floor.n_images} ${esc(pick.floor.split)} images)</span>` : "")
      : "no evaluated candidate yet";
    $("#summary").innerHTML =
      `${esc(d.sampler)}, ${d.steps} steps, widths ${d.widths.map(ddsm.widthLabel).join(" / ")}, population ${cfg.population},
       ${cfg.generations} generations, ${imagesText(cfg)}; objective <b id="objective">${esc(d.unit)}</b>:
       <span id="pick-rule">${pickRuleText(d, pick)}</span>.<br>
       ${bar(p.percent)} &nbsp; generation ${p.generations_done} / ${p.generations} &nbsp;·&nbsp; candidates: ${c.COMPLETE} complete,
       ${c.RUNNING} running, ${c.WAITING} waiting, ${c.FAILED} failed &nbsp;·&nbsp; ${pickText}` +
      (s.error ? `<br><span style="color: var(--bad)">${esc(s.error)}</span>` : "") + strategyFiles(s);
    $("#cancel").disabled = ddsm.TERMINAL.includes(s.status);
    $("#resume").disabled = !["CANCELLED", "FAILED"].includes(s.status);
    $("#report-link").href = `/searches/${id}/report`;
    $("#report-link").style.display = s.status === "COMPLETE" ? "" : "none";
    $("#fid-col").textContent = fidLabel();
  }

  // ------------------------------------------------------------------ Pareto scatter
  function renderPareto() {
    const d = st.detail;
    const all = d.candidates.filter((c) => c.phase === "search" && c.state === "COMPLETE" && c.fid !== null && c.cost !== null);
    const axes = Object.keys(AXES).filter((k) => k === ownAxis() || all.some((c) => c[k] !== null));
    const options = axes.map((k) => `<option value="${k}">${AXES[k][0]}${k === ownAxis() ? " (objective)" : ""}</option>`).join("");
    if ($("#x-axis").innerHTML !== options) $("#x-axis").innerHTML = options;
    $("#x-choice").style.display = axes.length > 1 ? "" : "none";
    if (!axes.includes(st.x)) st.x = ownAxis();
    $("#x-axis").value = st.x;
    const pts = all.filter((c) => c[st.x] !== null);
    const svg = $("#pareto");
    const xsv = pts.map((c) => c[st.x]), ysv = pts.map((c) => c.fid);
    const pad = (lo, hi) => { const r = (hi - lo) || Math.abs(hi) || 1; return [lo - 0.05 * r, hi + 0.05 * r]; };
    const [xlo, xhi] = pts.length ? pad(Math.min(...xsv), Math.max(...xsv)) : [0, 1];
    let [ylo, yhi] = pts.length ? pad(Math.min(...ysv), Math.max(...ysv)) : [0, 1];
    if (pts.length && Math.min(...ysv) >= 0) ylo = Math.max(0, ylo); // an FID is never negative
    const c = chart(svg, { width: 690, height: 440, legendWidth: 130,
      x: { label: xLabel(), lo: xlo, hi: xhi }, y: { label: fidLabel(), lo: ylo, hi: yhi } });
    const gens = [...new Set(pts.map((p) => p.generation))].sort((a, b) => a - b);
    const maxGen = Math.max(1, ...gens);
    const color = (g) => seqColor(g / maxGen);
    const cands = byId();
    // uniform widths: the baseline every searched strategy should beat
    const uni = d.uniform.map((u) => cands[u.candidate_id]).filter((u) => u && u[st.x] !== null).sort((a, b) => a[st.x] - b[st.x]);
    if (uni.length) {
      el("polyline", { class: "uniform-line", points: uni.map((u) => `${c.sx(u[st.x])},${c.sy(u.fid)}`).join(" "),
                       fill: "none", stroke: UNIFORM, "stroke-width": 1.5, "stroke-dasharray": "5 4" }, c.data);
      d.uniform.forEach((u) => {
        const cand = cands[u.candidate_id];
        if (!cand || cand[st.x] === null) return;
        marker(c.data, "square", c.sx(cand[st.x]), c.sy(cand.fid), UNIFORM, 6);
        el("text", { x: c.sx(cand[st.x]) + 7, y: c.sy(cand.fid) - 7, fill: UNIFORM, "font-size": 11, "pointer-events": "none" }, c.data, `w ${ddsm.widthLabel(u.width)}`);
      });
    }
    // the front (non-dominated in the search's objective) as a staircase: a point dominates everything
    // up and to the right of it, on its own axis only
    const front = d.front.map((i) => cands[i]).filter((f) => f && f[st.x] !== null).sort((a, b) => a[st.x] - b[st.x]);
    if (front.length && st.x === ownAxis()) {
      let path = `M${c.sx(front[0][st.x])} ${c.sy(front[0].fid)}`;
      for (const f of front.slice(1)) path += `H${c.sx(f[st.x])}V${c.sy(f.fid)}`;
      el("path", { class: "front-line", d: path, fill: "none", stroke: FRONT, "stroke-width": 1.5 }, c.data);
    }
    for (const p of pts) {
      const dot = el("circle", { class: "cand", cx: c.sx(p[st.x]), cy: c.sy(p.fid), r: 5, fill: color(p.generation),
                                 "data-id": p.id, "data-generation": p.generation }, c.data);
      el("title", {}, dot, `candidate ${p.id}, generation ${p.generation}: ${costText(p, d.objective)}, FID ${num(p.fid, 4)}`);
    }
    for (const [name, shape, col] of [["pick", "ring", PICK], ["knee", "diamond", KNEE]]) {
      const m = cands[d.marked[name]];
      if (!m || m[st.x] === null) continue;
      const g = el("g", { class: `mark-${name}`, "pointer-events": "none" }, c.data);
      marker(g, shape, c.sx(m[st.x]), c.sy(m.fid), col, 6);
      const same = d.marked.pick === d.marked.knee;
      if (same && name === "knee") continue; // one label for both
      const [dx, dy, anchor] = name === "pick" ? [-11, -10, "end"] : [11, 18, "start"]; // apart when close
      el("text", { x: c.sx(m[st.x]) + dx, y: c.sy(m.fid) + dy, fill: col, "font-weight": 600, "text-anchor": anchor }, g,
         same ? "pick = knee" : name);
    }
    el("g", { id: "selection", "pointer-events": "none" }, c.data);
    const items = [];
    const shown = gens.length <= 8 ? gens : [gens[0], ...gens.slice(1, -1).filter((_, i, a) => i % Math.ceil(a.length / 6) === 0), gens[gens.length - 1]];
    for (const g of shown) items.push({ label: `generation ${g}`, color: color(g) });
    items.push({ label: "uniform widths", color: UNIFORM, shape: "dash" });
    if (st.x === ownAxis()) items.push({ label: "Pareto front", color: FRONT, shape: "line" });
    items.push({ label: d.pick && d.pick.final ? "pick" : "pick so far", color: PICK, shape: "ring" });
    items.push({ label: "knee", color: KNEE, shape: "diamond" });
    legend(c, items, "candidates");
    const failed = d.candidates.filter((x) => x.phase === "search" && x.state === "FAILED").length;
    $("#pareto-note").textContent = `${pts.length} evaluated candidates` + (failed ? `, ${failed} failed (not drawn)` : "") +
      (d.marked.knee === undefined ? "; the knee is marked once the search is complete" : "");
    svg.onmouseover = (ev) => { if (ev.target.classList.contains("cand")) { st.hover = Number(ev.target.dataset.id); showStrategy(); } };
    svg.onmouseout = (ev) => { if (ev.target.classList.contains("cand")) { st.hover = null; showStrategy(); } };
    svg.onclick = (ev) => { if (ev.target.classList.contains("cand")) { st.pinned = Number(ev.target.dataset.id); showStrategy(); renderTable(); } };
    st.scale = c;
  }

  // ------------------------------------------------------------------ strategy of one candidate
  function showStrategy() {
    const d = st.detail, cands = byId();
    const cid = st.hover ?? st.pinned ?? d.marked.pick ?? null;
    const svg = $("#strategy"), info = $("#strategy-info");
    const sel = document.getElementById("selection");
    if (sel) sel.innerHTML = "";
    const cand = cands[cid];
    if (!cand) { svg.innerHTML = ""; info.innerHTML = `<span class="note">no candidate selected</span>`; return; }
    const label = cid === d.marked.pick ? " (pick)" : cid === d.marked.knee ? " (knee)" : "";
    ddsm.strategyPlot(svg, d.widths, cand.genome, { title: `candidate ${cand.id}${label}, generation ${cand.generation}` });
    info.dataset.candidate = cand.id;
    info.innerHTML = `${costText(cand, d.objective)} (saved ${pct(saved(cand))}), ${esc(fidLabel())} ${num(cand.fid, 4)}
      · <a href="/candidates/${cand.id}/strategy" download="strategy-${cand.id}.json">strategy JSON</a>`;
    if (sel && st.scale && cand[st.x] !== null && cand.fid !== null && cand.state === "COMPLETE") {
      marker(sel, "ring", st.scale.sx(cand[st.x]), st.scale.sy(cand.fid), SELECTED, 4);
    }
  }

  // ------------------------------------------------------------------ hypervolume
  function renderHypervolume() {
    const hv = st.detail.hypervolume, svg = $("#hypervolume");
    const gens = hv.map((h) => h.generation);
    const hi = Math.max(0.1, ...hv.map((h) => h.hypervolume));
    $("#hv-cost").textContent = st.detail.objective === "latency" ? "predicted ms/image" : "GFLOPs/image";
    const c = chart(svg, { width: 440, height: 190,
      x: { label: "generation", lo: Math.min(0, ...gens) - 0.5, hi: Math.max(1, ...gens) + 0.5, ticks: gens.length ? gens : [0] },
      y: { label: "hypervolume", lo: 0, hi: hi * 1.1 } });
    if (!hv.length) { el("text", { x: c.m.left + 20, y: c.m.top + 30 }, c.data, "no completed generation yet"); return; }
    el("polyline", { points: hv.map((h) => `${c.sx(h.generation)},${c.sy(h.hypervolume)}`).join(" "), fill: "none", stroke: SELECTED, "stroke-width": 2 }, c.data);
    for (const h of hv) {
      const dot = el("circle", { class: "hv-point", cx: c.sx(h.generation), cy: c.sy(h.hypervolume), r: 3.5, fill: SELECTED }, c.data);
      el("title", {}, dot, `generation ${h.generation}: ${num(h.hypervolume, 4)} (front of ${h.front_size} of ${h.evaluated} evaluated)`);
    }
  }

  // The finalists' grids: the first images of their final evaluation, the same seeds in every grid.
  function renderSamples() {
    const box = $("#samples"), g = st.detail.sample_grids;
    if (!g) {
      box.dataset.shown = "";
      box.innerHTML = st.search.status !== "COMPLETE"
        ? `<span class="note">The sample grids of the finalists (pick, weighted pick, knee, full width) appear when the search is COMPLETE
          (the workers draw them while evaluating the finalists).</span>`
        : `<span class="note">No sample grids were stored: the evaluator drew no images (the fast evaluator draws none)
          or the finalists failed. Draw them from the <a href="/searches/${id}/strategies/pick">pick's strategy</a>
          with <code>ddsm sample</code>.</span>`;
      return;
    }
    const sig = JSON.stringify(g);
    if (box.dataset.shown === sig) return;
    box.dataset.shown = sig;
    const cands = byId();
    const names = { pick: "pick", weighted: "weighted pick", full: "full width", knee: "knee" };
    const order = ["pick", "weighted", "full", "knee"].filter((n) => g.grids[n]);
    box.innerHTML = `<div class="muted">The first images of each finalist's final evaluation, seeds ${g.seeds[0]} to
      ${g.seeds[1]}${g.held_out ? " (held out: the search ranked its candidates on other seeds)" : ""}: image <i>i</i>
      has the same seed, so the same noise, in every grid; only the widths differ.</div>
      <div class="row">${order.map((n) => {
        const c = cands[g.grids[n].candidate_id] || {};
        const save = saved(c) !== null ? ` (saves ${pct(saved(c))})` : "";
        return `<figure class="sample-grid" data-which="${n}"><img alt="samples of the ${names[n]}">
          <figcaption><b>${names[n]}</b>: ${costText(c, st.detail.objective)}${save}, ${esc(fidLabel())} ${num(c.fid, 4)}
          (${c.n_images} images)<br><code>${widthsText(g.grids[n].genome)}</code></figcaption></figure>`;
      }).join("")}</div>`;
    for (const n of order) ddsm.showImage(box.querySelector(`figure[data-which='${n}'] img`), g.grids[n].url);
  }

  // ------------------------------------------------------------------ candidate table
  function renderTable() {
    const rows = st.detail.candidates.map((c) => ({ ...c, saved: saved(c) }));
    const k = st.sortKey, dir = st.sortDir;
    rows.sort((a, b) => {
      const x = a[k], y = b[k];
      if (x === y) return a.id - b.id;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * dir;
    });
    const pages = Math.max(1, Math.ceil(rows.length / PAGE));
    st.page = Math.min(st.page, pages - 1);
    const shown = rows.slice(st.page * PAGE, (st.page + 1) * PAGE);
    $("#candidates tbody").innerHTML = shown.map((c) => `<tr class="clickable${c.id === st.pinned ? " selected" : ""}" data-id="${c.id}">
      <td class="num">${c.id}</td><td class="num">${c.generation}</td><td>${esc(c.phase)}</td><td>${statusBadge(c.state)}</td>
      <td class="num">${num(c.gflops, 4)}</td><td class="num">${num(c.predicted_ms, 4)}</td><td class="num">${pct(c.saved)}</td>
      <td class="num">${num(c.fid, 4)}</td>
      <td class="num">${c.n_images}</td><td>${esc(c.worker || "–")}</td><td class="num">${c.attempt}</td>
      <td><code>${widthsText(c.genome)}</code></td><td class="muted">${esc((c.error || "").slice(0, 60))}</td></tr>`).join("");
    $("#page-info").textContent = `page ${st.page + 1} of ${pages} (${rows.length} candidates)`;
    $("#prev").disabled = st.page === 0;
    $("#next").disabled = st.page >= pages - 1;
    document.querySelectorAll("#candidates th.sortable").forEach((th) => {
      const base = th.textContent.replace(/ [▲▼]$/, "");
      th.textContent = th.dataset.key === k ? `${base} ${dir > 0 ? "▲" : "▼"}` : base;
    });
  }

  $("#candidates thead").addEventListener("click", (ev) => {
    const th = ev.target.closest("th.sortable");
    if (!th) return;
    st.sortDir = st.sortKey === th.dataset.key ? -st.sortDir : 1;
    st.sortKey = th.dataset.key;
    st.page = 0;
    renderTable();
  });
  $("#candidates tbody").addEventListener("click", (ev) => {
    const tr = ev.target.closest("tr[data-id]");
    if (!tr) return;
    st.pinned = Number(tr.dataset.id);
    showStrategy();
    renderTable();
  });
  $("#prev").addEventListener("click", () => { st.page -= 1; renderTable(); });
  $("#next").addEventListener("click", () => { st.page += 1; renderTable(); });
  $("#x-axis").addEventListener("change", (ev) => { st.x = ev.target.value; renderPareto(); showStrategy(); });

  async function act(what) {
    try {
      st.search = await api(`/searches/${id}/${what}`, { method: "POST" });
      ddsm.showMessage(errorBox, `search ${what === "cancel" ? "cancelled" : "resumed"}`, "info");
      await refresh();
    } catch (e) {
      ddsm.showMessage(errorBox, `${what} refused: ${e.message}`);
    }
  }
  $("#cancel").addEventListener("click", () => act("cancel"));
  $("#resume").addEventListener("click", () => act("resume"));

  async function refresh() {
    const [search, detail] = await Promise.all([api(`/searches/${id}`), api(`/ui/data/searches/${id}`)]);
    const sig = JSON.stringify([search.status, search.progress, detail]);
    st.search = search;
    if (sig === st.sig) return true;
    st.sig = sig;
    st.detail = detail;
    renderSummary();
    renderPareto();
    showStrategy();
    renderHypervolume();
    renderSamples();
    renderTable();
    document.body.dataset.status = search.status; // lets a test wait for a state without parsing text
    return true;
  }
  ddsm.poll(refresh, 2000, errorBox);
})();
