"""Golden teacher-forced log-probabilities of Hugging Face `transformers` on the committed tiny
random GPT-2, unsteered and steered, for GenerationService.Score.

Writes fixtures/goldens/tiny-gpt2-score.json, which services/model/tests/parity.rs holds the
engine's `score` to. Run from the repository root:

    pip install torch transformers safetensors
    python scripts/make_score_goldens.py [fixtures/tiny-gpt2] [fixtures/goldens/tiny-gpt2-score.json]

Per text (prompt and continuation tokenised apart, BOS first): log P(token | everything before)
for each continuation token, with no steering; with the ActAdd tensor 8 * (act("Love ") -
act("Hate")) at resid_pre.2 added at positions 0..k-1 by a forward pre-hook; and with a
direction (the last-token difference, x0.5) added at every position of block_output.1 by a
forward hook. For the first text also the next-token distribution after it, steered (prefix)
against unsteered: KL and the five largest p * log(p / q) terms.
"""
import json
import sys

import torch
from transformers import GPT2LMHeadModel, GPT2TokenizerFast

import hf_hooks

MODEL = sys.argv[1] if len(sys.argv) > 1 else "fixtures/tiny-gpt2"
OUT = sys.argv[2] if len(sys.argv) > 2 else "fixtures/goldens/tiny-gpt2-score.json"
BOS = 50256

model = GPT2LMHeadModel.from_pretrained(MODEL, torch_dtype=torch.float32).eval()
tok = GPT2TokenizerFast.from_pretrained(MODEL)
blocks = model.transformer.h


def ids_of(text, bos):
    ids = tok(text)["input_ids"] if text else []
    return [BOS] + ids if bos else ids


def stream(ids, hook, layer):
    rec = {}

    def capture(x):
        rec["x"] = x[0].clone()
        return x

    h = hf_hooks.register(blocks[layer], hook, capture)
    with torch.no_grad():
        model(torch.tensor([ids]))
    h.remove()
    return rec["x"]


def logprobs(ids, start, hook=None, layer=None, change=None):
    handle = hf_hooks.register(blocks[layer], hook, change) if hook else None
    try:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
    finally:
        if handle:
            handle.remove()
    lp = torch.log_softmax(logits.double(), dim=-1)
    return [float(lp[t - 1, ids[t]]) for t in range(start, len(ids))], lp[-1]


texts = [("I went to a", " wedding and the bride was lovely"),
         ("The weather today", " is cold and grey"),
         ("", "Love is all you need")]
steer = 8.0 * (stream(ids_of("Love ", True), "resid_pre", 2) - stream(ids_of("Hate", True), "resid_pre", 2))
k = steer.shape[0]
direction = 0.5 * (stream(ids_of("Love ", True), "block_output", 1)[-1] - stream(ids_of("Hate", True), "block_output", 1)[-1])


def prefix(h):
    h = h.clone()
    h[:, :k] += steer
    return h


out = {"model": MODEL, "torch": torch.__version__, "bos": True,
       "prefix": {"hook": "resid_pre", "layer": 2, "tensor": [[round(float(x), 7) for x in r] for r in steer]},
       "all_positions": {"hook": "block_output", "layer": 1, "direction": [round(float(x), 7) for x in direction]},
       "texts": []}
for i, (p, c) in enumerate(texts):
    prompt = ids_of(p, True)
    ids = prompt + tok(c)["input_ids"]
    plain, q = logprobs(ids, len(prompt))
    steered, p_next = logprobs(ids, len(prompt), "resid_pre", 2, prefix)
    directed, _ = logprobs(ids, len(prompt), "block_output", 1, lambda h: h + direction)
    entry = {"prompt": p, "continuation": c, "ids": ids, "start": len(prompt),
             "unsteered": plain, "prefix": steered, "all_positions": directed}
    if i == 0:
        terms = p_next.exp() * (p_next - q)
        top = torch.topk(terms, 5)
        entry["next_token_kl"] = float(terms.sum())
        entry["kl_top"] = [[int(t), float(v)] for t, v in zip(top.indices, top.values)]
    out["texts"].append(entry)

with open(OUT, "w") as f:
    json.dump(out, f, separators=(",", ":"))
print("wrote", OUT)
for t in out["texts"]:
    print(t["prompt"] + "|" + t["continuation"], sum(t["unsteered"]), sum(t["prefix"]), sum(t["all_positions"]))
