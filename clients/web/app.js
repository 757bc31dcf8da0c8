// steer dashboard: calls ActivationService.GetSteeringTensors and
// GenerationService.GenerateFromTensors over gRPC-Web (same origin), with a minimal protobuf codec
// for the few messages it needs (field numbers from proto/steer/v1/*.proto).

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
// Packed varints -> a fake message of field-1 varints, so `fields` can read them.
function packedToFields(u8) {
  const w = []; let start = true;
  for (const b of u8) { if (start) w.push(8); w.push(b); start = b < 128; }
  return new Uint8Array(w);
}

// ---- gRPC-Web over fetch: yields each response message ----
async function* grpcWeb(path, body) {
  const frame = new Uint8Array(5 + body.length);
  new DataView(frame.buffer).setUint32(1, body.length);
  frame.set(body, 5);
  const headers = { "content-type": "application/grpc-web+proto", "x-grpc-web": "1", "x-request-id": "dash-" + Date.now() };
  // A server started with --auth-tokens wants a bearer token; it is kept for this tab only.
  const token = (document.getElementById("token")?.value || "").trim();
  if (token) { headers["authorization"] = "Bearer " + token; sessionStorage.setItem("steer-token", token); }
  const resp = await fetch(path, { method: "POST", headers, body: frame });
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

async function steeringTensors(additions, hook, useBos) {
  const w = new Writer();
  for (const a of additions) {
    const m = new Writer(); m.string(1, a.prompt); m.double(2, a.coeff); m.uint(3, a.layer);
    w.message(1, m);
  }
  w.uint(2, hook); w.bool(3, useBos);
  const tensors = [];
  for await (const msg of grpcWeb("/steer.v1.ActivationService/GetSteeringTensors", w.finish())) {
    const ev = decode(msg, { 2: "header", 3: "chunk" });
    if (ev.header) tensors.push({ headerBytes: ev.header, header: decode(ev.header, { 1: "dtype", 2: "shape", 4: "total" }), parts: [] });
    if (ev.chunk) tensors[tensors.length - 1].parts.push(decode(ev.chunk, { 2: "data" }).data || new Uint8Array(0));
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

async function run(ev) {
  ev.preventDefault();
  const results = $("results");
  results.dataset.done = "false";
  $("status").className = "";
  $("unsteered").innerHTML = ""; $("steered").innerHTML = ""; $("norms").innerHTML = "";
  const prompt = $("prompt").value, n = Number($("comparisons").value), tokens = Number($("tokens").value);
  const useBos = $("bos").checked, hook = Number($("hook").value);
  try {
    $("status").textContent = "computing steering tensors ...";
    const tensors = await steeringTensors(parseAdditions($("additions").value), hook, useBos);
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
    const sampling = new Writer();
    sampling.float(1, Number($("temperature").value)); sampling.float(2, Number($("top_p").value));
    sampling.float(4, Number($("rep").value)); sampling.float(5, Number($("freq").value));
    const setup = new Writer();
    setup.string(1, prompt); setup.bool(2, useBos); setup.message(3, sampling);
    setup.uint(4, n); setup.uint(5, tokens); setup.uint(6, Number($("seed").value)); setup.uint(7, tensors.length);
    const req = new Writer();
    req.message(1, setup);
    for (const t of tensors) { const it = new Writer(); it.bytes(1, t.headerBytes); it.bytes(2, t.data); req.message(2, it); }
    $("status").textContent = "generating ...";
    let finished = 0, streamed = 0;
    for await (const msg of grpcWeb("/steer.v1.GenerationService/GenerateFromTensors", req.finish())) {
      const e = decode(msg, { 1: "token", 2: "finished" });
      if (e.token) {
        const t = decode(e.token, { 1: "row", 5: "delta" });
        const row = Number(t.row || 0n);
        cells[row].querySelector(".text").textContent += t.delta ? new TextDecoder().decode(t.delta) : "";
        streamed++;
      } else if (e.finished) {
        const f = decode(e.finished, { 1: "row", 3: "text" });
        const cell = cells[Number(f.row || 0n)];
        cell.querySelector(".text").textContent = f.text ? new TextDecoder().decode(f.text) : "";
        cell.classList.add("done");
        finished++;
      }
    }
    $("status").textContent = `done: ${finished} completions, ${streamed} tokens streamed`;
    results.dataset.done = finished === 2 * n ? "true" : "error";
  } catch (err) {
    $("status").className = "error";
    $("status").textContent = String(err.message || err);
    results.dataset.done = "error";
  }
}

$("form").addEventListener("submit", run);
$("token").value = sessionStorage.getItem("steer-token") || "";
