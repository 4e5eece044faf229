/* One training run: progress, per-width eval losses of its last checkpoint, cancel. */
"use strict";
(() => {
  const { api, esc, num, statusBadge, bar } = ddsm;
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

  function renderEval(d) {
    $("#curves").innerHTML = d.loss_curves ? "" : `<span class="note">Not recorded by the service: the worker keeps the
      per-step loss log in its scratch folder and uploads checkpoints only (the last checkpoint's eval losses are below).</span>`;
    $("#samples").innerHTML = d.sample_grids ? "" : `<span class="note">Not available: the service does not upload the
      training run's sample grids; draw samples from the finished supernet with <code>ddsm sample</code>.</span>`;
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
