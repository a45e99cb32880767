// lorastudio studio, run pages: jobs and the live run view, settings, the training form, enhance and
// compare. Loaded after studio.js, whose helpers (CSRF, api, el, flash) it uses; same rules: no
// inline code, server values written with textContent only.
"use strict";

// ---------------------------------------------------------------- jobs
function initJobs() {
  document.body.addEventListener("click", async (event) => {
    const action = event.target.dataset.action;
    if (action === "pause-queue" || action === "resume-queue") {
      try {
        const out = await api("POST", "/v1/queue/" + (action === "pause-queue" ? "pause" : "resume"));
        const button = event.target;
        button.dataset.action = out.paused ? "resume-queue" : "pause-queue";
        button.textContent = out.paused ? "Resume queue" : "Pause queue";
        const label = document.getElementById("queue-label");
        label.textContent = out.paused ? "queue paused: no new job starts" : "queue running";
        label.className = "state " + (out.paused ? "state-canceled" : "state-running");
        document.getElementById("queue-state").dataset.paused = out.paused ? "yes" : "no";
        flash(out.paused ? "Queue paused" : "Queue resumed");
      } catch (error) { flash(error.message, true); }
      return;
    }
    const job = event.target.dataset.job;
    if (action === "sample-now" && job) {  // the trainer renders its sample prompts after the next step
      try {
        await api("POST", `/v1/jobs/${job}/sample-now`);
        flash("Samples asked for: they render after the next step");
      } catch (error) { flash(error.message, true); }
      return;
    }
    if (action === "save-now" && job) {  // the trainer writes a checkpoint after the next step and goes on
      try {
        await api("POST", `/v1/jobs/${job}/save-now`);
        flash("Checkpoint asked for: it is written after the next step");
      } catch (error) { flash(error.message, true); }
      return;
    }
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
  const emaBox = document.getElementById("loss-ema"), logBox = document.getElementById("loss-log");
  function shown(raw) {  // the plotted values: optionally an EMA (0.9) of the per-step loss, optionally log10
    let ema = null;
    return raw.map((loss) => {
      ema = ema === null ? loss : 0.9 * ema + 0.1 * loss;
      const value = emaBox && emaBox.checked ? ema : loss;
      return logBox && logBox.checked ? Math.log10(Math.max(value, 1e-8)) : value;
    });
  }
  for (const box of [emaBox, logBox]) if (box) box.addEventListener("change", () => draw());
  const valPoints = new Map();
  const valLine = document.getElementById("val-line");
  function draw() {  // training and validation loss share both axes
    const steps = Array.from(points.keys()).sort((a, b) => a - b);
    const valSteps = Array.from(valPoints.keys()).sort((a, b) => a - b);
    if (!steps.length && !valSteps.length) return;
    const losses = shown(steps.map((s) => points.get(s)));
    const logged = logBox && logBox.checked;
    const vals = valSteps.map((s) => (logged ? Math.log10(Math.max(valPoints.get(s), 1e-8)) : valPoints.get(s)));
    const all = losses.concat(vals);
    const lo = Math.min(...all), hi = Math.max(...all);
    const last = Math.max(steps[steps.length - 1] || 0, valSteps[valSteps.length - 1] || 0) || 1;
    const xy = (s, v) => `${(400 * s / last).toFixed(1)},${(115 - 110 * (v - lo) / ((hi - lo) || 1)).toFixed(1)}`;
    line.setAttribute("points", steps.map((s, i) => xy(s, losses[i])).join(" "));
    line.dataset.points = String(steps.length);
    if (valLine) {
      valLine.setAttribute("points", valSteps.map((s, i) => xy(s, vals[i])).join(" "));
      valLine.dataset.points = String(valSteps.length);
    }
  }
  function showValidation(data) {
    if (typeof data.val_loss !== "number") return;
    valPoints.set(data.step, data.val_loss);
    draw();
    const split = data.val_split === "held-out" ? "held-out images" : "training images, fixed noise";
    const dd = document.getElementById("live-val");
    dd.textContent = `${data.val_loss.toFixed(4)} at step ${data.step} (${data.val_images} ${split})`;
    dd.dataset.value = String(data.val_loss);
  }
  function showLeak(data) {  // the newest figure per attribute; a positive leak is the LoRA adding it
    const table = document.getElementById("leak-table");
    if (!table || !data.leak || !Object.keys(data.leak).length) return;
    const none = document.getElementById("no-leak");
    if (none) none.remove();
    table.hidden = false;
    const body = table.tBodies[0];
    body.replaceChildren();
    for (const [label, value] of Object.entries(data.leak).sort()) {
      const tr = document.createElement("tr");
      tr.dataset.attr = label;
      const shownValue = typeof value === "number" && Number.isFinite(value)
        ? `${value > 0 ? "+" : ""}${Math.round(100 * value)} %` : "–";
      tr.append(el("td", label.replace(/_/g, " ")), el("td", shownValue), el("td", String(data.step)));
      if (typeof value === "number" && value >= 0.25) tr.className = "leaking";
      body.appendChild(tr);
    }
  }
  const samples = document.getElementById("samples");
  const shownSamples = new Set();
  function addSamples(data) {
    if (!samples || shownSamples.has(data.step)) return;
    shownSamples.add(data.step);
    const none = document.getElementById("no-samples");
    if (none) none.remove();
    const row = el("figure", undefined, "sample-row");
    row.dataset.step = String(data.step);
    row.appendChild(el("figcaption", "step " + data.step));
    for (const name of data.files) {
      const img = document.createElement("img");
      img.src = `/v1/jobs/${live.dataset.job}/samples/${data.step}/${encodeURIComponent(name)}`;
      img.alt = "sample " + name + " at step " + data.step;
      row.appendChild(img);
    }
    samples.appendChild(row);
  }
  function showRate(data) {
    if (typeof data.lr === "number") document.getElementById("live-lr").textContent = data.lr.toExponential(2);
    if (typeof data.s_per_step === "number" && data.n) {
      const left = Math.max(0, Math.round((data.n - data.step) * data.s_per_step));
      const eta = document.getElementById("live-eta");
      eta.textContent = `${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`;
      eta.dataset.seconds = String(left);
    }
  }
  const source = new EventSource(`/v1/jobs/${live.dataset.job}/events`);
  for (const kind of ["queued", "started", "step", "sample", "validation", "leak", "completed", "failed", "canceled",
                      "expired"]) {
    source.addEventListener(kind, (event) => {
      const data = JSON.parse(event.data);
      if (!seen.has(event.lastEventId)) {
        seen.add(event.lastEventId);
        const li = el("li", kind + " " + event.data);
        li.dataset.event = event.lastEventId;
        events.appendChild(li);
      }
      if (kind === "sample") addSamples(data);
      if (kind === "validation") showValidation(data);
      if (kind === "leak") showLeak(data);
      if (kind === "step" && typeof data.loss === "number") {
        points.set(data.step, data.loss);
        draw();
        showRate(data);
        status.textContent = `step ${data.step}/${data.n} · loss ${data.loss.toFixed(4)}`;
      } else if (kind === "step") {
        status.textContent = `step ${data.i}/${data.n}`;
      }
      if (["completed", "failed", "canceled", "expired"].includes(kind)) {
        const saved = kind === "canceled" && live.dataset.kind === "train" && data.saved_step;
        document.getElementById("job-status").textContent = saved ? "stopped (saved)" : kind;
        const stop = document.querySelector('#job-actions [data-action="cancel-job"]');
        if (stop) stop.hidden = true;
        source.close();
      }
    });
  }
}

// ---------------------------------------------------------------- settings
function initLogView() {
  // The job page's log tail keeps growing while the job runs (a poll of /v1/jobs/{id}/log from its byte offset).
  const pre = document.getElementById("log");
  if (!pre) return;
  let offset = Number(pre.dataset.offset) || 0;
  async function poll() {
    try {
      const out = await api("GET", `/v1/jobs/${pre.dataset.job}/log?offset=${offset}`);
      if (out.text) {
        const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.textContent += out.text;
        if (atEnd) pre.scrollTop = pre.scrollHeight;
      }
      offset = out.offset;
      pre.dataset.offset = String(offset);
      if (!out.done) setTimeout(poll, 1500);
    } catch (error) { flash(error.message, true); }
  }
  setTimeout(poll, 1500);
}

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
  const yamlSubmit = document.getElementById("y-submit");
  const refresh = () => {
    submit.disabled = yamlBad || !gateOk();
    yamlSubmit.disabled = yamlBad || !gateOk();
  };
  refresh();
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
      if (action === "yaml-submit") await start(text.value);
    } catch (error) { flash(error.message, true); }
  });
  async function start(configYaml) {
    if (yamlBad) { flash("Fix the YAML tab first", true); return; }
    const body = {};
    for (const input of form.querySelectorAll("input")) {
      if (!input.name || input.value === "") continue;
      body[input.name] = input.type === "number" ? Number(input.value) : input.value;
    }
    if (configYaml !== undefined) body.config_yaml = configYaml;
    else body.options = familyOptions();
    try {
      const job = await api("POST", `/v1/datasets/${form.getAttribute("data-dataset")}/trainings`, body);
      location.href = "/studio/jobs/" + job.id;
    } catch (error) {
      if (configYaml !== undefined) {  // the server's verdict on the YAML belongs beside it
        result.hidden = false;
        result.textContent = error.message;
        result.className = "yaml-result error";
      }
      flash(error.message, true);
    }
  }
  function familyOptions() {  // the family's config fields as {"section.key": value}; empty = null
    const out = {};
    for (const el of form.querySelectorAll("[data-option]")) {
      const key = el.dataset.option;
      if (el.type === "checkbox") out[key] = el.checked;
      else if (el.type === "number") out[key] = el.value === "" ? null : Number(el.value);
      else out[key] = el.value;
    }
    return out;
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    await start(undefined);
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
    if (form.elements.control_scale) fields.control_scale = Number(form.elements.control_scale.value);
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
const EXPORT_HEADER = 24;  // px of column labels above the images in an exported grid

function exportGrid(table) {
  // One PNG: a label strip, then every cell image at its natural size, rows x columns as shown.
  const heads = Array.from(table.querySelectorAll("tr:first-child th")).slice(1).map((th) => th.textContent);
  const rows = Array.from(table.querySelectorAll("tr")).slice(1)
    .map((tr) => Array.from(tr.querySelectorAll("td")).slice(1).map((td) => td.querySelector("img")));
  const first = rows.flat().find((img) => img && img.naturalWidth > 0);
  if (!first) { flash("Render the grid first", true); return; }
  const w = first.naturalWidth, h = first.naturalHeight;
  const canvas = document.createElement("canvas");
  canvas.width = w * heads.length;
  canvas.height = EXPORT_HEADER + h * rows.length;
  const g = canvas.getContext("2d");
  g.fillStyle = "#ffffff";
  g.fillRect(0, 0, canvas.width, canvas.height);
  g.fillStyle = "#111111";
  g.font = "12px sans-serif";
  heads.forEach((label, c) => g.fillText(label, c * w + 4, 16, w - 8));
  rows.forEach((cells, r) => cells.forEach((img, c) => {
    if (img && img.naturalWidth > 0) g.drawImage(img, c * w, EXPORT_HEADER + r * h, w, h);
  }));
  canvas.toBlob((blob) => {
    const link = el("a");
    link.href = URL.createObjectURL(blob);
    link.download = "lorastudio-compare.png";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  }, "image/png");
}

const GRID_IN_FLIGHT = 8;  // cells queued at once (the service caps jobs in flight per key, 16 by default)

async function submitCell(body) {
  // One grid cell as an async generation job; a 429 (queue or key cap) waits its Retry-After and tries again.
  for (let attempt = 0; ; attempt++) {
    const response = await fetch("/v1/images/generations", { method: "POST", credentials: "same-origin",
      headers: { "X-CSRF-Token": CSRF, "Prefer": "respond-async", "Content-Type": "application/json" },
      body: JSON.stringify(body) });
    const data = await response.json().catch(() => ({}));
    if (response.ok) return data.id;
    if (response.status !== 429 || attempt >= 20) throw new Error(data.detail || ("HTTP " + response.status));
    const seconds = Math.min(30, Number(response.headers.get("Retry-After")) || 1);
    await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  }
}

function gridSeeds(form) {  // the Seeds field: up to four distinct non-negative integers, 0 when empty
  const seeds = form.elements.seed.value.split(",").map((x) => x.trim()).filter((x) => /^\d{1,9}$/.test(x)).map(Number);
  return seeds.length ? Array.from(new Set(seeds)).slice(0, 4) : [0];
}

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
  form.addEventListener("click", async (event) => {  // Evaluate: an `evaluate` job, then the page shows its mark
    const button = event.target.closest("[data-action=evaluate-run]");
    if (!button) return;
    const status = document.getElementById("c-eval-status");
    const prompts = form.elements.prompts.value.split("\n").map((p) => p.trim()).filter(Boolean).slice(0, 8);
    const scales = form.elements.scales.value.split(",").map(Number).filter((x) => x > 0 && x <= 2).slice(0, 4);
    const body = { prompts, scales: scales.length ? scales : [1.0], seeds: gridSeeds(form),
                   steps: Math.min(50, Number(form.elements.steps.value) || 20), size: form.elements.size.value };
    button.disabled = true;
    try {
      const job = await api("POST", `/v1/jobs/${button.dataset.job}/evaluations`, body);
      status.textContent = `Evaluating ${button.dataset.lora} (job ${job.id.slice(0, 8)})…`;
      const done = await finished(job.id);
      if (done.status !== "succeeded") throw new Error(`evaluate ${done.status}: ${done.error ? done.error.message : ""}`);
      const rec = done.result.recommendation;
      status.textContent = `Recommended: ${rec.checkpoint} at scale ${rec.scale}`;
      location.reload();
    } catch (error) { status.textContent = error.message; flash(error.message, true); button.disabled = false; }
  });
  document.getElementById("cmp-export").addEventListener("click", () => exportGrid(table));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    document.getElementById("cmp-export").hidden = true;
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
    for (const box of form.querySelectorAll('input[name="ckpt"]:checked')) {  // one column per checkpoint x scale
      const [job, step] = box.value.split(":");
      let row;
      try { row = await api("POST", `/v1/jobs/${job}/checkpoints/${step}/lora`); } catch (error) { flash(error.message, true); return; }
      const best = box.dataset.recommendedScale;
      for (const scale of scales) {
        columns.push({ label: `${box.dataset.lora} step ${step} × ${scale}`, loras: [{ id: row.id, scale }],
                       recommended: best !== undefined && Number(best) === scale });
      }
    }
    table.replaceChildren();
    const head = document.createElement("tr");
    head.appendChild(el("th", "prompt"));
    for (const c of columns) {
      const th = el("th", c.label + (c.recommended ? " ★" : ""));
      if (c.recommended) { th.classList.add("recommended"); th.title = "recommended by lorastudio evaluate"; }
      head.appendChild(th);
    }
    table.appendChild(head);
    const jobs = [];
    const seeds = gridSeeds(form);
    for (const [row, prompt] of prompts.entries()) {
      for (const seed of seeds) {
        const tr = document.createElement("tr");
        const leak = row === prompts.length - 1 && prompts.length > 1 && trigger ? " (leak row)" : "";
        tr.appendChild(el("td", prompt + leak + (seeds.length > 1 ? ` · seed ${seed}` : "")));
        for (const column of columns) {
          const td = el("td", "…");
          if (column.recommended) td.classList.add("recommended");
          tr.appendChild(td);
          jobs.push({ td, body: { prompt, loras: column.loras, seed, steps: Number(form.elements.steps.value) || 20,
                                  size: form.elements.size.value, response_format: "url" } });
        }
        table.appendChild(tr);
      }
    }
    let next = 0;
    async function lane() {  // a few cells in flight at a time: a big grid never trips the per-key job cap
      while (next < jobs.length) {
        const job = jobs[next++];
        job.id = await submitCell(job.body);
        const done = await finished(job.id);
        job.td.replaceChildren();
        if (done.status !== "succeeded") { job.td.textContent = done.status; continue; }
        const img = el("img");
        img.src = `/v1/images/${done.images[0]}`;
        img.alt = job.body.prompt;
        job.td.appendChild(img);
      }
    }
    try {
      await Promise.all(Array.from({ length: Math.min(GRID_IN_FLIGHT, jobs.length) }, lane));
      document.getElementById("cmp-export").hidden = false;
      flash(`Grid done: ${jobs.length} cell(s)`);
    } catch (error) { flash(error.message, true); }
  });
}

document.addEventListener("DOMContentLoaded", () => {  // runs after studio.js's (scripts load in order)
  for (const init of [initJobs, initLive, initLogView, initSettings, initTraining, initEnhance, initCompare]) init();
  document.body.dataset.ready = "1";  // handlers attached (the browser tests wait for this before clicking)
});
