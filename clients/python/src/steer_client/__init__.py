"""Python client of steer.

    from steer_client import SteerClient
    client = SteerClient("localhost:50051")
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
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Tuple

import grpc

from ._proto.steer.v1 import activation_pb2, activation_pb2_grpc
from ._proto.steer.v1 import generation_pb2, generation_pb2_grpc
from ._proto.steer.v1 import tensor_pb2

__all__ = ["SteerClient", "Completion", "POST", "SEED", "activation_pb2", "generation_pb2", "tensor_pb2"]

HOOKS = {"resid_pre": tensor_pb2.HOOK_RESID_PRE, "block_output": tensor_pb2.HOOK_BLOCK_OUTPUT}

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


@dataclass
class Completion:
    row: int
    steered: bool
    text: str
    token_ids: List[int]
    finish_reason: str
    seed: int
    worker: str = ""


@dataclass
class SteeringTensor:
    header: tensor_pb2.TensorHeader
    chunks: List[tensor_pb2.TensorChunk] = field(default_factory=list)

    def values(self):
        """The tensor as a flat list of floats (f32 only)."""
        import struct

        data = b"".join(c.data for c in self.chunks)
        return list(struct.unpack(f"<{len(data) // 4}f", data))


class SteerClient:
    """Connects to an activation endpoint and one or more generation endpoints (round-robin).

    TLS: pass `tls=True` (the system's roots) or `tls_ca` (a PEM file path or bytes) and
    optionally `tls_identity=(cert_pem, key_pem)` for mutual TLS. Tokens: `token`, or the
    STEER_TOKEN environment variable, is sent as `authorization: Bearer TOKEN`. Every call has a
    deadline of `timeout` seconds unless a method is given its own.
    """

    def __init__(self, activation: str, generation: Optional[Sequence[str]] = None, *, tls: bool = False,
                 tls_ca=None, tls_identity=None, tls_domain: Optional[str] = None, token: Optional[str] = None,
                 timeout: float = 600.0):
        generation = list(generation or [activation])
        opts = [("grpc.max_receive_message_length", 64 << 20)]
        if tls_domain:
            opts.append(("grpc.ssl_target_name_override", tls_domain))
        if isinstance(tls_ca, str):
            with open(tls_ca, "rb") as f:
                tls_ca = f.read()
        if tls or tls_ca or tls_identity:
            key, cert = (tls_identity[1], tls_identity[0]) if tls_identity else (None, None)
            creds = grpc.ssl_channel_credentials(root_certificates=tls_ca, private_key=key, certificate_chain=cert)
            make = lambda target: grpc.secure_channel(target, creds, options=opts)  # noqa: E731
        else:
            make = lambda target: grpc.insecure_channel(target, options=opts)  # noqa: E731
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
            hook=HOOKS[hook], use_bos=use_bos, strict_lengths=strict_lengths)
        tensors: List[SteeringTensor] = []
        for msg in self.activation.GetSteeringTensors(req, **self._call(timeout)):
            kind = msg.WhichOneof("event")
            if kind == "header":
                tensors.append(SteeringTensor(header=msg.header))
            elif kind == "chunk":
                tensors[-1].chunks.append(msg.chunk)
        return tensors

    def generate_stream(self, prompt: str, tensors: Sequence[SteeringTensor], n_tokens=50, n_comparisons=3,
                        use_bos=True, seed=0, preset=POST, timeout=None, **sampling):
        """Yields GenerateResponse events (TokenEvent or RowFinished) as the server streams them.

        Sampling starts from `preset` (POST or SEED); keywords temperature, top_p, top_k,
        repetition_penalty, frequency_penalty, presence_penalty override it.
        """
        sampling = _sampling(preset, sampling)
        setup = generation_pb2.GenerateSetup(
            prompt=prompt, use_bos=use_bos, sampling=sampling, n_comparisons=n_comparisons,
            max_new_tokens=n_tokens, seed=seed, n_tensors=len(tensors))

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

    def run(self, prompt, activation_additions, n_tokens=50, n_comparisons=3, use_bos=True, hook="resid_pre",
            strict_lengths=False, **sampling) -> Tuple[List[Completion], List[Completion]]:
        """Like calculate_and_apply_steering_vector, with token ids, seeds and workers."""
        tensors = self.steering_tensors(activation_additions, hook=hook, use_bos=use_bos,
                                        strict_lengths=strict_lengths)
        unsteered: List[Completion] = []
        steered: List[Completion] = []
        for msg in self.generate_stream(prompt, tensors, n_tokens=n_tokens, n_comparisons=n_comparisons,
                                        use_bos=use_bos, **sampling):
            if msg.WhichOneof("event") == "finished":
                f = msg.finished
                c = Completion(f.row, f.steered, f.text, list(f.token_ids),
                               generation_pb2.FinishReason.Name(f.reason), f.seed, f.worker)
                (steered if f.steered else unsteered).append(c)
        return unsteered, steered
