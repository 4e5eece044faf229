/* The form to start a search, built from the OpenAPI schema of POST /searches; the server validates. */
"use strict";
(() => {
  const { api, esc } = ddsm;
  ddsm.header("new");
  const $ = (sel) => document.querySelector(sel);
  const form = $("#search-form"), errorBox = $("#error");
  let schema = null;

  const typeOf = (prop) => prop.type || ((prop.anyOf || []).find((t) => t.type !== "null") || {}).type;

  function options(rows, what) {
    const ready = rows.filter((r) => r.status === "COMPLETE");
    if (!ready.length) return `<option value="">no ${what} is COMPLETE yet</option>`;
    return ready.sort((a, b) => b.id - a.id).map((r) => `<option value="${r.id}">#${r.id} ${esc(r.name)}${r.extractor ? ` (${esc(r.dataset)}, ${esc(r.extractor)})` : ""}</option>`).join("");
  }

  async function build() {
    const [spec, nets, stats] = await Promise.all([api("/openapi.json"), api("/supernets"), api("/reference-stats")]);
    schema = spec.components.schemas.SearchCreate;
    const required = new Set(schema.required || []);
    form.innerHTML = Object.entries(schema.properties).map(([name, prop]) => {
      let input;
      if (name === "supernet_id") input = `<select name="${name}" id="f-${name}">${options(nets, "supernet")}</select>`;
      else if (name === "reference_stats_id") input = `<select name="${name}" id="f-${name}">${options(stats, "reference statistics")}</select>`;
      else {
        const dflt = prop.default === undefined || prop.default === null ? "" : String(prop.default);
        const hint = typeOf(prop) === "array" ? "comma-separated, e.g. 0.5, 1.0" : dflt;
        input = `<input name="${name}" id="f-${name}" placeholder="${esc(hint)}" autocomplete="off">`;
      }
      const range = [prop.minimum !== undefined ? `≥ ${prop.minimum}` : "", prop.maximum !== undefined ? `≤ ${prop.maximum}` : ""].filter(Boolean).join(", ");
      const hint = [prop.description || "", range, prop.default !== undefined && prop.default !== null ? `default ${prop.default}` : (required.has(name) ? "required" : "")]
        .filter(Boolean).join(" · ");
      return `<label for="f-${name}">${esc(prop.title || name)}</label>${input}<span class="hint">${esc(hint)}</span>`;
    }).join("");
  }

  // Numbers are sent as numbers when they parse, else as typed: the server's 422 names the bad field.
  function body() {
    const out = {};
    for (const [name, prop] of Object.entries(schema.properties)) {
      const raw = form.elements[name].value.trim();
      if (raw === "") continue;
      const type = typeOf(prop);
      if (type === "array") out[name] = raw.split(",").map((v) => v.trim()).filter(Boolean).map((v) => (Number.isNaN(Number(v)) ? v : Number(v)));
      else if (type === "integer" || type === "number") out[name] = Number.isNaN(Number(raw)) ? raw : Number(raw);
      else out[name] = raw;
    }
    return out;
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const created = await api("/searches", { method: "POST", body: body() });
      location.href = `/ui/searches/${created.id}`;
    } catch (e) {
      ddsm.showMessage(errorBox, `the search was not started: ${e.message}`);
    }
  });
  build().catch((e) => ddsm.showMessage(errorBox, e.message));
})();
