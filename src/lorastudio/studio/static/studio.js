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
  bar.addEventListener("click", async (event) => {
    const action = event.target.dataset.action;
    try {
      if (action === "run-audit") {
        flash("Auditing…");
        await api("POST", `/v1/datasets/${dataset}/audits`);
        location.reload();
      }
      if (action === "undo-op") {
        const out = await api("POST", `/v1/datasets/${dataset}/undo`);
        flash("Undone: " + out.reverted.length + " caption(s) restored");
        await api("POST", `/v1/datasets/${dataset}/audits`);
        location.reload();
      }
      if (action === "fix-preview") {
        const plan = await api("POST", `/v1/datasets/${dataset}/fix`);
        renderDiff(plan.changes, async () => {
          try {
            await api("POST", `/v1/datasets/${dataset}/fix?apply=true`);
            location.reload();
          } catch (error) { flash(error.message, true); }
        });
      }
    } catch (error) { flash(error.message, true); }
  });
}

// ---------------------------------------------------------------- jobs
function initJobs() {
  document.body.addEventListener("click", async (event) => {
    const action = event.target.dataset.action;
    const job = event.target.dataset.job;
    if (!job || !["cancel-job", "retry-job", "prepend-job"].includes(action)) return;
    try {
      if (action === "prepend-job") {
        await api("POST", `/v1/jobs/${job}/prepend`);
        flash("Job " + job.slice(0, 8) + " runs next");
      } else if (action === "cancel-job") {
        const out = await api("DELETE", `/v1/jobs/${job}`);
        flash("Job " + job.slice(0, 8) + ": " + out.status);
      } else {
        const out = await api("POST", `/v1/jobs/${job}/retry`);
        flash("Queued again as " + out.id.slice(0, 8));
      }
      if (!document.getElementById("job-rows")) setTimeout(() => location.reload(), 300);
    } catch (error) { flash(error.message, true); }
  });
}

function initLive() {
  const live = document.getElementById("live");
  if (!live || !window.EventSource) return;
  const points = new Map();
  const status = document.getElementById("live-status");
  const line = document.getElementById("loss-line");
  const events = document.getElementById("events");
  const seen = new Set(Array.from(events.children).map((li) => li.dataset.event));
  function draw() {
    const steps = Array.from(points.keys()).sort((a, b) => a - b);
    if (!steps.length) return;
    const losses = steps.map((s) => points.get(s));
    const lo = Math.min(...losses), hi = Math.max(...losses), last = steps[steps.length - 1] || 1;
    line.setAttribute("points", steps.map((s, i) =>
      `${(400 * s / last).toFixed(1)},${(115 - 110 * (losses[i] - lo) / ((hi - lo) || 1)).toFixed(1)}`).join(" "));
    line.dataset.points = String(steps.length);
  }
  const source = new EventSource(`/v1/jobs/${live.dataset.job}/events`);
  for (const kind of ["queued", "started", "step", "completed", "failed", "canceled", "expired"]) {
    source.addEventListener(kind, (event) => {
      const data = JSON.parse(event.data);
      if (!seen.has(event.lastEventId)) {
        seen.add(event.lastEventId);
        const li = el("li", kind + " " + event.data);
        li.dataset.event = event.lastEventId;
        events.appendChild(li);
      }
      if (kind === "step" && typeof data.loss === "number") {
        points.set(data.step, data.loss);
        draw();
        status.textContent = `step ${data.step}/${data.n} · loss ${data.loss.toFixed(4)}`;
      } else if (kind === "step") {
        status.textContent = `step ${data.i}/${data.n}`;
      }
      if (["completed", "failed", "canceled", "expired"].includes(kind)) {
        document.getElementById("job-status").textContent = kind;
        const stop = document.querySelector('#job-actions [data-action="cancel-job"]');
        if (stop) stop.hidden = true;
        source.close();
      }
    });
  }
}

// ---------------------------------------------------------------- settings
function initSettings() {
  const form = document.getElementById("key-form");
  if (form) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const scopes = Array.from(form.querySelectorAll('input[name="scopes"]:checked')).map((b) => b.value);
      try {
        const out = await api("POST", "/v1/keys", { name: form.elements.name.value, scopes });
        document.getElementById("new-key-token").textContent = out.token;
        document.getElementById("new-key").hidden = false;
        flash("Key created. From now on the studio needs a login.");
      } catch (error) { flash(error.message, true); }
    });
  }
  const keys = document.getElementById("keys");
  if (keys) {
    keys.addEventListener("click", async (event) => {
      if (event.target.dataset.action !== "revoke-key") return;
      try {
        await api("DELETE", `/v1/keys/${event.target.dataset.key}`);
        location.reload();
      } catch (error) { flash(error.message, true); }
    });
  }
}

// ---------------------------------------------------------------- training form
function initTraining() {
  const form = document.getElementById("train-form");
  if (!form) return;
  const images = Number(form.dataset.images) || 0;
  const submit = document.getElementById("t-submit");
  const override = document.getElementById("t-override");
  function epochs() {
    const steps = Number(form.elements.steps.value) || 0;
    document.getElementById("epochs").textContent = images
      ? `${steps} steps over ${images} images at batch 1 = ${(steps / images).toFixed(1)} epochs` : "";
  }
  form.elements.steps.addEventListener("input", epochs);
  epochs();
  if (override) {
    override.addEventListener("input", () => refresh());
  }
  document.getElementById("t-dataset").addEventListener("change", (event) => {
    location.href = "/studio/runs/new?dataset=" + encodeURIComponent(event.target.value);
  });
  document.getElementById("t-preset").addEventListener("change", (event) => {
    const option = event.target.selectedOptions[0];
    if (!option.dataset.values) return;
    const values = JSON.parse(option.dataset.values);
    for (const [name, value] of Object.entries(values)) {
      if (form.elements[name]) form.elements[name].value = value;
    }
    epochs();
  });
  let yamlBad = false;
  const gateOk = () => form.dataset.gateOk === "yes" || (override && override.value.trim().length >= 10);
  const refresh = () => { submit.disabled = yamlBad || !gateOk(); };
  const result = document.getElementById("y-result");
  document.getElementById("yaml-tab").addEventListener("click", async (event) => {
    const action = event.target.dataset.action;
    const text = document.getElementById("y-text");
    try {
      if (action === "yaml-defaults") {
        const out = await api("GET", "/v1/configs/default?family=" + document.getElementById("y-family").value);
        text.value = out.yaml;
      }
      if (action === "yaml-check") {
        result.hidden = false;
        try {
          const out = await api("POST", "/v1/configs/check", { yaml: text.value });
          text.value = out.yaml;
          result.textContent = "valid";
          result.className = "yaml-result ok";
          yamlBad = false;
        } catch (error) {
          result.textContent = error.message;
          result.className = "yaml-result error";
          yamlBad = true;
        }
        refresh();
      }
    } catch (error) { flash(error.message, true); }
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (yamlBad) { flash("Fix the YAML tab first", true); return; }
    const body = {};
    for (const input of form.querySelectorAll("input")) {
      if (!input.name || input.value === "") continue;
      body[input.name] = input.type === "number" ? Number(input.value) : input.value;
    }
    try {
      const job = await api("POST", `/v1/datasets/${form.getAttribute("data-dataset")}/trainings`, body);
      location.href = "/studio/jobs/" + job.id;
    } catch (error) { flash(error.message, true); }
  });
}

// ---------------------------------------------------------------- enhance playground
async function finished(jobId) {
  for (;;) {
    const job = await api("GET", `/v1/jobs/${jobId}`);
    if (["succeeded", "failed", "canceled", "expired"].includes(job.status)) return job;
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
}

function initEnhance() {
  const form = document.getElementById("enhance-form");
  if (!form) return;
  const after = document.getElementById("after");
  const slider = document.getElementById("slider");
  const clip = () => { after.style.clipPath = `inset(0 0 0 ${slider.value}%)`; };
  slider.addEventListener("input", clip);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = form.elements.image.files[0];
    const seeds = document.getElementById("e-batch").checked ? 4 : 1;
    const first = Number(form.elements.seed.value) || 0;
    const fields = { strength: Number(form.elements.strength.value), steps: Number(form.elements.steps.value),
                     control: form.elements.control.value };
    if (form.elements.lora.value) fields.loras = [{ id: form.elements.lora.value, scale: Number(form.elements.scale.value) }];
    flash("Queued " + seeds + " job(s)…");
    try {
      const ids = [];
      for (let k = 0; k < seeds; k++) {
        const body = new FormData();
        body.append("image", file);
        body.append("prompt", form.elements.prompt.value);
        body.append("fields", JSON.stringify({ ...fields, seed: first + k }));
        const response = await fetch("/v1/images/edits", { method: "POST", body, credentials: "same-origin",
          headers: { "X-CSRF-Token": CSRF, "Prefer": "respond-async" } });
        const data = await response.json();
        if (!response.ok) throw new Error(data.detail || ("HTTP " + response.status));
        ids.push(data.id);
      }
      document.getElementById("before").src = URL.createObjectURL(file);
      const outputs = document.getElementById("outputs");
      outputs.replaceChildren();
      document.getElementById("results").hidden = false;
      for (const id of ids) {
        const job = await finished(id);
        if (job.status !== "succeeded") { flash(`job ${id.slice(0, 8)}: ${job.error ? job.error.message : job.status}`, true); continue; }
        for (const sha of job.images) {
          const img = el("img");
          img.src = `/v1/images/${sha}`;
          img.alt = "seed output";
          img.addEventListener("click", () => { after.src = img.src; });
          outputs.appendChild(img);
          if (!after.getAttribute("src")) { after.src = img.src; clip(); }
        }
      }
      flash("Done: " + ids.length + " job(s)");
    } catch (error) { flash(error.message, true); }
  });
}

// ---------------------------------------------------------------- compare grid
function initCompare() {
  const form = document.getElementById("compare-form");
  if (!form) return;
  const table = document.getElementById("cmp-grid");
  const after = document.getElementById("after");
  const a = document.getElementById("cmp-a");
  const slider = document.getElementById("slider");
  slider.addEventListener("input", () => { after.style.clipPath = `inset(0 0 0 ${slider.value}%)`; });
  let nextPick = "a";
  table.addEventListener("click", (event) => {
    const img = event.target.closest("img");
    if (!img) return;
    table.querySelectorAll(".pick-" + nextPick).forEach((n) => n.classList.remove("pick-" + nextPick));
    img.classList.add("pick-" + nextPick);
    (nextPick === "a" ? a : after).src = img.src;
    nextPick = nextPick === "a" ? "b" : "a";
    document.getElementById("ab").hidden = false;
    after.style.clipPath = `inset(0 0 0 ${slider.value}%)`;
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const trigger = form.elements.trigger.value.trim();
    const prompts = form.elements.prompts.value.split("\n").map((p) => p.trim()).filter(Boolean);
    if (!prompts.length) { flash("Give at least one prompt", true); return; }
    if (trigger && prompts[0].includes(trigger)) {
      prompts.push(prompts[0].replace(trigger, "").replace(/^[,\s]+/, ""));
    }
    const scales = form.elements.scales.value.split(",").map(Number).filter((x) => !Number.isNaN(x));
    const loras = Array.from(form.querySelectorAll('input[name="lora"]:checked')).map((b) => b.value);
    const columns = [{ label: "base", loras: [] }];
    for (const id of loras) for (const scale of scales) columns.push({ label: `${id} × ${scale}`, loras: [{ id, scale }] });
    table.replaceChildren();
    const head = document.createElement("tr");
    head.appendChild(el("th", "prompt"));
    for (const c of columns) head.appendChild(el("th", c.label));
    table.appendChild(head);
    const jobs = [];
    for (const [row, prompt] of prompts.entries()) {
      const tr = document.createElement("tr");
      tr.appendChild(el("td", prompt + (row === prompts.length - 1 && prompts.length > 1 && trigger ? " (leak row)" : "")));
      for (const column of columns) {
        const td = el("td", "…");
        tr.appendChild(td);
        jobs.push({ td, body: { prompt, loras: column.loras, seed: Number(form.elements.seed.value) || 0,
                                steps: Number(form.elements.steps.value) || 20, size: form.elements.size.value, response_format: "url" } });
      }
      table.appendChild(tr);
    }
    try {
      for (const job of jobs) {
        const response = await fetch("/v1/images/generations", { method: "POST", credentials: "same-origin",
          headers: { "X-CSRF-Token": CSRF, "Prefer": "respond-async", "Content-Type": "application/json" },
          body: JSON.stringify(job.body) });
        const data = await response.json();
        if (!response.ok) throw new Error(data.detail || ("HTTP " + response.status));
        job.id = data.id;
      }
      for (const job of jobs) {
        const done = await finished(job.id);
        job.td.replaceChildren();
        if (done.status !== "succeeded") { job.td.textContent = done.status; continue; }
        const img = el("img");
        img.src = `/v1/images/${done.images[0]}`;
        img.alt = job.body.prompt;
        job.td.appendChild(img);
      }
      flash(`Grid done: ${jobs.length} cell(s)`);
    } catch (error) { flash(error.message, true); }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  for (const init of [initUpload, initGallery, initEditor, initAudit, initJobs, initLive, initSettings, initTraining, initEnhance, initCompare]) init();
  document.body.dataset.ready = "1";  // handlers attached (the browser tests wait for this before clicking)
});
