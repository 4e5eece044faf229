/* One training run: progress, per-width loss curves, eval losses of its last checkpoint, sample grids, cancel. */
"use strict";
(() => {
  const { api, esc, num, statusBadge, bar, el, chart } = ddsm;
  ddsm.header("");
  const id = Number(location.pathname.split("/").filter(Boolean).pop());
  const $ = (sel) => document.querySelector(sel);
  const errorBox = $("#error");
  let sig = "";

  function renderRun(r) {
    document.title = `ddsm training run #${r.id} ${r.name}`;
    $("#title").innerHTML = `Training run #${r.id} ${esc(r.name)} ${statusBadge(r.status)}`;
    const cfg = r.config || {};
    const net = r.supernet_id ? `, registered as supernet ${r.supernet_id}` : "";
    $("#summary").innerHTML = `${bar(r.progress)} &nbsp; step <b>${r.step}</b> of ${r.total_steps || "? (the preset's default)"}
      &nbsp;·&nbsp; attempt ${r.attempt} &nbsp;·&nbsp; worker ${esc(r.worker || "–")}${net}<br>
      preset <b>${esc(cfg.preset || "")}</b>, training overrides <code>${esc(JSON.stringify(cfg.train || {}))}</code>,
      model overrides <code>${esc(JSON.stringify(cfg.model || {}))}</code><br>
      created ${esc(r.created_at)}${r.started_at ? `, started ${esc(r.started_at)}` : ""}${r.ended_at ? `, ended ${esc(r.ended_at)}` : ""}` +
      (r.error ? `<br><span style="color: var(--bad)">${esc(r.error)}</span>` : "");
    $("#cancel").disabled = ddsm.TERMINAL.includes(r.status);
  }

  // One line per width: the training loss of its share of the sandwich rule, from the uploaded log.
  function renderCurves(lc) {
    const box = $("#curves");
    if (!lc || !lc.steps.length) {
      box.innerHTML = `<span class="note">No loss log uploaded yet: the worker uploads it with each checkpoint and at
        most every minute.</span>`;
      return;
    }
    box.innerHTML = `<svg id="loss-curves" role="img" aria-label="loss curves"></svg>
      <div class="muted">Training loss (MSE of the predicted noise) of each width, on each logged step's batch${lc.logged > lc.steps.length
        ? `, averaged over ${Math.ceil(lc.logged / lc.steps.length)} logged steps per point` : ""}; log uploaded up to step
      ${lc.log_step}. Log scale.</div>`;
    const widths = Object.keys(lc.losses).sort((a, b) => Number(a) - Number(b));
    const values = widths.flatMap((w) => lc.losses[w]).filter((v) => v !== null && v > 0);
    const lo = Math.log10(Math.min(...values)), hi = Math.log10(Math.max(...values));
    const pad = (hi - lo) * 0.05 || 0.1;
    const first = lc.steps[0], last = lc.steps[lc.steps.length - 1];
    const c = chart($("#loss-curves"), { width: 900, height: 300, legendWidth: 130,
      x: { label: "training step", lo: first, hi: Math.max(last, first + 1) },
      y: { label: "training loss (MSE of ε)", lo: lo - pad, hi: hi + pad, format: (t) => Number(Math.pow(10, t).toPrecision(2)) } });
    const items = [];
    widths.forEach((w, k) => {
      const col = ddsm.seqColor(0.85 * (widths.length > 1 ? k / (widths.length - 1) : 1)); // viridis' yellow end is pale
      let d = "";
      lc.steps.forEach((s, i) => {
        const v = lc.losses[w][i];
        if (v === null || !(v > 0)) return;
        d += `${d ? "L" : "M"}${c.sx(s).toFixed(1)} ${c.sy(Math.log10(v)).toFixed(1)}`;
      });
      el("path", { class: "loss-curve", "data-width": w, d, fill: "none", stroke: col, "stroke-width": 1.6 }, c.data);
      items.push({ label: `width ${ddsm.widthLabel(Number(w))}`, color: col, shape: "line" });
    });
    ddsm.legend(c, items, "width");
  }

  // The run's sample grids (one row per width, same seeds in each row); a selector picks the step.
  function renderSamples(grids) {
    const box = $("#samples");
    if (!grids) {
      box.dataset.shown = "";
      box.innerHTML = `<span class="note">No sample grid yet: the trainer draws one every sample_every steps and at the
        end (one row per width, the same seeds in every row); the worker uploads each one.</span>`;
      return;
    }
    const sig = JSON.stringify(grids);
    if (box.dataset.shown === sig) return;
    box.dataset.shown = sig;
    const latest = grids[grids.length - 1];
    box.innerHTML = `<label>step <select id="grid-step">${grids.map((g) => `<option value="${esc(g.url)}"
      ${g === latest ? "selected" : ""}>${g.step}</option>`).join("")}</select></label>
      <span class="muted">EMA weights; one row per width of the supernet, narrowest at the top, the same seeds in every row.</span>
      <figure class="sample-grid train-grid"><img id="grid-img" alt="sample grid"></figure>`;
    const img = $("#grid-img");
    $("#grid-step").addEventListener("change", (ev) => ddsm.showImage(img, ev.target.value));
    ddsm.showImage(img, latest.url);
  }

  function renderEval(d) {
    renderCurves(d.loss_curves);
    renderSamples(d.sample_grids);
    const e = d.eval;
    $("#eval-step").textContent = d.checkpoint_step !== null && d.checkpoint_step !== undefined ? `(checkpoint at step ${d.checkpoint_step}, EMA weights)` : "";
    if (!e) {
      $("#eval").innerHTML = `<div class="card note">${esc(d.error || "no checkpoint with eval losses yet (written at eval_every steps and at the end)")}</div>`;
      return;
    }
    const full = e.overall[e.overall.length - 1];
    const bins = (e.t_edges || []).slice(0, -1).map((a, i) => `t ${a}–${e.t_edges[i + 1] - 1}`);
    const head = `<tr><th>width</th><th class="num">eval loss (MSE of ε)</th><th class="num">/ full width</th>
      <th class="num">minus full (± SE)</th>${bins.map((b) => `<th class="num">${esc(b)}</th>`).join("")}</tr>`;
    const rows = e.widths.map((w, i) => `<tr><td>${ddsm.widthLabel(w)}</td><td class="num">${num(e.overall[i], 4)}</td>
      <td class="num">${num(e.overall[i] / full, 4)}</td>
      <td class="num">${num(e.overall[i] - full, 3)}${e.diff_se && e.diff_se.length ? ` ± ${num(e.diff_se[i], 2)}` : ""}</td>
      ${(e.per_bin[i] || []).map((v) => `<td class="num">${num(v, 4)}</td>`).join("")}</tr>`).join("");
    $("#eval").innerHTML = `<table id="eval-table"><thead>${head}</thead><tbody>${rows}</tbody></table>
      <div class="muted">${e.n_images} held-out images, the same noise and timesteps for every width.</div>`;
  }

  async function refresh() {
    const [run, detail] = await Promise.all([api(`/training-runs/${id}`), api(`/ui/data/training-runs/${id}`)]);
    const s = JSON.stringify([run, detail]);
    if (s !== sig) { sig = s; renderRun(run); renderEval(detail); document.body.dataset.status = run.status; }
    return true;
  }

  $("#cancel").addEventListener("click", async () => {
    try {
      await api(`/training-runs/${id}/cancel`, { method: "POST" });
      ddsm.showMessage(errorBox, "training run cancelled", "info");
      await refresh();
    } catch (e) {
      ddsm.showMessage(errorBox, `cancel refused: ${e.message}`);
    }
  });
  ddsm.poll(refresh, 2000, errorBox);
})();
