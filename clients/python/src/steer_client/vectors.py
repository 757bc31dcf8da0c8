"""Steering vector files (safetensors with steer's metadata), read without numpy.

    v = load_vector("love.safetensors")     # or VectorFile.data from the service
    v.meta["mode"], v.digest, v.tensors[0].point, v.tensors[0].values
    tensors = v.steering_tensors(scale=2.0, layers=(10, 20))   # for SteerClient.generate_stream

A file holds one [k, d_model] f32 tensor per hook point, named `resid_pre.L` or
`block_output.L`, and JSON metadata under the `steer` key (model, mode, where it came from, the
digest). Files are checked by the services (digest, model); this reader checks the format only.
"""
import json
import struct
from dataclasses import dataclass
from typing import List, Optional, Tuple

from ._proto.steer.v1 import tensor_pb2

FORMAT = "steer.vector/1"
MODES = {"prefix": tensor_pb2.STEERING_MODE_PREFIX, "all_positions": tensor_pb2.STEERING_MODE_ALL_POSITIONS}
_HOOKS = {"resid_pre": tensor_pb2.HOOK_RESID_PRE, "block_output": tensor_pb2.HOOK_BLOCK_OUTPUT}
_CHUNK = 1 << 20


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
        return self.meta["mode"]

    def steering_tensors(self, scale: float = 1.0, layers: Optional[Tuple[int, int]] = None):
        """The tensors to stream to a generation worker, times `scale`, only those at layers
        `layers[0]..=layers[1]` when given."""
        from . import SteeringTensor

        out = []
        for t in self.tensors:
            if layers is not None and not layers[0] <= t.layer <= layers[1]:
                continue
            data = struct.pack(f"<{len(t.values)}f", *(v * scale for v in t.values))
            header = tensor_pb2.TensorHeader(
                dtype=tensor_pb2.DTYPE_F32, shape=[t.k, t.d], total_bytes=len(data), mode=MODES[self.mode],
                point=tensor_pb2.HookPoint(hook=_HOOKS[t.hook], layer=t.layer))
            chunks = [tensor_pb2.TensorChunk(offset=o, data=data[o:o + _CHUNK]) for o in range(0, len(data), _CHUNK)]
            out.append(SteeringTensor(header=header, chunks=chunks))
        return out


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
