// sdserve's page: no build step, no CDN. It posts with "stream": true and reads the server-sent
// events itself (EventSource cannot POST), shows progress and previews, then the images.
"use strict";
const $ = (id) => document.getElementById(id);
const SIZES = ["64x64", "128x128", "256x256", "512x512", "768x768"];

function headers(json = true) {
  const h = json ? { "Content-Type": "application/json" } : {};
  const key = $("key").value.trim();
  if (key) { h["Authorization"] = "Bearer " + key; localStorage.setItem("sdserve-key", key); }
  return h;
}

async function errorMessage(response) {
  try { const body = await response.json(); return body.error.message; }
  catch (_) { return "HTTP " + response.status; }
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("status").textContent = "failed";
}

function image(b64, alt) {
  const img = document.createElement("img");
  img.src = "data:image/png;base64," + b64;
  img.alt = alt;
  return img;
}

function handle(event, started) {
  switch (event.type) {
    case "sdserve.queued":
      $("status").textContent = event.position ? `queued, ${event.position} ahead` : "queued";
      break;
    case "sdserve.started":
      $("status").textContent = `running on ${event.replica_id}${event.cold ? " (cold start)" : ""}` +
        (event.model_load && event.model_load !== "none" ? ` · checkpoint loaded from ${event.model_load} in ${event.model_load_s.toFixed(2)} s` : "");
      break;
    case "sdserve.progress":
      $("progress").max = event.steps;
      $("progress").value = event.step;
      $("status").textContent = `step ${event.step} of ${event.steps}` + (event.eta_s != null ? `, ~${event.eta_s.toFixed(1)} s left` : "");
      break;
    case "image_generation.partial_image":
    case "image_edit.partial_image":
      $("previews").replaceChildren(image(event.b64_json, `preview ${event.partial_image_index + 1}`));
      break;
    case "image_generation.completed":
    case "image_edit.completed":
      $("previews").replaceChildren();
      $("progress").value = $("progress").max;
      $("results").appendChild(image(event.b64_json, "generated image"));
      break;
    case "sdserve.done":
      $("status").textContent = "done";
      $("timings").textContent = `seed ${event.seed} · queued ${event.queue_wait_s.toFixed(2)} s · ` +
        `ran ${event.service_time_s.toFixed(2)} s · total ${((performance.now() - started) / 1000).toFixed(2)} s · ` +
        `${$("model-select").value}${$("lora").value ? " + " + $("lora").value : ""} · ${event.replica_id}`;
      break;
    case "error":
      showError(event.error.message);
      break;
  }
}

// An edit is a multipart form (OpenAI's shape): the files, and every other field as text; the
// output has the image's own size.
function editForm(body) {
  const form = new FormData();
  form.append("image", $("image").files[0]);
  if ($("mask").files.length) form.append("mask", $("mask").files[0]);
  for (const [name, value] of Object.entries(body)) {
    if (name !== "size") form.append(name, typeof value === "object" ? JSON.stringify(value) : String(value));
  }
  form.append("strength", $("strength").value);
  return form;
}

async function generate(e) {
  e.preventDefault();
  $("go").disabled = true;
  $("job").hidden = false;
  $("error").hidden = true;
  for (const id of ["previews", "results"]) $(id).replaceChildren();
  $("timings").textContent = "";
  $("progress").value = 0;
  $("status").textContent = "sending…";
  const body = { prompt: $("prompt").value, size: $("size").value, n: Number($("n").value),
                 num_inference_steps: Number($("steps").value), stream: true, partial_images: 2 };
  if ($("negative").value.trim()) body.negative_prompt = $("negative").value;
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if ($("model-select").value) body.model = $("model-select").value;
  if ($("lora").value) body.loras = [{ id: $("lora").value, scale: Number($("lora-scale").value) }];
  const started = performance.now();
  const editing = $("mode").value === "edit";
  if (editing && !$("image").files.length) { showError("choose an image to edit"); $("go").disabled = false; return; }
  try {
    const response = editing
      ? await fetch("/v1/images/edits", { method: "POST", headers: headers(false), body: editForm(body) })
      : await fetch("/v1/images/generations", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    if (!response.ok) { showError(await errorMessage(response)); return; }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
        if (data) handle(JSON.parse(data), started);
      }
    }
  } catch (err) {
    showError("connection failed: " + err.message);
  } finally {
    $("go").disabled = false;
  }
}

// The fleet over the last minutes, sampled every 2 s: replicas, outstanding requests, and the
// checkpoint loads (host or disk) since the previous sample, read from /metrics.
const HISTORY = [];
const HISTORY_S = 300;

function listItems(texts) {
  return texts.map((text) => { const li = document.createElement("li"); li.textContent = text; return li; });
}

async function loadsSoFar() {
  const response = await fetch("/metrics", { headers: headers() });
  if (!response.ok) return null;
  let total = 0;
  for (const line of (await response.text()).split("\n")) {
    if (line.startsWith("sdserve_call_model_load_seconds_count")) total += Number(line.split(" ").pop());
  }
  return total;
}

function drawChart() {
  const canvas = $("chart");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  canvas.dataset.samples = HISTORY.length;
  if (HISTORY.length < 2) return;
  const now = HISTORY[HISTORY.length - 1].t;
  const top = Math.max(1, ...HISTORY.map((s) => Math.max(s.replicas, s.outstanding, s.loads)));
  const x = (t) => canvas.width * (1 - (now - t) / HISTORY_S);
  const y = (v) => canvas.height - 4 - (canvas.height - 8) * v / top;
  for (const [field, color] of [["replicas", "#2563eb"], ["outstanding", "#d97706"], ["loads", "#059669"]]) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    HISTORY.forEach((s, i) => (i ? ctx.lineTo(x(s.t), y(s[field])) : ctx.moveTo(x(s.t), y(s[field]))));
    ctx.stroke();
  }
  ctx.fillStyle = "#666";
  ctx.fillText(String(top), 2, 10);
}

let lastLoads = null;
async function refreshFleet() {
  try {
    const ready = await (await fetch("/readyz")).json();
    const w = ready.workers;
    $("fleet-summary").textContent = `${w.running} running · ${w.starting} starting · ${ready.outstanding} outstanding` +
      (ready.at_zero ? " · at zero: the next request starts a replica" : "");
    const response = await fetch("/v1/scheduler", { headers: headers() });
    if (response.status === 401) { $("key-row").hidden = false; return; }
    const scheduler = await response.json();
    const decisions = Object.entries(scheduler.latest || {}).map(([deployment, d]) => `${deployment}: ${d.desired} replicas — ${d.reason}`);
    $("decisions").replaceChildren(...listItems(decisions));
    const replicas = Object.entries(scheduler.replicas || {}).map(([id, r]) =>
      `${id}: ` + (r.resident ? `${r.resident.join(", ")} on the device` : "not yet reported") +
      (r.host && r.host.length ? ` · ${r.host.join(", ")} in host RAM` : "") + ` · ${r.free_slots} free`);
    $("replicas").replaceChildren(...listItems(replicas));
    const loads = await loadsSoFar();
    const t = performance.now() / 1000;
    HISTORY.push({ t, replicas: w.running, outstanding: ready.outstanding,
                   loads: loads !== null && lastLoads !== null ? loads - lastLoads : 0 });
    lastLoads = loads;
    while (HISTORY.length && t - HISTORY[0].t > HISTORY_S) HISTORY.shift();
    drawChart();
  } catch (_) { $("fleet-summary").textContent = "fleet: unavailable"; }
}

function options(select, names) {
  select.append(...names.map((name) => { const o = document.createElement("option"); o.value = o.textContent = name; return o; }));
}

async function init() {
  // the handlers first: a click before the catalog arrives must not submit the form natively
  $("form").addEventListener("submit", generate);
  $("mode").addEventListener("change", () => {
    const editing = $("mode").value === "edit";
    $("edit-fields").hidden = !editing;
    $("size-row").hidden = editing;
    $("go").textContent = editing ? "Edit" : "Generate";
  });
  $("size").replaceChildren(...SIZES.map((s) => { const o = document.createElement("option"); o.textContent = s; return o; }));
  $("size").value = "64x64";
  $("key").value = localStorage.getItem("sdserve-key") || "";
  try {
    const models = await fetch("/v1/models", { headers: headers() });
    if (models.status === 401) $("key-row").hidden = false;
    else if (models.ok) {
      const data = (await models.json()).data;
      $("model").textContent = data[0].id;
      options($("model-select"), data.filter((m) => m.kind !== "lora").map((m) => m.id));
      options($("lora"), data.filter((m) => m.kind === "lora").map((m) => m.id));
    }
  } finally {
    document.body.dataset.ready = "true";  // the catalog is in (or could not be read): tests wait for this
  }
  refreshFleet();
  setInterval(refreshFleet, 2000);
}
init();
