/* The dashboard's front page: searches, training runs, reference statistics and supernets, polled. */
"use strict";
(() => {
  const { api, esc, num, statusBadge, bar, intervalText, savingText } = ddsm;
  ddsm.header("home");
  const selected = new Set();
  const empty = (cols, what) => `<tr><td colspan="${cols}" class="note">no ${what} yet</td></tr>`;

  function searchRow(s) {
    const p = s.pick;
    const when = p ? `<span class="muted">${p.final ? "final" : "so far"}</span> ` : "";
    const fid = p ? (p.final_fid !== null && p.final_fid !== undefined
      ? `${num(p.final_fid, 4)} <span class="muted">(${p.final_n_images} images)</span>` : num(p.fid, 4)) : "–";
    const iv = p ? intervalText(p.intervals) : "";
    const c = s.candidates;
    return `<tr data-id="${s.id}">
      <td><input type="checkbox" class="pick-compare" data-id="${s.id}" ${selected.has(s.id) ? "checked" : ""}></td>
      <td><a href="/ui/searches/${s.id}">#${s.id} ${esc(s.name)}</a> <span class="muted">${esc(s.sampler)}-${s.steps}</span></td>
      <td>${statusBadge(s.status)}</td>
      <td>${bar(s.percent)}</td>
      <td class="generation">${s.generations_done} / ${s.generations}</td>
      <td class="num">${c.COMPLETE}</td><td class="num">${c.RUNNING}</td><td class="num">${c.FAILED}</td>
      <td class="num saved" data-objective="${esc(s.objective)}">${when}${p ? savingText(p) : "–"}</td>
      <td class="num">${fid}${iv ? ` <span class="muted">${esc(iv)}</span>` : ""}</td>
      <td class="muted wrap">${esc(s.extractor)}</td></tr>`;
  }

  function runRow(r) {
    return `<tr data-id="${r.id}"><td><a href="/ui/training-runs/${r.id}">#${r.id} ${esc(r.name)}</a></td>
      <td>${statusBadge(r.status)}</td><td>${bar(r.progress)}</td>
      <td class="num">${r.step} / ${r.total_steps || "?"}</td><td>${esc(r.config.preset || "")}</td>
      <td>${esc(r.worker || "–")}</td><td>${r.supernet_id ?? "–"}</td><td class="muted">${esc((r.error || "").slice(0, 80))}</td></tr>`;
  }

  function statsRow(s) {
    return `<tr><td>${s.id}</td><td>${esc(s.name)}</td><td>${esc(s.dataset)}</td><td>${esc(s.extractor)}</td>
      <td>${statusBadge(s.status)}</td><td class="num">${s.n_images ?? "–"}</td></tr>`;
  }

  function netRow(n) {
    const g = n.gflops || {};
    const full = g.gflops ? num(g.gflops[g.gflops.length - 1], 4) : "–";
    return `<tr><td>${n.id}</td><td>${esc(n.name)}</td><td>${statusBadge(n.status)}</td>
      <td>${esc((g.widths || []).join(", "))}</td><td class="num">${full}</td></tr>`;
  }

  async function refresh() {
    const [searches, runs, stats, nets] = await Promise.all([
      api("/ui/data/overview"), api("/training-runs"), api("/reference-stats"), api("/supernets")]);
    searches.sort((a, b) => b.id - a.id);
    runs.sort((a, b) => b.id - a.id);
    document.querySelector("#searches tbody").innerHTML = searches.map(searchRow).join("") || empty(11, "searches");
    document.querySelector("#training-runs tbody").innerHTML = runs.map(runRow).join("") || empty(8, "training runs");
    document.querySelector("#reference-stats tbody").innerHTML = stats.map(statsRow).join("") || empty(6, "reference statistics");
    document.querySelector("#supernets tbody").innerHTML = nets.map(netRow).join("") || empty(5, "supernets");
  }

  document.querySelector("#searches").addEventListener("change", (ev) => {
    if (!ev.target.classList.contains("pick-compare")) return;
    const id = Number(ev.target.dataset.id);
    if (ev.target.checked) selected.add(id); else selected.delete(id);
  });
  document.querySelector("#compare-selected").addEventListener("click", () => {
    location.href = `/ui/compare?ids=${[...selected].join(",")}`;
  });
  ddsm.poll(refresh, 2000, document.getElementById("error"));
})();
