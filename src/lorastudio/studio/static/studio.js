// lorastudio studio: page behaviour over the JSON API. No inline code anywhere (strict CSP);
// every value from the server is written with textContent, never as HTML.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;

function flash(message, isError) {
  const box = document.getElementById("flash");
  if (!box) return;
  box.textContent = message;
  box.className = isError ? "error" : "ok";
}

async function api(method, url, body) {
  const init = { method, headers: { "X-CSRF-Token": CSRF }, credentials: "same-origin" };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(data.detail || ("HTTP " + response.status));
    error.status = response.status;
    error.data = data;
    throw error;
  }
  return data;
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function renderDiff(changes, onApply) {
  const box = document.getElementById("diff");
  box.replaceChildren();
  box.hidden = false;
  box.appendChild(el("h2", changes.length + " caption(s) would change"));
  const table = el("table", undefined, "list diff-rows");
  for (const ch of changes) {
    const row = document.createElement("tr");
    row.appendChild(el("td", ch.image));
    const cell = document.createElement("td");
    cell.appendChild(el("del", ch.before));
    cell.appendChild(el("ins", ch.after));
    const evidence = Object.entries(ch.evidence || {}).filter(([, v]) => v);
    if (evidence.length) cell.appendChild(el("small", evidence.map(([k, v]) => `${k}: ${v}`).join("; "), "muted"));
    row.appendChild(cell);
    table.appendChild(row);
  }
  box.appendChild(table);
  if (changes.length) {
    const apply = el("button", "Apply " + changes.length + " change(s)");
    apply.type = "button";
    apply.dataset.action = "apply-diff";
    apply.addEventListener("click", onApply);
    box.appendChild(apply);
  }
}

// ---------------------------------------------------------------- projects: upload
function initUpload() {
  const form = document.getElementById("upload-form");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const out = document.getElementById("upload-result");
    out.replaceChildren(el("p", "Uploading and preparing…"));
    try {
      const result = await api("POST", "/v1/datasets", new FormData(form));
      out.replaceChildren(el("p", result.accepted + " accepted, " + result.rejected.length + " rejected"));
      const list = el("ul", undefined, "plain rejected-list");
      for (const r of result.rejected) list.appendChild(el("li", r.source + ": " + r.reason + (r.detail ? " (" + r.detail + ")" : "")));
      out.appendChild(list);
      const link = el("a", "Open the gallery");
      link.href = "/studio/datasets/" + encodeURIComponent(result.id);
      out.appendChild(link);
    } catch (error) {
      out.replaceChildren(el("p", error.message, "error"));
    }
  });
}

// ---------------------------------------------------------------- gallery
function initGallery() {
  const grid = document.getElementById("grid");
  const bar = document.getElementById("bulk");
  if (!grid || !bar) return;
  const dataset = grid.dataset.dataset;
  let last = null;
  const boxes = () => Array.from(grid.querySelectorAll("input.sel"));
  const count = () => {
    const n = boxes().filter((b) => b.checked).length;
    document.getElementById("selected-count").textContent = n + " selected";
  };
  grid.addEventListener("click", (event) => {
    const box = event.target.closest("input.sel");
    if (!box) return;
    const all = boxes();
    if (event.shiftKey && last !== null) {
      const [a, b] = [all.indexOf(last), all.indexOf(box)].sort((x, y) => x - y);
      for (let i = a; i <= b; i++) all[i].checked = box.checked;
    }
    last = box;
    count();
  });
  document.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === "a" && !event.target.closest("input, textarea, select")) {
      event.preventDefault();
      boxes().forEach((b) => { b.checked = true; });
      count();
    }
  });
  bar.addEventListener("click", async (event) => {
    const action = event.target.dataset.action;
    if (action === "select-all") { boxes().forEach((b) => { b.checked = true; }); count(); }
    if (action === "invert") { boxes().forEach((b) => { b.checked = !b.checked; }); count(); }
    if (action === "undo-op") {
      try {
        const out = await api("POST", `/v1/datasets/${dataset}/undo`);
        flash("Undone: " + out.reverted.length + " caption(s) restored");
        setTimeout(() => location.reload(), 400);
      } catch (error) { flash(error.message, true); }
    }
    if (action === "reject" || action === "restore") {
      const ids = boxes().filter((b) => b.checked).map((b) => b.value);
      if (!ids.length) { flash("Select images first", true); return; }
      try {
        const out = await api("POST", `/v1/datasets/${dataset}/review`, { ids, action });
        flash((action === "reject" ? "Rejected " : "Restored ") + out.changed.length + " image(s)");
        setTimeout(() => location.reload(), 400);
      } catch (error) { flash(error.message, true); }
    }
    if (action === "preview") {
      const ids = boxes().filter((b) => b.checked).map((b) => b.value);
      const body = { ids, slot: document.getElementById("bulk-slot").value,
                     phrase: document.getElementById("bulk-phrase").value.trim(), dry_run: true };
      if (!ids.length || !body.phrase) { flash("Select images and type a phrase first", true); return; }
      try {
        const plan = await api("POST", `/v1/datasets/${dataset}/edits`, body);
        renderDiff(plan.changes, async () => {
          try {
            const done = await api("POST", `/v1/datasets/${dataset}/edits`, { ...body, dry_run: false });
            flash("Applied to " + done.changes.length + " caption(s)");
            setTimeout(() => location.reload(), 400);
          } catch (error) { flash(error.message, true); }
        });
      } catch (error) { flash(error.message, true); }
    }
  });
  document.body.addEventListener("htmx:afterSwap", count);
}

// ---------------------------------------------------------------- jobs started from a page
async function followJob(job, status, label) {
  // "<label><job link>: <state>" in `status` until the job ends; returns its final view.
  status.replaceChildren(el("span", label), el("a", job.id.slice(0, 8)), el("span", ": " + job.status));
  status.children[1].href = "/studio/jobs/" + job.id;
  status.dataset.job = job.id;
  let view = job;
  while (!["succeeded", "failed", "canceled", "expired"].includes(view.status)) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    view = await api("GET", "/v1/jobs/" + job.id);
    status.children[2].textContent = ": " + view.status;
  }
  status.dataset.status = view.status;
  return view;
}

// ---------------------------------------------------------------- caption jobs (gallery and editor)
function initCaptionJob() {
  const box = document.getElementById("caption-job");
  if (!box) return;
  const status = document.getElementById("cj-status");
  box.addEventListener("click", async (event) => {
    if (event.target.dataset.action !== "caption-run") return;
    const body = { backend: document.getElementById("cj-backend").value,
                   model: document.getElementById("cj-model").value.trim(),
                   overwrite: document.getElementById("cj-overwrite").checked };
    if (!body.model) { flash("Name a model first", true); return; }
    try {
      const job = await api("POST", `/v1/datasets/${box.dataset.dataset}/captions`, body);
      const view = await followJob(job, status, "Captioning job ");
      if (view.status === "succeeded") {
        flash(`Captioned: ${view.result.captioned} of ${view.result.of} image(s) have a caption`);
        setTimeout(() => location.reload(), 800);
      } else {
        flash("Captioning " + view.status + (view.error ? ": " + view.error.message : ""), true);
      }
    } catch (error) { flash(error.message, true); }
  });
}

// ---------------------------------------------------------------- caption editor
function initEditor() {
  const root = document.getElementById("editor");
  if (!root) return;
  const { dataset, image } = root.dataset;
  const form = document.getElementById("caption-form");
  const fields = Array.from(form.querySelectorAll("textarea"));
  const base = `/v1/datasets/${dataset}/images/${image}`;
  let version = root.dataset.version;
  let saved = slots();
  let timer = null;

  function slots() {
    const out = {};
    for (const f of fields) out[f.name] = f.value;
    return out;
  }
  const dirty = () => JSON.stringify(slots()) !== JSON.stringify(saved);
  function show(state) {
    for (const f of fields) f.value = state.slots[f.name] || "";
    saved = slots();
    version = state.version;
    document.getElementById("version").textContent = version;
    document.getElementById("composed").textContent = state.caption_text;
    check();
  }
  async function check() {
    try {
      const out = await api("POST", `/v1/datasets/${dataset}/lint`, { slots: slots() });
      const tokens = document.getElementById("tokens");
      tokens.replaceChildren();
      for (const [name, n] of Object.entries(out.tokens)) {
        const badge = el("span", `${name}: ${n}/${out.budget}`, "token" + (n > out.budget ? " over" : ""));
        badge.dataset.encoder = name;
        tokens.appendChild(badge);
        const meter = document.createElement("meter");
        Object.assign(meter, { min: 0, max: out.budget, value: n, high: out.budget - 5 });
        tokens.appendChild(meter);
      }
      const lint = document.getElementById("lint");
      lint.replaceChildren(...out.lint.map((p) => { const li = el("li", p.message); li.dataset.code = p.code; return li; }));
      const gloss = document.getElementById("glossary");
      gloss.replaceChildren(...out.glossary.map((g) => el("li", `${g.slot}: ${g.suggestion}` +
        (g.unmapped.length ? ` (no entry: ${g.unmapped.join(", ")})` : ""))));
    } catch (error) { flash(error.message, true); }
  }
  async function save(force) {
    if (!dirty() && !force) return;
    const state = document.getElementById("save-state");
    try {
      show(await api("PUT", base + "/caption", { slots: slots(), version }));
      flash("Saved");
    } catch (error) {
      if (error.status === 409) {
        const dialog = document.getElementById("conflict");
        dialog.dataset.theirs = JSON.stringify(error.data.current);
        document.getElementById("conflict-text").textContent = error.data.current.caption_text;
        dialog.showModal();
      } else { flash(error.message, true); }
    }
    state.dataset.saved = String(Date.now());
  }
  async function step(kind) {
    try { show(await api("POST", `${base}/${kind}`)); flash(kind === "undo" ? "Undone" : "Redone"); }
    catch (error) { flash(error.message, true); }
  }
  form.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(check, 250); });
  form.addEventListener("focusout", () => save(false));
  root.addEventListener("click", (event) => {
    const action = event.target.dataset.action;
    if (action === "save") save(true);
    if (action === "undo") step("undo");
    if (action === "redo") step("redo");
  });
  document.getElementById("conflict").addEventListener("click", (event) => {
    const dialog = document.getElementById("conflict");
    const theirs = JSON.parse(dialog.dataset.theirs || "{}");
    if (event.target.dataset.action === "conflict-theirs") { show(theirs); dialog.close(); }
    if (event.target.dataset.action === "conflict-mine") { version = theirs.version; dialog.close(); save(true); }
  });
  document.addEventListener("keydown", (event) => {
    const inField = event.target.closest("input, textarea, select");
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z" && !(inField && dirty())) {
      event.preventDefault();
      step(event.shiftKey ? "redo" : "undo");
      return;
    }
    if (inField || event.ctrlKey || event.metaKey || event.altKey) return;
    const go = event.key === "j" ? root.dataset.next : event.key === "k" ? root.dataset.prev : "";
    if (go) location.href = `/studio/datasets/${dataset}/images/${go}`;
  });
}

// ---------------------------------------------------------------- contamination
function initAudit() {
  const bar = document.getElementById("audit-actions");
  if (!bar) return;
  const dataset = bar.dataset.dataset;
  async function audit() {  // a job on an idle worker; the server audits in the request when none is idle
    const out = await api("POST", `/v1/datasets/${dataset}/audits?background=true`);
    if (out.audit_id) return;  // done in the request
    const view = await followJob(out, document.getElementById("audit-status"), "Audit job ");
    if (view.status !== "succeeded") throw new Error("Audit " + view.status + (view.error ? ": " + view.error.message : ""));
  }
  bar.addEventListener("click", async (event) => {
    const action = event.target.dataset.action;
    try {
      if (action === "run-audit") {
        flash("Auditing…");
        await audit();
        location.reload();
      }
      if (action === "undo-op") {
        const out = await api("POST", `/v1/datasets/${dataset}/undo`);
        flash("Undone: " + out.reverted.length + " caption(s) restored");
        await audit();
        location.reload();
      }
      if (action === "fix-preview") {
        const plan = await api("POST", `/v1/datasets/${dataset}/fix`);
        renderDiff(plan.changes, async () => {
          try {
            await api("POST", `/v1/datasets/${dataset}/fix?apply=true&reaudit=false`);
            flash("Applied; re-auditing…");
            await audit();
            location.reload();
          } catch (error) { flash(error.message, true); }
        });
      }
    } catch (error) { flash(error.message, true); }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  for (const init of [initUpload, initGallery, initCaptionJob, initEditor, initAudit]) init();
});
