"""Python client of steer.

    from steer_client import SteerClient
    client = SteerClient("localhost:50051")  # or "http://localhost:50051", as the CLI's --url
    unsteered, steered = client.calculate_and_apply_steering_vector(
        "I went up to my friend and said",
        activation_additions=[(20, 4.0, "I talk about weddings constantly  "),
                              (20, -4.0, "I do not talk about weddings constantly")],
        n_tokens=50, n_comparisons=3, use_bos=False, hook="block_output")

mirrors the ARENA exercise's calculate_and_apply_steering_vector. Stubs come from
clients/python/generate.py.
"""
import itertools
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Tuple

import grpc

from ._proto.steer.v1 import activation_pb2, activation_pb2_grpc
from ._proto.steer.v1 import generation_pb2, generation_pb2_grpc
from ._proto.steer.v1 import tensor_pb2

__all__ = ["evals", "SteerClient", "Completion", "POST", "SEED", "activation_pb2", "generation_pb2", "tensor_pb2", "load_vector",
           "parse_vector", "Vector"]

HOOKS = {"resid_pre": tensor_pb2.HOOK_RESID_PRE, "block_output": tensor_pb2.HOOK_BLOCK_OUTPUT}
_HOOK_NAMES = {v: k for k, v in HOOKS.items()}
#: Finish reasons as every front end prints them (OpenAI's words).
FINISH_REASONS = {generation_pb2.FINISH_REASON_LENGTH: "length", generation_pb2.FINISH_REASON_EOS: "stop",
                  generation_pb2.FINISH_REASON_CANCELLED: "cancelled", generation_pb2.FINISH_REASON_STOP: "stop"}


def _hook(name) -> int:
    """A hook kind by name, as the CLI and HTTP spell it: `resid_pre` or `block_output` (dashes
    and any case accepted too); a proto enum value passes through."""
    if isinstance(name, int):
        return name
    key = str(name).strip().lower().replace("-", "_")
    if key not in HOOKS:
        raise ValueError(f"hook {name!r}: expected one of {', '.join(HOOKS)} (resid-pre and block-output too)")
    return HOOKS[key]


def point_name(p) -> str:
    """A HookPoint as every front end prints it: `resid_pre.6`."""
    return f"{_HOOK_NAMES.get(p.hook, '?')}.{p.layer}"


def address(addr: str):
    """(target, tls) of an address in the one form every front end takes: host:port,
    http://host:port, https://host:port (TLS), or dns:host:port (every address of a name, also
    dns://DNS-SERVER/host:port to ask a given DNS server); a missing port is 50051, the server's."""
    a = addr.strip()
    # gRPC's own form with a DNS server to ask: dns://AUTHORITY/host:port, passed through.
    m = re.fullmatch(r"dns://([^/]+)/([^/]+:\d+)", a)
    if m:
        return a, False
    tls = False
    for scheme in ("https://", "http://", "dns+https:", "dns:"):
        if a.startswith(scheme):
            tls = scheme.startswith("https") or scheme.startswith("dns+https")
            rest = a[len(scheme):].lstrip("/").rstrip("/")
            break
    else:
        if "://" in a:
            raise ValueError(f"address {addr!r}: unknown scheme (give host:port, http://host:port, https://host:port or dns:host:port)")
        scheme, rest = "", a.rstrip("/")
    if not rest or any(c in rest for c in "/?# "):
        raise ValueError(f"address {addr!r}: not host:port")
    host, sep, port = rest.rpartition(":")
    if not sep or port.endswith("]"):
        rest = f"{rest}:50051"
    elif not port.isdigit() or not host:
        raise ValueError(f"address {addr!r}: {port!r} is not a port")
    return (f"dns:///{rest}" if scheme.startswith("dns") else rest), tls

# The named sampling settings, spelled out once here (as SamplingParameters::post()/seed() are in
# the Rust crates); every method starts from one of them and applies the keywords given.
#: The ActAdd post's: temperature 1, top_p 0.3, TransformerLens frequency penalty 1.
POST = {"temperature": 1.0, "top_p": 0.3, "top_k": 0, "repetition_penalty": 1.0, "frequency_penalty": 1.0,
        "presence_penalty": 0.0}
#: The ARENA seed's: temperature 1, top_p 0.3, Hugging Face repetition penalty 1.2.
SEED = {**POST, "repetition_penalty": 1.2, "frequency_penalty": 0.0}


def _sampling(preset, overrides):
    unknown = set(overrides) - set(POST)
    if unknown:
        raise TypeError(f"unknown sampling keywords: {sorted(unknown)} (known: {sorted(POST)})")
    params = {**preset, **overrides}
    top_p = params.pop("top_p")
    sampling = generation_pb2.SamplingParameters(**params)
    if top_p is not None:
        sampling.top_p = top_p
    return sampling


def no_op_warnings(tensors, n_layer) -> List[str]:
    """Why steering with `tensors` cannot change a completion (as the CLI warns and HTTP returns):
    a tensor of zeros (a coefficient of 0), or a prefix at the last block's output, which no
    block reads (it moves only the logits of the positions it covers)."""
    out = []
    for t in tensors:
        if all(v == 0.0 for v in t._flat()):
            out.append(f"{t.point}: the steering tensor is all zeros (a coefficient of 0?): "
                       "the steered rows will equal the unsteered")
        elif (t.header.mode != tensor_pb2.STEERING_MODE_ALL_POSITIONS and t.header.point.hook == tensor_pb2.HOOK_BLOCK_OUTPUT
              and t.header.point.layer == n_layer - 1):
            out.append(f"{t.point}: no block reads the last block's output, so a prefix there changes only the logits of "
                       f"the {t.shape[0]} positions it covers: the completion does not change unless it covers the whole "
                       "prompt (steer an earlier layer, or use resid_pre)")
    return out


@dataclass
class Completion:
    row: int
    steered: bool
    text: str
    token_ids: List[int]
    finish_reason: str
    seed: int
    worker: str = ""


@dataclass(repr=False)
class SteeringTensor:
    """A steering tensor (or an activation) as streamed: its header (hook point, shape, mode)
    and its f32 bytes in chunks. `shape`, `values()` (rows), `numpy()` and `point` read it."""
    header: tensor_pb2.TensorHeader
    chunks: List[tensor_pb2.TensorChunk] = field(default_factory=list)

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.header.shape)

    @property
    def point(self) -> str:
        """Where it applies, `resid_pre.6`."""
        return point_name(self.header.point)

    def _flat(self) -> List[float]:
        import struct

        data = b"".join(c.data for c in self.chunks)
        return list(struct.unpack(f"<{len(data) // 4}f", data))

    def values(self) -> List[List[float]]:
        """The values as rows: `shape[0]` lists of `shape[1]` floats."""
        flat = self._flat()
        d = self.shape[-1] if self.shape else max(len(flat), 1)
        return [flat[i:i + d] for i in range(0, len(flat), d)]

    def numpy(self):
        """The values as a float32 numpy array of `shape` (needs numpy)."""
        import numpy as np

        return np.frombuffer(b"".join(c.data for c in self.chunks), dtype="<f4").reshape(self.shape).copy()

    def position_norms(self) -> List[float]:
        return [sum(v * v for v in row) ** 0.5 for row in self.values()]

    def with_op(self, op: str) -> "SteeringTensor":
        """The same tensor applied as `op`: `add`, `ablate` or `clamp=VALUE`."""
        header = tensor_pb2.TensorHeader()
        header.CopyFrom(self.header)
        header.op, header.clamp_value = parse_op(op)
        return SteeringTensor(header=header, chunks=self.chunks)

    def in_window(self, window: str) -> "SteeringTensor":
        """The same tensor over `window`: `prefix`, `all_positions`, `generated`, `A-B`, `A-`."""
        header = tensor_pb2.TensorHeader()
        header.CopyFrom(self.header)
        header.mode, header.window_start, end = parse_window(window)
        header.ClearField("window_end")
        if end is not None:
            header.window_end = end
        return SteeringTensor(header=header, chunks=self.chunks)

    def __repr__(self):
        norms = ", ".join(f"{n:.1f}" for n in self.position_norms()[:8])
        more = ", ..." if len(self.position_norms()) > 8 else ""
        return f"SteeringTensor({self.point}, shape {list(self.shape)}, position norms [{norms}{more}])"


# Codes a generation ends with when its worker went away rather than refused it: replayed by run().
_WORKER_LOST = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


class SteerClient:
    """Connects to an activation endpoint and one or more generation endpoints (round-robin).

    A generation address `dns:host:port` balances each call over every address the name
    resolves to (gRPC's round_robin policy: a Kubernetes headless Service, say). `run` replays a
    generation whose worker went away (UNAVAILABLE, a reset stream) on the next endpoint, up
    to `retries` times: from the same seed, so the same tokens.

    TLS: pass `tls=True` (the system's roots) or `tls_ca` (a PEM file path or bytes) and
    optionally `tls_identity=(cert_pem, key_pem)` for mutual TLS. Tokens: `token`, or the
    STEER_TOKEN environment variable, is sent as `authorization: Bearer TOKEN`. Every call has a
    deadline of `timeout` seconds unless a method is given its own.
    """

    def __init__(self, activation: str, generation: Optional[Sequence[str]] = None, *, tls: bool = False,
                 tls_ca=None, tls_identity=None, tls_domain: Optional[str] = None, token: Optional[str] = None,
                 timeout: float = 600.0, retries: int = 2):
        self._retries = retries
        generation = list(generation or [activation])
        activation, act_tls = address(activation)
        targets = [address(g) for g in generation]
        tls = tls or act_tls or any(t for _, t in targets)
        generation = [t for t, _ in targets]
        opts = [("grpc.max_receive_message_length", 64 << 20)]
        if tls_domain:
            opts.append(("grpc.ssl_target_name_override", tls_domain))
        if isinstance(tls_ca, str):
            with open(tls_ca, "rb") as f:
                tls_ca = f.read()
        def options(target):
            # A dns: name: every address it resolves to, each call to the next (gRPC's
            # round_robin), re-resolved as they change; otherwise the one address given.
            return opts + [("grpc.lb_policy_name", "round_robin")] if target.startswith("dns:") else opts

        if tls or tls_ca or tls_identity:
            key, cert = (tls_identity[1], tls_identity[0]) if tls_identity else (None, None)
            creds = grpc.ssl_channel_credentials(root_certificates=tls_ca, private_key=key, certificate_chain=cert)
            make = lambda target: grpc.secure_channel(target, creds, options=options(target))  # noqa: E731
        else:
            make = lambda target: grpc.insecure_channel(target, options=options(target))  # noqa: E731
        token = token if token is not None else os.environ.get("STEER_TOKEN")
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self._timeout = timeout
        self._channels = [make(activation)] + [make(g) for g in generation]
        self.activation = activation_pb2_grpc.ActivationServiceStub(self._channels[0])
        self._generation = [generation_pb2_grpc.GenerationServiceStub(c) for c in self._channels[1:]]
        self._next = itertools.cycle(range(len(self._generation)))

    def _call(self, timeout):
        """Keyword arguments of every call: the token and the deadline."""
        return {"metadata": self._metadata, "timeout": self._timeout if timeout is None else timeout}

    def close(self):
        for c in self._channels:
            c.close()

    def model_info(self):
        return self.activation.GetModelInfo(activation_pb2.ActivationServiceGetModelInfoRequest(), **self._call(None)).info

    def steering_tensors(self, activation_additions: Iterable[Tuple[int, float, str]], hook="resid_pre",
                         use_bos=True, strict_lengths=False, timeout=None) -> List[SteeringTensor]:
        req = activation_pb2.GetSteeringTensorsRequest(
            additions=[activation_pb2.ActivationAddition(layer=l, coeff=c, prompt=p) for l, c, p in activation_additions],
            hook=_hook(hook), use_bos=use_bos, strict_lengths=strict_lengths)
        tensors: List[SteeringTensor] = []
        for msg in self.activation.GetSteeringTensors(req, **self._call(timeout)):
            kind = msg.WhichOneof("event")
            if kind == "header":
                tensors.append(SteeringTensor(header=msg.header))
            elif kind == "chunk":
                tensors[-1].chunks.append(msg.chunk)
        return tensors

    def generate_stream(self, prompt: str, tensors: Sequence[SteeringTensor], n_tokens=50, n_comparisons=3,
                        use_bos=True, seed=0, preset=POST, timeout=None, vectors=(), pad_short_prompt=False,
                        stop=(), **sampling):
        """Yields GenerateResponse events (TokenEvent or RowFinished) as the server streams them.

        Sampling starts from `preset` (POST or SEED); keywords temperature, top_p, top_k,
        repetition_penalty, frequency_penalty, presence_penalty override it. `vectors`: library
        vectors by digest (VectorRef messages, see vector_ref), added along with `tensors`.
        `pad_short_prompt`: a prompt shorter than the steering is padded with spaces after BOS
        (else the server refuses it). `stop`: up to 4 strings; a row ends once its text contains
        one, which is left out of its text (finish reason "stop").
        """
        sampling = _sampling(preset, sampling)
        short = generation_pb2.SHORT_PROMPT_PAD if pad_short_prompt else generation_pb2.SHORT_PROMPT_ERROR
        setup = generation_pb2.GenerateSetup(
            prompt=prompt, use_bos=use_bos, sampling=sampling, n_comparisons=n_comparisons,
            max_new_tokens=n_tokens, seed=seed, n_tensors=len(tensors), vectors=list(vectors), short_prompt=short,
            stop=list(stop))

        def requests():
            yield generation_pb2.GenerateRequest(setup=setup)
            for t in tensors:
                yield generation_pb2.GenerateRequest(tensor=t.header)
                for c in t.chunks:
                    yield generation_pb2.GenerateRequest(chunk=c)

        stub = self._generation[next(self._next)]
        return stub.Generate(requests(), **self._call(timeout))

    def calculate_and_apply_steering_vector(self, prompt: str, activation_additions, n_tokens=50, n_comparisons=3,
                                            use_bos=True, hook="resid_pre", strict_lengths=False, **sampling):
        """Returns (unsteered_completions, steered_completions), lists of strings, as the seed does.

        `activation_additions` is a list of (layer, coeff, text). Keywords: seed, preset (POST, the
        default, or SEED), and the sampling keywords of generate_stream.
        """
        unsteered, steered = self.run(prompt, activation_additions, n_tokens, n_comparisons, use_bos, hook,
                                      strict_lengths, **sampling)
        return [c.text for c in unsteered], [c.text for c in steered]

    def run(self, prompt, activation_additions=(), n_tokens=50, n_comparisons=3, use_bos=True, hook="resid_pre",
            strict_lengths=False, tensors=(), **sampling) -> Tuple[List[Completion], List[Completion]]:
        """Like calculate_and_apply_steering_vector, with token ids, seeds and workers. `tensors`
        (e.g. a vector file's, `load_vector(path).steering_tensors()`) are added too, and
        `vectors=[client.vector_ref(name)]` adds library vectors."""
        tensors = list(tensors)
        if activation_additions:
            tensors += self.steering_tensors(activation_additions, hook=hook, use_bos=use_bos,
                                             strict_lengths=strict_lengths)
        if tensors:
            for w in no_op_warnings(tensors, self.model_info().n_layer):
                warnings.warn(w, stacklevel=2)
        for attempt in range(self._retries + 1):
            unsteered: List[Completion] = []
            steered: List[Completion] = []
            try:
                for msg in self.generate_stream(prompt, tensors, n_tokens=n_tokens, n_comparisons=n_comparisons,
                                                use_bos=use_bos, **sampling):
                    if msg.WhichOneof("event") == "finished":
                        f = msg.finished
                        c = Completion(f.row, f.steered, f.text, list(f.token_ids),
                                       FINISH_REASONS.get(f.reason, "length"), f.seed, f.worker)
                        (steered if f.steered else unsteered).append(c)
                return unsteered, steered
            except grpc.RpcError as e:
                # The worker went away (killed, drained, a proxy's upstream reset): replay.
                if attempt == self._retries or e.code() not in _WORKER_LOST:
                    raise
        raise AssertionError("unreachable")

    # Vectors as artifacts: files made by the activation service, and its library.

    def compute_vector(self, request, on_progress=None, timeout=None):
        """A ComputeVectorRequest -> VectorFile (info, data), calling on_progress(done, total)."""
        for msg in self.activation.ComputeVector(request, **self._call(timeout)):
            kind = msg.WhichOneof("event")
            if kind == "progress" and on_progress:
                on_progress(msg.progress.done, msg.progress.total)
            elif kind == "vector":
                return msg.vector
        raise RuntimeError("ComputeVector ended without a vector")

    def save_vector(self, name, activation_additions, hook="resid_pre", use_bos=True, strict_lengths=False,
                    store=False, timeout=None):
        """ActAdd's steering tensors of `activation_additions` ((layer, coeff, text) tuples) as a
        vector file (VectorFile: .info, .data bytes); `store` also puts it in the library."""
        additions = activation_pb2.GetSteeringTensorsRequest(
            additions=[activation_pb2.ActivationAddition(layer=l, coeff=c, prompt=p) for l, c, p in activation_additions],
            hook=_hook(hook), use_bos=use_bos, strict_lengths=strict_lengths)
        req = activation_pb2.ComputeVectorRequest(name=name, additions=additions, store=store)
        return self.compute_vector(req, timeout=timeout)

    def train_vector(self, name, pairs, layers, hook="resid_pre", reduction="last_token", use_bos=True,
                     batch_size=0, store=False, on_progress=None, timeout=None):
        """A dataset vector (CAA): the mean over `pairs` ((positive, negative) texts) of the
        difference of their activations at `layers`, at the last token or averaged over
        positions (`reduction="mean"`, BOS excluded); one all-positions direction per layer."""
        reductions = {"last_token": activation_pb2.REDUCTION_LAST_TOKEN, "mean": activation_pb2.REDUCTION_MEAN}
        req = activation_pb2.ComputeVectorRequest(name=name, store=store, pairs=activation_pb2.ContrastPairs(
            pairs=[activation_pb2.ContrastPair(positive=p, negative=n) for p, n in pairs],
            points=[tensor_pb2.HookPoint(hook=_hook(hook), layer=l) for l in layers],
            reduction=reductions[reduction], use_bos=use_bos, batch_size=batch_size))
        return self.compute_vector(req, on_progress, timeout)

    def put_vector(self, data: bytes, name: str = "", force_model=False, timeout=None):
        """Stores a vector file in the library; returns PutVectorResponse (info, replaced).
        `force_model` stores one made on other weights of the same shape."""
        req = activation_pb2.PutVectorRequest(data=data, name=name, force_model=force_model)
        return self.activation.PutVector(req, **self._call(timeout))

    def get_vector(self, ref: str, timeout=None):
        """A library vector (VectorFile) by name, digest or digest prefix (8+ hex digits)."""
        return self.activation.GetVector(activation_pb2.GetVectorRequest(ref=ref), **self._call(timeout)).vector

    def list_vectors(self, timeout=None):
        return self.activation.ListVectors(activation_pb2.ListVectorsRequest(), **self._call(timeout))

    def delete_vector(self, ref: str, timeout=None):
        return self.activation.DeleteVector(activation_pb2.DeleteVectorRequest(ref=ref), **self._call(timeout)).deleted

    def vector_ref(self, ref: str, scale: float = 1.0, layers: Optional[Tuple[int, int]] = None, force_model=False,
                   op: Optional[str] = None, window: Optional[str] = None):
        """A VectorRef for generate_stream/run(vectors=...): the library vector's full digest;
        `force_model` applies one made on other weights of the same shape; `op` (`add`,
        `ablate`, `clamp=VALUE`) and `window` (`prefix`, `all_positions`, `generated`, `A-B`,
        `A-`) apply it otherwise than its file says."""
        r = generation_pb2.VectorRef(digest=self.get_vector(ref).info.digest, scale=scale, force_model=force_model)
        if layers is not None:
            r.first_layer, r.last_layer = layers
        if op is not None:
            r.op, value = parse_op(op)
            if r.op == tensor_pb2.STEERING_OP_CLAMP:
                r.clamp_value = value
        if window is not None:
            r.mode, r.window_start, end = parse_window(window)
            if end is not None:
                r.window_end = end
        return r

    def list_saes(self, timeout=None):
        """The sparse autoencoders the activation worker serves (its --sae-dir): SaeInfo each."""
        return list(self.activation.ListSaes(activation_pb2.ListSaesRequest(), **self._call(timeout)).saes)

    def sae_features(self, sae: str, first: int = 0, count: int = 32, top_tokens: int = 5, timeout=None):
        """Features first..first+count-1 of a served SAE: each one's decoder norm and the tokens
        its decoder row promotes most (GetSaeFeaturesResponse)."""
        req = activation_pb2.GetSaeFeaturesRequest(sae=sae, first=first, count=count, top_tokens=top_tokens)
        return self.activation.GetSaeFeatures(req, **self._call(timeout))

    def sae_vector(self, sae: str, features, scale: Optional[float] = None, clamp: Optional[float] = None, name: str = "",
                   store: bool = False, timeout=None):
        """A vector file (VectorFile) from features of a served SAE: ADD scale x W_dec[f] at every
        position, or CLAMP their direction to `clamp`; `store` also puts it in the library."""
        req = activation_pb2.SaeVectorRequest(sae=sae, features=list(features), name=name, store=store)
        if scale is not None:
            req.scale = scale
        if clamp is not None:
            req.clamp_value = clamp
        return self.activation.SaeVector(req, **self._call(timeout)).vector

    def activations(self, prompts, layers, hook="resid_pre", use_bos=True, steering: Sequence[SteeringTensor] = (), timeout=None):
        """Residual-stream activations: out[prompt][layer_index] = (shape, flat f32 values).
        With `steering`, read under it (each point after its own steering: after an ablation
        there, the direction is gone)."""
        req = activation_pb2.GetActivationsRequest(
            prompts=list(prompts), use_bos=use_bos, points=[tensor_pb2.HookPoint(hook=_hook(hook), layer=l) for l in layers],
            steering=[tensor_pb2.InlineTensor(header=t.header, data=b"".join(c.data for c in t.chunks)) for t in steering])
        out = [[] for _ in prompts]
        current = None
        for msg in self.activation.GetActivations(req, **self._call(timeout)):
            kind = msg.WhichOneof("event")
            if kind == "header":
                current = SteeringTensor(header=msg.header)
                out[msg.header.prompt_index].append(current)
            elif kind == "chunk":
                current.chunks.append(msg.chunk)
        return [[(tuple(t.header.shape), t._flat()) for t in row] for row in out]


from .vectors import Vector, load_vector, parse_op, parse_vector, parse_window, vector_from_sae  # noqa: E402
from . import evals  # noqa: E402
