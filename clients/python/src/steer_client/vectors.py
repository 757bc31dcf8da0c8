"""Steering vector files (safetensors with steer's metadata), read and written without numpy.

    v = load_vector("love.safetensors")     # or VectorFile.data from the service
    v.meta["mode"], v.op, v.digest, v.tensors[0].point, v.tensors[0].values
    tensors = v.steering_tensors(scale=2.0, layers=(10, 20))   # for SteerClient.generate_stream
    abl = v.steering_tensors(op="ablate", window="generated")   # the file's tensors as directions
    f = vector_from_sae("saes/gpt2-res-8", [1234], scale=40.0, d_model=1600, n_layer=48)
    f.save("golden-gate.safetensors")

A window is `prefix`, `all_positions`, `generated`, `A-B` (positions A..B, B excluded; 0 is
BOS) or `A-` (A on); an op is `add`, `ablate` or `clamp=VALUE`.

A file holds one [k, d_model] f32 tensor per hook point, named `resid_pre.L` or
`block_output.L`, and JSON metadata under the `steer` key (model, mode, where it came from, the
digest). Files are checked by the services (digest, model); this reader checks the format only.
"""
import decimal
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ._proto.steer.v1 import tensor_pb2

FORMAT = "steer.vector/1"
MODES = {"prefix": tensor_pb2.STEERING_MODE_PREFIX, "all_positions": tensor_pb2.STEERING_MODE_ALL_POSITIONS,
         "generated": tensor_pb2.STEERING_MODE_GENERATED_ONLY}
OPS = {"add": tensor_pb2.STEERING_OP_ADD, "ablate": tensor_pb2.STEERING_OP_ABLATE, "clamp": tensor_pb2.STEERING_OP_CLAMP}
_HOOKS = {"resid_pre": tensor_pb2.HOOK_RESID_PRE, "block_output": tensor_pb2.HOOK_BLOCK_OUTPUT}
_CHUNK = 1 << 20


def parse_window(window: str) -> Tuple[int, int, Optional[int]]:
    """A window's wire fields (mode, window_start, window_end)."""
    w = window.strip().lower().replace("-", "_") if not window.strip()[:1].isdigit() else window.strip()
    w = {"all": "all_positions", "generated_only": "generated"}.get(w, w)
    if w in MODES:
        return MODES[w], 0, None
    a, sep, b = w.replace("..", "-").partition("-")
    if not sep or not a.isdigit() or (b and not b.isdigit()) or (b and int(b) <= int(a)):
        raise ValueError(f"window {window!r}: expected prefix, all_positions, generated, A-B or A- (positions A..B, B excluded)")
    return tensor_pb2.STEERING_MODE_RANGE, int(a), (int(b) if b else None)


def parse_op(op: str) -> Tuple[int, float]:
    """An op's wire fields (op, clamp_value): `add`, `ablate` or `clamp=VALUE`."""
    name, sep, value = op.strip().replace(":", "=").partition("=")
    name = name.strip().lower()
    if name in ("add", "ablate") and not sep:
        return OPS[name], 0.0
    if name == "clamp" and sep:
        try:
            v = float(value)
        except ValueError:
            v = float("nan")
        if v == v and abs(v) != float("inf"):
            return OPS["clamp"], v
    raise ValueError(f"op {op!r}: expected add, ablate or clamp=VALUE")


def _f32(v: float) -> float:
    return struct.unpack("<f", struct.pack("<f", v))[0]


def _f32_str(v: float) -> str:
    """An f32 as Rust's `Display` writes it: the shortest digits that read back, no exponent."""
    f = _f32(v)
    for p in range(1, 10):
        s = "%.*e" % (p - 1, f)
        if _f32(float(s)) == f:
            break
    out = format(decimal.Decimal(s), "f")
    return out


@dataclass
class VectorTensor:
    point: str  # "resid_pre.6"
    k: int
    d: int
    values: List[float]

    @property
    def hook(self) -> str:
        return self.point.split(".")[0]

    @property
    def layer(self) -> int:
        return int(self.point.split(".")[1])

    def norm(self) -> float:
        return sum(v * v for v in self.values) ** 0.5


@dataclass
class Vector:
    meta: dict
    tensors: List[VectorTensor]

    @property
    def digest(self) -> str:
        return self.meta["digest"]

    @property
    def mode(self) -> str:
        """The window: `prefix`, `all_positions`, `generated`, `A-B` or `A-`."""
        return self.meta["mode"]

    @property
    def op(self) -> str:
        """What the tensors do: `add` (files from before ops), `ablate` or `clamp=VALUE`."""
        return self.meta.get("op", "add")

    def steering_tensors(self, scale: float = 1.0, layers: Optional[Tuple[int, int]] = None, op: Optional[str] = None,
                         window: Optional[str] = None):
        """The tensors to stream to a generation worker, times `scale`, only those at layers
        `layers[0]..=layers[1]` when given, applied as `op` over `window` (default: the file's)."""
        from . import SteeringTensor

        mode, start, end = parse_window(window or self.mode)
        op_kind, clamp = parse_op(op or self.op)
        out = []
        for t in self.tensors:
            if layers is not None and not layers[0] <= t.layer <= layers[1]:
                continue
            data = struct.pack(f"<{len(t.values)}f", *(v * scale for v in t.values))
            header = tensor_pb2.TensorHeader(
                dtype=tensor_pb2.DTYPE_F32, shape=[t.k, t.d], total_bytes=len(data), mode=mode, window_start=start,
                op=op_kind, clamp_value=clamp, point=tensor_pb2.HookPoint(hook=_HOOKS[t.hook], layer=t.layer))
            if end is not None:
                header.window_end = end
            chunks = [tensor_pb2.TensorChunk(offset=o, data=data[o:o + _CHUNK]) for o in range(0, len(data), _CHUNK)]
            out.append(SteeringTensor(header=header, chunks=chunks))
        return out

    def to_bytes(self) -> bytes:
        """The file's bytes (safetensors with the `steer` metadata), as the services read them."""
        names = [t["name"] for t in self.meta["tensors"]]
        by_name = {t.point: t for t in self.tensors}
        header, offset, body = {}, 0, b""
        for n in names:
            t = by_name[n]
            data = struct.pack(f"<{len(t.values)}f", *t.values)
            header[n] = {"dtype": "F32", "shape": [t.k, t.d], "data_offsets": [offset, offset + len(data)]}
            offset += len(data)
            body += data
        header["__metadata__"] = {"steer": json.dumps(self.meta, separators=(",", ":"))}
        h = json.dumps(header, separators=(",", ":")).encode()
        h += b" " * (-len(h) % 8)
        return struct.pack("<Q", len(h)) + h + body

    def save(self, path):
        with open(path, "wb") as f:
            f.write(self.to_bytes())


def parse_vector(data: bytes) -> Vector:
    """A vector file's bytes."""
    if len(data) < 8:
        raise ValueError("not a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    info = header.pop("__metadata__", {}) or {}
    meta = json.loads(info.get("steer") or "{}")
    if meta.get("format") != FORMAT:
        raise ValueError(f"not a steering vector file (no steer metadata of format {FORMAT})")
    body = data[8 + n:]
    tensors = []
    for t in meta["tensors"]:
        h = header[t["name"]]
        if h["dtype"] != "F32" or len(h["shape"]) != 2:
            raise ValueError(f"{t['name']}: {h['dtype']} {h['shape']}, expected F32 [k, d]")
        a, b = h["data_offsets"]
        k, d = h["shape"]
        tensors.append(VectorTensor(t["name"], k, d, list(struct.unpack(f"<{k * d}f", body[a:b]))))
    return Vector(meta, tensors)


def load_vector(path) -> Vector:
    with open(path, "rb") as f:
        return parse_vector(f.read())


_POINT_ORDER = {"resid_pre": 0, "block_output": 1}


def _digest(mode: str, op: str, tensors: Sequence[VectorTensor]) -> str:
    """SHA-256 over the format, the mode, the op (when not add) and each tensor's name, shape
    and f32 bytes, in point order: the services' digest (steer-vector's format.rs)."""
    h = hashlib.sha256()
    h.update(FORMAT.encode() + b"\n" + mode.encode() + b"\n")
    if op != "add":
        h.update(f"op {op}\n".encode())
    for t in tensors:
        h.update(f"{t.point} {t.k} {t.d}\n".encode())
        h.update(struct.pack(f"<{len(t.values)}f", *t.values))
    return h.hexdigest()


def _read_floats(dtype: str, raw: bytes) -> List[float]:
    if dtype == "F32":
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    if dtype == "F16":
        return list(struct.unpack(f"<{len(raw) // 2}e", raw))
    if dtype == "BF16":
        return [struct.unpack("<f", b"\x00\x00" + raw[i:i + 2])[0] for i in range(0, len(raw), 2)]
    raise ValueError(f"sae_weights.safetensors.W_dec: {dtype}: expected F32, F16 or BF16")


def vector_from_sae(sae_dir, features: Sequence[int], scale: float = 1.0, clamp: Optional[float] = None, *,
                    d_model: int, n_layer: int, name: Optional[str] = None, model: str = "", fingerprint: str = "") -> Vector:
    """A vector from features of a sparse autoencoder in SAELens's layout (cfg.json with d_in,
    d_sae, hook_name, model_name; sae_weights.safetensors with W_dec [d_sae, d_in]): ADD
    `scale * sum(W_dec[f])` at every position, or with `clamp`, CLAMP that sum's direction to
    `clamp`. `d_model`, `n_layer` (and `fingerprint`, SteerClient.model_info().weights_fingerprint)
    are the served model's: an SAE for another d_model, or a hook other than
    blocks.L.hook_resid_pre (RESID_PRE L) / blocks.L.hook_resid_post (BLOCK_OUTPUT L), is refused
    naming the field, as `steer vector from-sae` does."""
    with open(os.path.join(sae_dir, "cfg.json")) as f:
        cfg = json.load(f)
    meta_cfg = cfg.get("metadata") or {}
    hook_name = cfg.get("hook_name") or meta_cfg.get("hook_name")
    model_name = cfg.get("model_name") or meta_cfg.get("model_name") or ""
    d_in, d_sae = cfg.get("d_in"), cfg.get("d_sae")
    if not isinstance(d_in, int) or not isinstance(d_sae, int) or d_in <= 0 or d_sae <= 0:
        raise ValueError("cfg.json.d_in: d_in and d_sae must be positive integers")
    if d_in != d_model:
        raise ValueError(f"cfg.json.d_in: the SAE reads d_in {d_in}, the model has d_model {d_model}")
    parts = (hook_name or "").split(".")
    kinds = {"hook_resid_pre": "resid_pre", "hook_resid_post": "block_output"}
    if len(parts) != 3 or parts[0] != "blocks" or not parts[1].isdigit() or parts[2] not in kinds:
        raise ValueError(f"cfg.json.hook_name: `{hook_name}`: expected blocks.L.hook_resid_pre or blocks.L.hook_resid_post")
    layer = int(parts[1])
    if layer >= n_layer:
        raise ValueError(f"cfg.json.hook_name: `{hook_name}`: layer {layer} does not exist in a {n_layer}-layer model")
    point = f"{kinds[parts[2]]}.{layer}"
    with open(os.path.join(sae_dir, "sae_weights.safetensors"), "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    w = header.get("W_dec")
    if w is None or w["shape"] != [d_sae, d_in]:
        raise ValueError(f"sae_weights.safetensors.W_dec: missing or not [d_sae {d_sae}, d_in {d_in}]")
    a, b = w["data_offsets"]
    width = (b - a) // (d_sae * d_in)
    raw = data[8 + n + a:8 + n + b]
    if not features:
        raise ValueError("features: give at least one feature index")
    total = [0.0] * d_in
    rows_digest = hashlib.sha256()
    for i, feat in enumerate(features):
        if not 0 <= feat < d_sae:
            raise ValueError(f"features[{i}]: {feat}: this SAE has features 0 to {d_sae - 1}")
        if feat in features[:i]:
            raise ValueError(f"features[{i}]: {feat} is given twice")
        row = _read_floats(w["dtype"], raw[feat * d_in * width:(feat + 1) * d_in * width])
        total = [t + v for t, v in zip(total, row)]
        rows_digest.update(struct.pack(f"<{d_in}f", *row))
    values = [_f32(t) for t in total] if clamp is not None else [_f32(t * scale) for t in total]
    op = "add"
    if clamp is not None:
        if all(v == 0.0 for v in values):
            raise ValueError("features: the features' decoder rows sum to zero: no direction to clamp")
        op = f"clamp={_f32_str(clamp)}"
    t = VectorTensor(point, 1, d_in, values)
    name = name or f"{os.path.basename(os.path.normpath(sae_dir))}-f{','.join(map(str, features))}"
    meta = {
        "format": FORMAT,
        "name": name,
        "model": {"name": model, "revision": "", "d_model": d_model, "n_layer": n_layer, "architecture": "gpt2",
                  **({"fingerprint": fingerprint} if fingerprint else {})},
        "mode": "all_positions",
        **({"op": op} if op != "add" else {}),
        "origin": {"kind": "sae", "model_name": model_name, "hook_name": hook_name, "d_sae": d_sae, "source": str(sae_dir),
                   "features": list(features), "scale": float(scale), "w_dec_digest": rows_digest.hexdigest()},
        "tensors": [{"name": point, "hook": point.split(".")[0], "layer": layer, "k": 1,
                     "norm": _f32(sum(v * v for v in values) ** 0.5)}],
        "digest": _digest("all_positions", op, [t]),
        "created_by": "steer_client (python)",
    }
    return Vector(meta, [t])
