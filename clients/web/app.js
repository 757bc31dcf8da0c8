// steer dashboard: calls ActivationService.GetSteeringTensors, the vector library RPCs and
// GenerationService.GenerateFromTensors over gRPC-Web (same origin), with a minimal protobuf codec
// for the few messages it needs. Field numbers come from fields.js, generated from
// proto/steer/v1/*.proto (scripts/gen_web_fields.py; the test suite checks it is current).
import { E, F } from "./fields.js";

// {number: name} of the named fields of message `msg`, for `decode`.
const spec = (msg, ...names) => Object.fromEntries(names.map((n) => {
  if (!(n in F[msg])) throw new Error(`${msg} has no field ${n}`);
  return [F[msg][n], n];
}));

// ---- protobuf encoding ----
class Writer {
  constructor() { this.parts = []; }
  varint(n) {
    let v = BigInt(n);
    if (v < 0n) v += 1n << 64n;
    while (v > 127n) { this.parts.push(Number(v & 127n) | 128); v >>= 7n; }
    this.parts.push(Number(v));
  }
  tag(field, wire) { this.varint((field << 3) | wire); }
  uint(field, v) { if (v) { this.tag(field, 0); this.varint(v); } }
  bool(field, v) { if (v) { this.tag(field, 0); this.varint(1); } }
  bytes(field, u8) { this.tag(field, 2); this.varint(u8.length); for (const b of u8) this.parts.push(b); }
  string(field, s) { this.bytes(field, new TextEncoder().encode(s)); }
  message(field, w) { this.bytes(field, w.finish()); }
  double(field, v) { this.tag(field, 1); const a = new Uint8Array(8); new DataView(a.buffer).setFloat64(0, v, true); this.parts.push(...a); }
  float(field, v) { this.tag(field, 5); const a = new Uint8Array(4); new DataView(a.buffer).setFloat32(0, v, true); this.parts.push(...a); }
  finish() { return new Uint8Array(this.parts); }
}

// ---- protobuf decoding: [field, wireType, value] ----
function* fields(u8) {
  const dv = new DataView(u8.buffer, u8.byteOffset, u8.byteLength);
  let i = 0;
  const varint = () => { let r = 0n, s = 0n; for (;;) { const b = u8[i++]; r |= BigInt(b & 127) << s; if (b < 128) return r; s += 7n; } };
  while (i < u8.length) {
    const key = Number(varint());
    const field = key >> 3, wire = key & 7;
    let v;
    if (wire === 0) v = varint();
    else if (wire === 1) { v = dv.getFloat64(i, true); i += 8; }
    else if (wire === 2) { const n = Number(varint()); v = u8.subarray(i, i + n); i += n; }
    else if (wire === 5) { v = dv.getFloat32(i, true); i += 4; }
    else throw new Error("unsupported wire type " + wire);
    yield [field, wire, v];
  }
}
const decode = (u8, spec) => {
  const out = {};
  for (const [f, w, v] of fields(u8)) {
    const name = spec[f];
    if (!name) continue;
    if (name === "shape") { // repeated uint64, packed or not
      out.shape = out.shape || [];
      if (w === 2) { for (const [, , x] of fields(packedToFields(v))) out.shape.push(Number(x)); } else out.shape.push(Number(v));
    } else out[name] = v;
  }
  return out;
};
// Every value of a repeated field (messages as bytes), in order.
const repeated = (u8, field) => Array.from(fields(u8)).filter(([f]) => f === field).map(([, , v]) => v);
const text = (v) => (v ? new TextDecoder().decode(v) : "");
// Packed varints -> a fake message of field-1 varints, so `fields` can read them.
function packedToFields(u8) {
  const w = []; let start = true;
  for (const b of u8) { if (start) w.push(8); w.push(b); start = b < 128; }
  return new Uint8Array(w);
}

// ---- gRPC-Web over fetch: yields each response message ----
async function* grpcWeb(path, body, signal) {
  const frame = new Uint8Array(5 + body.length);
  new DataView(frame.buffer).setUint32(1, body.length);
  frame.set(body, 5);
  const headers = { "content-type": "application/grpc-web+proto", "x-grpc-web": "1", "x-request-id": "dash-" + Date.now() };
  // A server started with --auth-tokens wants a bearer token; it is kept for this tab only.
  const token = (document.getElementById("token")?.value || "").trim();
  if (token) { headers["authorization"] = "Bearer " + token; sessionStorage.setItem("steer-token", token); }
  const resp = await fetch(path, { method: "POST", headers, body: frame, signal });
  const status = (code, msg) => new Error(`${code}: ${decodeURIComponent(msg || "")}`);
  const hs = resp.headers.get("grpc-status");
  if (hs && hs !== "0") throw status(hs, resp.headers.get("grpc-message"));
  if (!resp.ok) throw new Error("HTTP " + resp.status);
  const reader = resp.body.getReader();
  let buf = new Uint8Array(0);
  for (;;) {
    const { value, done } = await reader.read();
    if (value) { const b = new Uint8Array(buf.length + value.length); b.set(buf); b.set(value, buf.length); buf = b; }
    while (buf.length >= 5) {
      const n = new DataView(buf.buffer, buf.byteOffset).getUint32(1);
      if (buf.length < 5 + n) break;
      const flag = buf[0], payload = buf.slice(5, 5 + n);
      buf = buf.slice(5 + n);
      if (flag & 0x80) {
        const t = new TextDecoder().decode(payload);
        const code = /grpc-status:\s*(\d+)/i.exec(t), msg = /grpc-message:\s*([^\r\n]*)/i.exec(t);
        if (code && code[1] !== "0") throw status(code[1], msg && msg[1]);
        return;
      }
      yield payload;
    }
    if (done) return;
  }
}

// ---- the page ----
const $ = (id) => document.getElementById(id);

function parseAdditions(text) {
  return text.split("\n").filter((l) => l.trim()).map((line, i) => {
    const m = /^\s*(\d+)[\s:]+(-?[\d.eE+-]+)[\s:](.*)$/.exec(line);
    if (!m) throw new Error(`addition ${i + 1}: expected LAYER COEFF TEXT`);
    return { layer: Number(m[1]), coeff: Number(m[2]), prompt: m[3] };
  });
}

// A GetSteeringTensorsRequest (also the `additions` source of ComputeVector).
function steeringRequest(additions, hook, useBos) {
  const w = new Writer();
  for (const a of additions) {
    const A = F.ActivationAddition;
    const m = new Writer(); m.string(A.prompt, a.prompt); m.double(A.coeff, a.coeff); m.uint(A.layer, a.layer);
    w.message(F.GetSteeringTensorsRequest.additions, m);
  }
  w.uint(F.GetSteeringTensorsRequest.hook, hook); w.bool(F.GetSteeringTensorsRequest.use_bos, useBos);
  return w;
}

async function steeringTensors(additions, hook, useBos, signal) {
  const tensors = [];
  if (!additions.length) return tensors; // library vectors only
  for await (const msg of grpcWeb("/steer.v1.ActivationService/GetSteeringTensors", steeringRequest(additions, hook, useBos).finish(), signal)) {
    const ev = decode(msg, spec("GetSteeringTensorsResponse", "header", "chunk"));
    if (ev.header) tensors.push({ headerBytes: ev.header, header: decode(ev.header, spec("TensorHeader", "dtype", "shape", "total_bytes")), parts: [] });
    if (ev.chunk) tensors[tensors.length - 1].parts.push(decode(ev.chunk, spec("TensorChunk", "data")).data || new Uint8Array(0));
  }
  for (const t of tensors) {
    const data = new Uint8Array(t.parts.reduce((n, p) => n + p.length, 0));
    let o = 0; for (const p of t.parts) { data.set(p, o); o += p.length; }
    t.data = data;
  }
  return tensors;
}

function showNorms(tensors) {
  const el = $("norms");
  el.innerHTML = "";
  if (!$("show_norms").checked) return;
  for (const [i, t] of tensors.entries()) {
    const [k, d] = t.header.shape;
    const f = new Float32Array(t.data.buffer, t.data.byteOffset, k * d);
    const norms = Array.from({ length: k }, (_, p) => Math.hypot(...f.subarray(p * d, (p + 1) * d)));
    const max = Math.max(...norms, 1e-9);
    const rows = norms.map((n, p) => `<div class="norm">position ${p}: ${n.toFixed(2)}<span class="bar" style="width:${(120 * n / max).toFixed(0)}px"></span></div>`);
    el.insertAdjacentHTML("beforeend", `<div><b>steering tensor ${i} [${k}, ${d}]</b>${rows.join("")}</div>`);
  }
}

// The ARENA seed's presets and two of the post's, written for GPT-2-XL's 48 layers; their layers
// are scaled to the served model's (as `steer demo --scale-layers` does).
const PRESETS = {
  "weddings (ARENA)": { prompt: "I went up to my friend and said", hook: 2, bos: false, layer: 20, coeff: 4,
    plus: "I talk about weddings constantly  ", minus: "I do not talk about weddings constantly", rep: 1.2, freq: 0 },
  "love-hate (ARENA)": { prompt: "I hate you because", hook: 2, bos: true, layer: 6, coeff: 8, plus: "Love ", minus: "Hate", rep: 1.2, freq: 0 },
  "eiffel (ARENA)": { prompt: "To see the eiffel tower, people flock to", hook: 2, bos: false, layer: 24, coeff: 10,
    plus: "The Eiffel Tower is in Rome", minus: "The Eiffel Tower is in France", rep: 1.2, freq: 0 },
  "post-1: Love - Hate": { prompt: "I hate you because", hook: 1, bos: true, layer: 6, coeff: 5, plus: "Love", minus: "Hate", rep: 1, freq: 1 },
  "post-5: Anger - Calm": { prompt: "I think you're", hook: 1, bos: true, layer: 20, coeff: 10, plus: "Anger", minus: "Calm", rep: 1, freq: 1 },
};
let nLayer = 48, modelLoaded = false;

async function loadModelInfo() {
  try {
    for await (const msg of grpcWeb("/steer.v1.ActivationService/GetModelInfo", new Uint8Array(0))) {
      const resp = decode(msg, spec("ActivationServiceGetModelInfoResponse", "info"));
      const info = decode(resp.info || new Uint8Array(0), spec("ModelInfo", "name", "n_layer", "d_model", "dtype"));
      nLayer = Number(info.n_layer || 48n);
      const dtype = (E.Dtype[String(Number(info.dtype || 0n))] || "DTYPE_UNSPECIFIED").replace("DTYPE_", "").toLowerCase();
      $("model").textContent = `${info.name ? new TextDecoder().decode(info.name) : "model"}: ${nLayer} layers, d_model ${Number(info.d_model || 0n)}, weights ${dtype}`;
      modelLoaded = true;
      listLibrary(); // it failed too if the token was missing
    }
  } catch (err) { $("model").textContent = String(err.message || err); }
}

async function applyPreset() {
  const p = PRESETS[$("preset").value];
  if (!p) return;
  if (!modelLoaded) await loadModelInfo(); // e.g. once a token has been entered
  const layer = Math.min(Math.floor(p.layer * nLayer / 48), nLayer - 1);
  $("prompt").value = p.prompt;
  $("additions").value = `${layer} ${p.coeff} ${p.plus}\n${layer} ${-p.coeff} ${p.minus}`;
  $("hook").value = String(p.hook); $("bos").checked = p.bos;
  $("temperature").value = 1; $("top_p").value = 0.3; $("rep").value = p.rep; $("freq").value = p.freq;
  $("presence").value = 0; $("top_k").value = 0;
  $("preset").dataset.applied = $("preset").value;
}

let controller = null;
let lastRun = null;

// ---- the vector library (ActivationService Put/Get/List/DeleteVector, ComputeVector) ----
// Applied library vectors: digest -> {name, scale input}; sent as GenerateSetup.vectors.
const applied = new Map();

async function unary(path, body) {
  for await (const msg of grpcWeb(path, body)) return msg;
  throw new Error(path + ": no response");
}

function vectorInfo(u8) {
  const V = F.VectorInfo;
  const info = decode(u8, spec("VectorInfo", "name", "digest", "mode", "positions", "bytes", "op", "window_start", "window_end"));
  const points = repeated(u8, V.points).map((p) => {
    const hp = decode(p, spec("HookPoint", "hook", "layer"));
    return `${Number(hp.hook || 0n) === 2 ? "block_output" : "resid_pre"}.${Number(hp.layer || 0n)}`;
  });
  let mode = (E.SteeringMode[String(Number(info.mode || 0n))] || "").replace("STEERING_MODE_", "").toLowerCase();
  if (mode === "range") mode = `${Number(info.window_start || 0n)}-${info.window_end === undefined ? "" : Number(info.window_end)}`;
  const op = (E.SteeringOp[String(Number(info.op || 0n))] || "STEERING_OP_ADD").replace("STEERING_OP_", "").toLowerCase();
  return { name: text(info.name), digest: text(info.digest), mode: op === "add" || op === "unspecified" ? mode : `${mode}, ${op}`, points,
    positions: Number(info.positions || 0n), bytes: Number(info.bytes || 0n) };
}

async function listLibrary() {
  const el = $("library");
  try {
    const resp = await unary("/steer.v1.ActivationService/ListVectors", new Uint8Array(0));
    const infos = repeated(resp, F.ListVectorsResponse.vectors).map(vectorInfo);
    el.innerHTML = infos.length ? "" : "<tr><td colspan=6>(empty)</td></tr>";
    for (const v of infos) {
      const tr = document.createElement("tr");
      tr.dataset.digest = v.digest;
      tr.innerHTML = `<td class="name"></td><td><code>${v.digest.slice(0, 12)}</code></td><td>${v.mode}</td><td>${v.points.join(" ")}</td>`
        + `<td>${v.bytes}</td><td><button type="button" class="apply">apply</button> <button type="button" class="download">download</button> `
        + `<button type="button" class="delete">delete</button></td>`;
      tr.querySelector(".name").textContent = v.name;
      tr.querySelector(".apply").onclick = () => applyVector(v);
      tr.querySelector(".download").onclick = () => downloadVector(v);
      tr.querySelector(".delete").onclick = async () => { await deleteVector(v); };
      el.appendChild(tr);
    }
    $("library_status").textContent = `${infos.length} vectors`;
  } catch (err) { $("library_status").textContent = String(err.message || err); }
}

function applyVector(v) {
  if (applied.has(v.digest)) return;
  const span = document.createElement("span");
  span.className = "applied";
  span.dataset.digest = v.digest;
  span.innerHTML = `<b></b> x <input type="number" step="any" value="1" class="scale"> `
    + `<select class="op" title="what it does (default: as its file says)"><option value="0">as filed</option><option value="1">add</option>`
    + `<option value="2">ablate</option><option value="3">clamp</option></select> `
    + `<input type="number" step="any" value="0" class="clamp" title="clamp value"> `
    + `<input type="text" class="window" placeholder="window" title="as filed when empty; all_positions, generated, A-B (positions A..B, B excluded; 0 is BOS) or A-"> `
    + `<button type="button">remove</button>`;
  span.querySelector("b").textContent = v.name;
  span.querySelector("button").onclick = () => { applied.delete(v.digest); span.remove(); };
  $("applied").appendChild(span);
  applied.set(v.digest, { name: v.name, scale: span.querySelector(".scale"), op: span.querySelector(".op"), clamp: span.querySelector(".clamp"),
    window: span.querySelector(".window") });
}

// A window as the wire's VectorRef/TensorHeader fields: [mode, start, end or null]; null when
// empty (as filed). Throws on a window it cannot read.
function parseWindow(text) {
  const w = text.trim().toLowerCase().replace(/-/g, "_");
  if (!w) return null;
  const named = { prefix: 1, all_positions: 2, all: 2, generated: 3, generated_only: 3 };
  if (w in named) return [named[w], 0, null];
  const m = /^(\d+)_(\d*)$/.exec(w);
  if (!m || (m[2] && Number(m[2]) <= Number(m[1]))) throw new Error(`window ${text}: expected all_positions, generated, A-B or A-`);
  return [4, Number(m[1]), m[2] ? Number(m[2]) : null];
}

async function downloadVector(v) {
  const G = F.GetVectorRequest;
  const w = new Writer(); w.string(G.ref, v.digest);
  const resp = await unary("/steer.v1.ActivationService/GetVector", w.finish());
  const file = decode(decode(resp, spec("GetVectorResponse", "vector")).vector, spec("VectorFile", "data"));
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([file.data], { type: "application/octet-stream" }));
  a.download = `${v.name || v.digest.slice(0, 12)}.safetensors`;
  a.click();
  URL.revokeObjectURL(a.href);
}

async function deleteVector(v) {
  const w = new Writer(); w.string(F.DeleteVectorRequest.ref, v.digest);
  await unary("/steer.v1.ActivationService/DeleteVector", w.finish());
  applied.delete(v.digest);
  document.querySelector(`.applied[data-digest="${v.digest}"]`)?.remove();
  await listLibrary();
}

// Saves the form's additions as a library vector (ComputeVector with store).
async function saveVector() {
  const C = F.ComputeVectorRequest;
  try {
    const w = new Writer();
    w.string(C.name, $("vector_name").value.trim());
    w.message(C.additions, steeringRequest(parseAdditions($("additions").value), Number($("hook").value), $("bos").checked));
    w.bool(C.store, true);
    for await (const msg of grpcWeb("/steer.v1.ActivationService/ComputeVector", w.finish())) {
      const ev = decode(msg, spec("ComputeVectorResponse", "vector"));
      if (ev.vector) $("library_status").textContent = "saved " + vectorInfo(decode(ev.vector, spec("VectorFile", "info")).info).name;
    }
    await listLibrary();
  } catch (err) { $("library_status").textContent = String(err.message || err); }
}

// ---- SAE features (ActivationService ListSaes, GetSaeFeatures, SaeVector) ----
const SAE_PAGE = 16;

async function listSaes() {
  try {
    const resp = await unary("/steer.v1.ActivationService/ListSaes", new Uint8Array(0));
    const saes = repeated(resp, F.ListSaesResponse.saes).map((u8) => {
      const s = decode(u8, spec("SaeInfo", "name", "d_sae", "hook_name", "unusable"));
      return { name: text(s.name), d_sae: Number(s.d_sae || 0n), hook: text(s.hook_name), unusable: text(s.unusable) };
    });
    $("sae_name").innerHTML = "";
    for (const s of saes) {
      const o = document.createElement("option");
      o.value = s.name; o.disabled = !!s.unusable;
      o.textContent = `${s.name} (${s.hook}, ${s.d_sae} features${s.unusable ? "; " + s.unusable : ""})`;
      $("sae_name").appendChild(o);
    }
    $("sae_status").textContent = `${saes.length} SAEs`;
  } catch (err) { $("sae_status").textContent = String(err.message || err); }
}

// One page of features from `first`: decoder norm, the tokens each promotes, and a button that
// stores scale x W_dec[f] as a library vector and applies it.
async function browseSae() {
  const G = F.GetSaeFeaturesRequest;
  const sae = $("sae_name").value;
  if (!sae) return;
  try {
    const w = new Writer();
    w.string(G.sae, sae); w.uint(G.first, Number($("sae_first").value)); w.uint(G.count, SAE_PAGE); w.uint(G.top_tokens, 5);
    const resp = await unary("/steer.v1.ActivationService/GetSaeFeatures", w.finish());
    const body = $("sae_features");
    body.innerHTML = "";
    for (const u8 of repeated(resp, F.GetSaeFeaturesResponse.features)) {
      const f = decode(u8, spec("SaeFeature", "index", "norm"));
      const index = Number(f.index || 0n);
      const tops = repeated(u8, F.SaeFeature.top_tokens).map((t) => JSON.stringify(text(decode(t, spec("TokenWeight", "text")).text)));
      const tr = document.createElement("tr");
      tr.dataset.feature = index;
      tr.innerHTML = `<td>${index}</td><td>${(f.norm || 0).toFixed(3)}</td><td class="tops"></td><td><button type="button">steer with it</button></td>`;
      tr.querySelector(".tops").textContent = tops.join(" ");
      tr.querySelector("button").onclick = () => steerWithFeature(sae, index);
      body.appendChild(tr);
    }
    $("sae_status").textContent = `${sae}: features ${$("sae_first").value}+`;
  } catch (err) { $("sae_status").textContent = String(err.message || err); }
}

async function steerWithFeature(sae, index) {
  const S = F.SaeVectorRequest;
  try {
    const w = new Writer();
    w.string(S.sae, sae); w.uint(S.features, index); w.double(S.scale, Number($("sae_scale").value)); w.bool(S.store, true);
    const resp = await unary("/steer.v1.ActivationService/SaeVector", w.finish());
    const file = decode(decode(resp, spec("SaeVectorResponse", "vector")).vector, spec("VectorFile", "info"));
    const v = vectorInfo(file.info);
    applyVector(v);
    $("sae_status").textContent = `applied ${v.name}`;
    await listLibrary();
  } catch (err) { $("sae_status").textContent = String(err.message || err); }
}

function exportJson() {
  if (!lastRun) return;
  const blob = new Blob([JSON.stringify(lastRun, null, 2)], { type: "application/json" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "steer-run.json";
  a.click();
  URL.revokeObjectURL(a.href);
}

async function run(ev) {
  ev.preventDefault();
  const results = $("results");
  results.dataset.done = "false";
  controller = new AbortController();
  const signal = controller.signal;
  $("cancel").disabled = false; $("export").disabled = true;
  if (!modelLoaded) loadModelInfo(); // the token may have been entered since the page loaded
  $("status").className = "";
  $("unsteered").innerHTML = ""; $("steered").innerHTML = ""; $("norms").innerHTML = "";
  const prompt = $("prompt").value, n = Number($("comparisons").value), tokens = Number($("tokens").value);
  const useBos = $("bos").checked, hook = Number($("hook").value);
  try {
    $("status").textContent = "computing steering tensors ...";
    const additions = parseAdditions($("additions").value);
    const tensors = await steeringTensors(additions, hook, useBos, signal);
    showNorms(tensors);
    const cells = [];
    for (let r = 0; r < 2 * n; r++) {
      const div = document.createElement("div");
      div.className = "completion";
      div.dataset.row = r;
      div.innerHTML = `<span class="prompt"></span><span class="text"></span>`;
      div.querySelector(".prompt").textContent = prompt;
      (r < n ? $("unsteered") : $("steered")).appendChild(div);
      cells.push(div);
    }
    const S = F.SamplingParameters, G = F.GenerateSetup, I = F.InlineTensor;
    const sampling = new Writer();
    sampling.float(S.temperature, Number($("temperature").value)); sampling.float(S.top_p, Number($("top_p").value));
    sampling.uint(S.top_k, Number($("top_k").value));
    sampling.float(S.repetition_penalty, Number($("rep").value)); sampling.float(S.frequency_penalty, Number($("freq").value));
    sampling.float(S.presence_penalty, Number($("presence").value));
    const setup = new Writer();
    setup.string(G.prompt, prompt); setup.bool(G.use_bos, useBos); setup.message(G.sampling, sampling);
    setup.uint(G.n_comparisons, n); setup.uint(G.max_new_tokens, tokens); setup.uint(G.seed, Number($("seed").value));
    setup.uint(G.n_tensors, tensors.length);
    for (const [digest, a] of applied) {
      const R = F.VectorRef;
      const r = new Writer(); r.string(R.digest, digest); r.double(R.scale, Number(a.scale.value));
      const op = Number(a.op.value);
      if (op) { r.uint(R.op, op); if (op === 3) r.float(R.clamp_value, Number(a.clamp.value)); }
      const win = parseWindow(a.window.value);
      if (win) { r.uint(R.mode, win[0]); r.uint(R.window_start, win[1]); if (win[2] !== null) r.uint(R.window_end, win[2]); }
      setup.message(G.vectors, r);
    }
    const req = new Writer();
    req.message(F.GenerateFromTensorsRequest.setup, setup);
    for (const t of tensors) {
      const it = new Writer(); it.bytes(I.header, t.headerBytes); it.bytes(I.data, t.data);
      req.message(F.GenerateFromTensorsRequest.tensors, it);
    }
    $("status").textContent = "generating ...";
    let finished = 0, streamed = 0;
    for await (const msg of grpcWeb("/steer.v1.GenerationService/GenerateFromTensors", req.finish(), signal)) {
      const e = decode(msg, spec("GenerateFromTensorsResponse", "token", "finished"));
      if (e.token) {
        const t = decode(e.token, spec("TokenEvent", "row", "text_delta"));
        const row = Number(t.row || 0n);
        cells[row].querySelector(".text").textContent += t.text_delta ? new TextDecoder().decode(t.text_delta) : "";
        streamed++;
      } else if (e.finished) {
        const f = decode(e.finished, spec("RowFinished", "row", "text"));
        const cell = cells[Number(f.row || 0n)];
        cell.querySelector(".text").textContent = f.text ? new TextDecoder().decode(f.text) : "";
        cell.classList.add("done");
        finished++;
      }
    }
    $("status").textContent = `done: ${finished} completions, ${streamed} tokens streamed`;
    results.dataset.done = finished === 2 * n ? "true" : "error";
    const text = (el) => Array.from(el.querySelectorAll(".text"), (t) => t.textContent);
    lastRun = {
      prompt, additions, vectors: Array.from(applied, ([digest, a]) => ({ digest, name: a.name, scale: Number(a.scale.value) })), hook: hook === 2 ? "BLOCK_OUTPUT" : "RESID_PRE", use_bos: useBos, tokens, comparisons: n,
      seed: Number($("seed").value),
      sampling: { temperature: Number($("temperature").value), top_p: Number($("top_p").value), top_k: Number($("top_k").value),
        repetition_penalty: Number($("rep").value), frequency_penalty: Number($("freq").value), presence_penalty: Number($("presence").value) },
      unsteered: text($("unsteered")), steered: text($("steered")),
    };
    $("export").disabled = false;
  } catch (err) {
    if (signal.aborted) {
      $("status").textContent = "cancelled";
      results.dataset.done = "cancelled";
    } else {
      $("status").className = "error";
      $("status").textContent = String(err.message || err);
      results.dataset.done = "error";
    }
  } finally {
    $("cancel").disabled = true;
  }
}

$("form").addEventListener("submit", run);
$("cancel").addEventListener("click", () => controller && controller.abort());
$("export").addEventListener("click", exportJson);
for (const name of Object.keys(PRESETS)) $("preset").insertAdjacentHTML("beforeend", `<option>${name}</option>`);
$("preset").addEventListener("change", applyPreset);
// ---- Evaluate: steered / unsteered perplexity of the texts at each layer (EvalService sweeps) ----

function layerList(spec) {
  const out = [];
  for (const part of spec.split(",").map((p) => p.trim()).filter(Boolean)) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) throw new Error(`layers: ${part}`);
    for (let l = Number(m[1]); l <= Number(m[2] ?? m[1]); l++) out.push(l);
  }
  return out.filter((l) => l < nLayer);
}

function drawPlot(points, xLabel, yLabel) {
  const W = 640, H = 300, L = 60, B = 40, T = 20, Rm = 20;
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs) + (xs.length < 2 ? 1 : 0)];
  const pad = (Math.max(...ys) - Math.min(...ys)) * 0.1 || 0.01;
  const [y0, y1] = [Math.min(...ys) - pad, Math.max(...ys) + pad];
  const sx = (x) => L + (x - x0) / (x1 - x0) * (W - L - Rm), sy = (y) => T + (H - T - B) * (1 - (y - y0) / (y1 - y0));
  const path = points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
  const dots = points.map((p) => `<circle cx="${sx(p[0]).toFixed(1)}" cy="${sy(p[1]).toFixed(1)}" r="3" fill="#1f77b4"/>`).join("");
  const yt = [y0 + pad, (y0 + y1) / 2, y1 - pad].map((v) => `<text x="${L - 6}" y="${sy(v) + 4}" text-anchor="end">${v.toFixed(3)}</text>`).join("");
  const xt = points.map((p) => `<text x="${sx(p[0])}" y="${H - B + 16}" text-anchor="middle">${p[0]}</text>`).join("");
  const one = sy(1) >= T && sy(1) <= H - B ? `<line x1="${L}" x2="${W - Rm}" y1="${sy(1)}" y2="${sy(1)}" stroke="#aaa" stroke-dasharray="4"/>` : "";
  $("eval_plot").innerHTML = `<svg width="${W}" height="${H}" font-size="11" font-family="sans-serif">`
    + `<rect x="${L}" y="${T}" width="${W - L - Rm}" height="${H - T - B}" fill="none" stroke="#444"/>${one}`
    + `<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="${path}"/>${dots}${yt}${xt}`
    + `<text class="x-label" x="${(L + W - Rm) / 2}" y="${H - 6}" text-anchor="middle">${xLabel}</text>`
    + `<text class="y-label" transform="translate(14,${(T + H - B) / 2}) rotate(-90)" text-anchor="middle">${yLabel}</text></svg>`;
  $("eval_plot").dataset.points = String(points.length);
}

// The sweep runs as a job of the server (EvalService): watched as it goes, cancellable, and
// listed afterwards so that any past sweep can be shown again.
let evalId = null;

const SWEEP_DONE = new Set(["SWEEP_STATE_DONE", "SWEEP_STATE_CANCELLED", "SWEEP_STATE_FAILED"]);

function sweepOf(u8) {
  const s = decode(u8, spec("Sweep", "id", "state", "done", "total", "error"));
  const rows = repeated(u8, F.Sweep.rows_json).map((r) => JSON.parse(text(r)));
  return { id: text(s.id), state: E.SweepState[String(Number(s.state || 0n))], done: Number(s.done || 0n),
    total: Number(s.total || 0n), error: text(s.error), rows };
}

// The perplexity ratio of the first text set per layer, and prompting's as a reference.
function plotSweep(sw) {
  const pts = sw.rows.filter((r) => r.method === "actadd").map((r) => [r.layer, Object.values(r.sets)[0].ratio]);
  const prompting = sw.rows.find((r) => r.method === "prompting");
  if (pts.length) drawPlot(pts, "layer", "perplexity ratio (steered / unsteered)");
  $("eval_status").textContent = `${sw.id}: ${sw.state.replace("SWEEP_STATE_", "").toLowerCase()}, ${sw.done}/${sw.total} settings`
    + (prompting ? `, prompting ratio ${Object.values(prompting.sets)[0].ratio.toFixed(3)}` : "") + (sw.error ? `: ${sw.error}` : "");
}

async function watchSweep(id) {
  const w = new Writer(); w.string(F.WatchSweepRequest.id, id);
  let last = null;
  for await (const msg of grpcWeb("/steer.v1.EvalService/WatchSweep", w.finish())) {
    last = sweepOf(decode(msg, spec("WatchSweepResponse", "sweep")).sweep);
    plotSweep(last);
  }
  return last;
}

async function listSweeps() {
  const resp = await unary("/steer.v1.EvalService/ListSweeps", new Uint8Array(0));
  const sweeps = repeated(resp, F.ListSweepsResponse.sweeps).map(sweepOf);
  $("eval_history").innerHTML = "<option value=''>(past sweeps)</option>" + sweeps.map((s) => `<option value="${s.id}">${s.id}: ${s.state.replace("SWEEP_STATE_", "").toLowerCase()}, ${s.done}/${s.total}</option>`).join("");
}

async function evaluate() {
  $("eval_cancel").disabled = false; $("eval_run").disabled = true;
  $("eval_plot").dataset.points = "0";
  try {
    if (!modelLoaded) await loadModelInfo();
    const S = F.StartSweepRequest, T = F.EvalTextSet;
    const w = new Writer();
    w.uint(S.kind, 1); // SWEEP_KIND_PERPLEXITY
    w.string(S.plus, $("eval_plus").value); w.string(S.minus, $("eval_minus").value);
    for (const l of layerList($("eval_layers").value)) { w.tag(S.layers, 0); w.varint(l); }
    w.double(S.coeffs, Number($("eval_coeff").value));
    w.uint(S.hook, Number($("hook").value)); w.bool(S.use_bos, $("bos").checked);
    const set = new Writer(); set.string(T.name, "texts");
    for (const t of $("eval_texts").value.split("\n").filter((t) => t.trim())) set.string(T.texts, t);
    w.message(S.sets, set);
    const started = sweepOf(decode(await unary("/steer.v1.EvalService/StartSweep", w.finish()), spec("StartSweepResponse", "sweep")).sweep);
    evalId = started.id;
    const last = await watchSweep(evalId);
    $("eval_status").dataset.state = last ? last.state : "";
    await listSweeps();
  } catch (err) {
    $("eval_status").textContent = String(err.message || err);
  } finally {
    $("eval_cancel").disabled = true; $("eval_run").disabled = false;
  }
}

$("eval_run").addEventListener("click", evaluate);
$("eval_cancel").addEventListener("click", async () => {
  if (!evalId) return;
  const w = new Writer(); w.string(F.CancelSweepRequest.id, evalId);
  await unary("/steer.v1.EvalService/CancelSweep", w.finish());
});
$("eval_history").addEventListener("change", async () => { if ($("eval_history").value) await watchSweep($("eval_history").value); });
$("lib_refresh").addEventListener("click", listLibrary);
$("sae_browse").addEventListener("click", browseSae);
$("sae_prev").addEventListener("click", () => { $("sae_first").value = Math.max(0, Number($("sae_first").value) - SAE_PAGE); browseSae(); });
$("sae_next").addEventListener("click", () => { $("sae_first").value = Number($("sae_first").value) + SAE_PAGE; browseSae(); });
$("sae_panel").addEventListener("toggle", () => { if ($("sae_panel").open && !$("sae_name").options.length) listSaes(); });
$("save_vector").addEventListener("click", saveVector);
loadModelInfo();
$("token").value = sessionStorage.getItem("steer-token") || "";
