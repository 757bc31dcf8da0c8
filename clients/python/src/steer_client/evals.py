"""The ActAdd post's measurements over a sweep of (layer, coefficient) settings of a
`plus - minus` vector, as `steer eval` runs them (steer_client::eval in Rust): each returns a
list of plain dicts, one per setting, with `layer`, `coeff` and the measures; `to_frame(rows)`
makes a pandas DataFrame when pandas is installed.

    from steer_client import SteerClient, evals
    c = SteerClient("localhost:50051")
    rows = evals.perplexity_sweep(c, " wedding", " ", layers=range(0, 48, 4), coeffs=[1, 2, 4])
    evals.kl_sweep(c, " weddings", " ", [16], [1], "I'm excited because I'm going to a")
"""
import json
import math
import pathlib
import re
from typing import Dict, Iterable, List, Optional, Sequence

from ._proto.steer.v1 import generation_pb2, tensor_pb2

WEDDING_WORDS = ["wedding", "weddings", "wed", "marry", "married", "marriage", "bride", "groom", "honeymoon"]


def score(client, texts, tensors=(), use_bos=True, include_unsteered=False, kl_top=0, vectors=(), timeout=None):
    """GenerationService.Score: (prompt, continuation) pairs -> TextScore messages, sorted by
    (index, steered)."""
    req = generation_pb2.ScoreRequest(
        texts=[generation_pb2.ScoreText(prompt=p, continuation=c) for p, c in texts], use_bos=use_bos,
        tensors=[tensor_pb2.InlineTensor(header=t.header, data=b"".join(c.data for c in t.chunks)) for t in tensors],
        vectors=list(vectors), include_unsteered=include_unsteered, kl_top=kl_top)
    stub = client._generation[next(client._next)]
    out = [m.score for m in stub.Score(req, **client._call(timeout))]
    return sorted(out, key=lambda s: (s.index, s.steered))


def perplexity(scores) -> float:
    total = sum(s.sum for s in scores)
    n = sum(len(s.logprobs) for s in scores)
    return math.exp(-total / max(n, 1))


def text_sets(directory=None) -> Dict[str, List[str]]:
    """Every NAME.txt of `directory` (one text per line) as {NAME: texts}; by default the sets
    `steer eval perplexity` uses (wedding, unrelated: the repository's fixtures/eval, shipped
    with this package)."""
    if directory is None:
        directory = pathlib.Path(__file__).resolve().parent / "data" / "eval"
    return {p.stem: [l for l in p.read_text().splitlines() if l.strip()] for p in sorted(pathlib.Path(directory).glob("*.txt"))}


def _settings(layers, coeffs):
    return [(l, c) for l in layers for c in coeffs]


def _additions(plus, minus, layer, coeff):
    return [(layer, coeff, plus), (layer, -coeff, minus)]


def perplexity_sweep(client, plus, minus, layers, coeffs, sets: Dict[str, List[str]], hook="resid_pre",
                     use_bos=True) -> List[dict]:
    """Steered / unsteered perplexity of each text set ({name: texts}, see text_sets) per
    setting, then prompting (the plus text before each text, no steering), as
    `steer eval perplexity --json` prints them."""

    def ppl(prompt, texts, tensors):
        return perplexity(score(client, [(prompt, t) for t in texts], tensors, use_bos=use_bos))

    base = {name: ppl("", texts, []) for name, texts in sets.items()}

    def measures(steered):
        return {name: {"perplexity_unsteered": base[name], "perplexity_steered": steered[name],
                       "ratio": steered[name] / base[name]} for name in sets}

    rows = []
    for layer, coeff in _settings(layers, coeffs):
        tensors = client.steering_tensors(_additions(plus, minus, layer, coeff), hook=hook, use_bos=use_bos)
        rows.append({"method": "actadd", "layer": layer, "coeff": float(coeff),
                     "sets": measures({n: ppl("", t, tensors) for n, t in sets.items()})})
    rows.append({"method": "prompting", "layer": None, "coeff": None, "prompt": plus,
                 "sets": measures({n: ppl(plus, t, []) for n, t in sets.items()})})
    return rows


def kl_sweep(client, plus, minus, layers, coeffs, prompt, top=10, hook="resid_pre", use_bos=True) -> List[dict]:
    """Next-token KL(steered || unsteered) after `prompt`, with the `top` contributing tokens."""
    rows = []
    for layer, coeff in _settings(layers, coeffs):
        tensors = client.steering_tensors(_additions(plus, minus, layer, coeff), hook=hook, use_bos=use_bos)
        s = [x for x in score(client, [(prompt, "")], tensors, use_bos=use_bos, include_unsteered=True,
                              kl_top=max(top, 1)) if x.steered][0]
        rows.append({"layer": layer, "coeff": float(coeff), "kl": s.next_token_kl,
                     "top": [{"token_id": k.token_id, "text": k.text, "contribution": k.contribution,
                              "p_steered": k.p_steered, "p_unsteered": k.p_unsteered} for k in s.kl_top]})
    return rows


def count_words(text: str, words: Iterable[str]) -> int:
    words = {w.lower() for w in words}
    return sum(1 for w in re.split(r"[^0-9A-Za-z]+", text) if w and w.lower() in words)


def topic_words(client, plus, minus, layers, coeffs, prompt, words: Sequence[str] = WEDDING_WORDS, n=20, n_tokens=40,
                hook="resid_pre", use_bos=True, seed=0) -> List[dict]:
    """Topic-word counts in n unsteered and n steered completions per setting (steering at the
    front of the prompt; `steer eval topic-words --positions` also places it in the middle or at
    the end)."""
    rows = []
    for layer, coeff in _settings(layers, coeffs):
        counts, anyc, done = [0, 0], [0, 0], 0
        while done < n:
            batch = min(16, n - done)
            unsteered, steered = client.run(prompt, _additions(plus, minus, layer, coeff), n_tokens=n_tokens,
                                            n_comparisons=batch, use_bos=use_bos, hook=hook, seed=seed + done)
            for side, comps in enumerate((unsteered, steered)):
                for c in comps:
                    k = count_words(c.text, words)
                    counts[side] += k
                    anyc[side] += k > 0
            done += batch
        rows.append({"layer": layer, "coeff": float(coeff), "position": "front", "completions": n,
                     "mean_count_unsteered": counts[0] / n, "mean_count_steered": counts[1] / n,
                     "fraction_unsteered": anyc[0] / n, "fraction_steered": anyc[1] / n})
    return rows


def norms(client, plus, minus, layers, coeffs, prompt, hook="resid_pre", use_bos=True) -> List[dict]:
    """Per setting: the prompt's mean residual norm at the layer (BOS excluded) against the
    steering tensor's mean position norm."""
    rows = []
    for layer, coeff in _settings(layers, coeffs):
        (shape, values), = client.activations([prompt], [layer], hook=hook, use_bos=use_bos)[0]
        n, d = shape
        skip = 1 if use_bos and n > 1 else 0
        resid = sum(math.sqrt(sum(v * v for v in values[p * d:(p + 1) * d])) for p in range(skip, n)) / (n - skip)
        t = client.steering_tensors(_additions(plus, minus, layer, coeff), hook=hook, use_bos=use_bos)[0]
        vals = t._flat()
        k = len(vals) // d
        steering = sum(math.sqrt(sum(v * v for v in vals[p * d:(p + 1) * d])) for p in range(k)) / k
        rows.append({"layer": layer, "coeff": float(coeff), "resid_norm": resid, "steering_norm": steering,
                     "ratio": steering / resid})
    return rows


# Sweeps as jobs of the server (EvalService, on `steer serve`): start, watch, cancel, fetch again.

KINDS = {"perplexity": 1, "kl": 2, "topic-words": 3, "norms": 4}


def _eval_stub(client):
    from ._proto.steer.v1 import eval_pb2_grpc

    return eval_pb2_grpc.EvalServiceStub(client._channels[0])


def start_sweep(client, kind, plus, minus, layers, coeffs, sets: Optional[Dict[str, List[str]]] = None, prompt="",
                top=10, hook="resid_pre", use_bos=True, n=0, n_tokens=0, words=(), positions=(), seed=0) -> str:
    """Starts a perplexity, kl, topic-words or norms sweep on the server; returns its id."""
    from ._proto.steer.v1 import eval_pb2
    from . import _hook

    req = eval_pb2.StartSweepRequest(
        kind=KINDS[kind], plus=plus, minus=minus, layers=list(layers), coeffs=[float(c) for c in coeffs],
        hook=_hook(hook), use_bos=use_bos, prompt=prompt, top=top, n=n, n_tokens=n_tokens, words=list(words),
        positions=list(positions), seed=seed,
        sets=[eval_pb2.EvalTextSet(name=n, texts=t) for n, t in (sets or {}).items()])
    return _eval_stub(client).StartSweep(req, **client._call(None)).sweep.id


def _sweep_dict(s) -> dict:
    from ._proto.steer.v1 import eval_pb2

    return {"id": s.id, "state": eval_pb2.SweepState.Name(s.state).replace("SWEEP_STATE_", "").lower(), "done": s.done, "total": s.total,
            "error": s.error, "rows": [json.loads(r) for r in s.rows_json]}


def watch_sweep(client, sweep_id, on_progress=None) -> dict:
    """Follows a sweep until it ends (at once for an ended one): its state and rows."""
    from ._proto.steer.v1 import eval_pb2

    last = None
    for m in _eval_stub(client).WatchSweep(eval_pb2.WatchSweepRequest(id=sweep_id), **client._call(None)):
        last = _sweep_dict(m.sweep)
        if on_progress:
            on_progress(last["done"], last["total"])
    return last


def cancel_sweep(client, sweep_id) -> dict:
    from ._proto.steer.v1 import eval_pb2

    return _sweep_dict(_eval_stub(client).CancelSweep(eval_pb2.CancelSweepRequest(id=sweep_id), **client._call(None)).sweep)


def list_sweeps(client) -> List[dict]:
    from ._proto.steer.v1 import eval_pb2

    return [_sweep_dict(s) for s in _eval_stub(client).ListSweeps(eval_pb2.ListSweepsRequest(), **client._call(None)).sweeps]


def to_frame(rows: List[dict]):
    """A pandas DataFrame of the rows, nested measures flattened (`sets_wedding_ratio`)."""
    import pandas as pd

    return pd.json_normalize(rows, sep="_")
