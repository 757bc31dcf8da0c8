"""Golden outputs of Hugging Face `transformers` on the committed tiny random GPT-2.

Writes fixtures/goldens/tiny-gpt2.json, which the Rust tests (services/model/tests/parity.rs)
hold the engine to. Run from the repository root:

    pip install torch transformers safetensors
    python scripts/make_goldens.py [fixtures/tiny-gpt2] [fixtures/goldens/tiny-gpt2.json]

What it records, per prompt: token ids; logits (top-10 ids and values, log-sum-exp and the first
32 raw values at every position); the residual stream at every hook point, raw
(RESID_PRE(L) = input of block L = HF hidden_states[L]; BLOCK_OUTPUT(L) = output of block L,
before ln_f for the last block); greedy generation of 20 tokens. And ActAdd: the steering tensor
8 * (act("Love ") - act("Hate")) at a layer, and greedy generation steered by a forward
pre-hook (RESID_PRE) or forward hook (BLOCK_OUTPUT) that adds it at positions 0..k-1 in the
prefill pass only.
"""
import json
import sys

import torch

import hf_hooks
from transformers import GPT2LMHeadModel, GPT2TokenizerFast

MODEL = sys.argv[1] if len(sys.argv) > 1 else "fixtures/tiny-gpt2"
OUT = sys.argv[2] if len(sys.argv) > 2 else "fixtures/goldens/tiny-gpt2.json"
BOS = 50256
N_NEW = 20

torch.manual_seed(0)
model = GPT2LMHeadModel.from_pretrained(MODEL, torch_dtype=torch.float32).eval()
tok = GPT2TokenizerFast.from_pretrained(MODEL)
cfg = model.config
n_layer = cfg.n_layer
blocks = model.transformer.h
model.generation_config.eos_token_id = None
model.generation_config.pad_token_id = BOS


def ids_of(text, bos):
    ids = tok(text)["input_ids"]
    return [BOS] + ids if bos else ids


def streams(ids):
    """Residual stream at every hook point, via hooks on the blocks."""
    rec = {}
    handles = []
    for L, blk in enumerate(blocks):
        handles.append(blk.register_forward_pre_hook(
            lambda m, args, kwargs, L=L: rec.__setitem__(f"resid_pre.{L}", (args[0] if args else kwargs["hidden_states"])[0].clone()),
            with_kwargs=True))
        handles.append(blk.register_forward_hook(
            lambda m, args, out, L=L: rec.__setitem__(f"block_output.{L}", (out[0] if isinstance(out, tuple) else out)[0].clone())))
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    for h in handles:
        h.remove()
    # Cross-check the hook convention against HF's hidden_states.
    for L in range(n_layer):
        assert torch.equal(rec[f"resid_pre.{L}"], out.hidden_states[L][0]), L
    return out.logits[0], rec


def greedy(ids, n=N_NEW):
    with torch.no_grad():
        g = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                           do_sample=False, max_new_tokens=n, min_new_tokens=n, use_cache=True)
    return g[0, len(ids):].tolist()


def steered_greedy(ids, layer, hook, steer):
    k = steer.shape[0]

    def add(h):
        if h.shape[1] > 1:  # prefill only, as ActAdd's hook skips passes of length 1
            h = h.clone()
            h[:, :k] += steer
        return h

    handle = hf_hooks.register(blocks[layer], hook, add)
    try:
        return greedy(ids)
    finally:
        handle.remove()


def rows(t):
    return [[round(float(x), 7) for x in r] for r in t]


prompts = [
    ("I went up to my friend and said", True),
    ("Love ", True),
    ("Hate", False),
    ("The Eiffel Tower is in Rome", False),
]
golden = {"model": MODEL, "config": cfg.to_dict(), "torch": torch.__version__, "prompts": []}
for text, bos in prompts:
    ids = ids_of(text, bos)
    logits, rec = streams(ids)
    top = torch.topk(logits, 10, dim=-1)
    golden["prompts"].append({
        "text": text,
        "bos": bos,
        "ids": ids,
        "logits_top10_ids": top.indices.tolist(),
        "logits_top10_values": rows(top.values),
        "logits_logsumexp": [round(float(x), 6) for x in torch.logsumexp(logits, dim=-1)],
        "logits_head32": rows(logits[:, :32]),
        "streams": {k: rows(v) for k, v in rec.items()},
        "stream_norms": {k: [round(float(x), 6) for x in v.norm(dim=-1)] for k, v in rec.items()},
        "greedy": greedy(ids),
    })

# ActAdd: Love - Hate, coefficient 8, both with BOS (3 tokens each, no padding needed).
steering = []
prompt = ids_of("I hate you because", True)
for hook, layer in [("resid_pre", 2), ("block_output", 1), ("resid_pre", 0)]:
    _, plus = streams(ids_of("Love ", True))
    _, minus = streams(ids_of("Hate", True))
    key = f"{hook}.{layer}"
    steer = 8.0 * (plus[key] - minus[key])
    steering.append({
        "hook": hook,
        "layer": layer,
        "coeff": 8.0,
        "plus": "Love ",
        "minus": "Hate",
        "bos": True,
        "prompt": "I hate you because",
        "prompt_ids": prompt,
        "steering": rows(steer),
        "unsteered_greedy": greedy(prompt),
        "steered_greedy": steered_greedy(prompt, layer, hook, steer),
    })
golden["actadd"] = steering

with open(OUT, "w") as f:
    json.dump(golden, f, separators=(",", ":"))
print("wrote", OUT)
for s in steering:
    print(s["hook"], s["layer"], "unsteered", s["unsteered_greedy"][:8], "steered", s["steered_greedy"][:8])
for p in golden["prompts"]:
    print(p["text"], p["ids"], p["greedy"][:8])
