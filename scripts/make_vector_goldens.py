"""Golden outputs of Hugging Face `transformers` for all_positions steering (control vectors,
CAA) on the committed tiny random GPT-2.

Writes fixtures/goldens/tiny-gpt2-vectors.json, which services/model/tests/vectors.rs holds the
engine to. Run from the repository root:

    pip install torch transformers safetensors
    python scripts/make_vector_goldens.py [fixtures/tiny-gpt2] [fixtures/goldens/tiny-gpt2-vectors.json]

Per case: a direction coeff * (act("Love ")[-1] - act("Hate")[-1]) at a hook point (the last
token's residual stream, as CAA takes it), and greedy generation of 20 tokens with a forward
pre-hook (RESID_PRE) or forward hook (BLOCK_OUTPUT) that adds the direction at every position
of every forward pass: the prompt's in the prefill, and each new token's while decoding on the
KV cache.
"""
import json
import sys

import torch

import hf_hooks
from transformers import GPT2LMHeadModel, GPT2TokenizerFast

MODEL = sys.argv[1] if len(sys.argv) > 1 else "fixtures/tiny-gpt2"
OUT = sys.argv[2] if len(sys.argv) > 2 else "fixtures/goldens/tiny-gpt2-vectors.json"
BOS = 50256
N_NEW = 20

model = GPT2LMHeadModel.from_pretrained(MODEL, torch_dtype=torch.float32).eval()
tok = GPT2TokenizerFast.from_pretrained(MODEL)
blocks = model.transformer.h
model.generation_config.eos_token_id = None
model.generation_config.pad_token_id = BOS


def ids_of(text, bos):
    ids = tok(text)["input_ids"]
    return [BOS] + ids if bos else ids


def stream(ids, hook, layer):
    """The residual stream at a hook point: HF hidden_states[L] for resid_pre.L, the output of
    block L for block_output.L (hidden_states[L + 1] except after the last block)."""
    rec = {}
    blk = blocks[layer]
    if hook == "resid_pre":
        h = blk.register_forward_pre_hook(
            lambda m, args, kwargs: rec.__setitem__("x", (args[0] if args else kwargs["hidden_states"])[0].clone()),
            with_kwargs=True)
    else:
        h = blk.register_forward_hook(lambda m, args, out: rec.__setitem__("x", (out[0] if isinstance(out, tuple) else out)[0].clone()))
    with torch.no_grad():
        model(torch.tensor([ids]))
    h.remove()
    return rec["x"]


def greedy(ids):
    with torch.no_grad():
        g = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                           do_sample=False, max_new_tokens=N_NEW, min_new_tokens=N_NEW, use_cache=True)
    return g[0, len(ids):].tolist()


def steered_greedy(ids, hook, layer, direction):
    def add(h):
        return h + direction  # every position of every pass, generated tokens included

    handle = hf_hooks.register(blocks[layer], hook, add)
    try:
        return greedy(ids)
    finally:
        handle.remove()


prompt = ids_of("I hate you because", True)
cases = []
for hook, layer, coeff in [("resid_pre", 2, 0.5), ("block_output", 1, 0.5), ("resid_pre", 0, 0.3)]:
    plus = stream(ids_of("Love ", True), hook, layer)[-1]
    minus = stream(ids_of("Hate", True), hook, layer)[-1]
    direction = coeff * (plus - minus)
    cases.append({
        "hook": hook,
        "layer": layer,
        "coeff": coeff,
        "plus": "Love ",
        "minus": "Hate",
        "prompt": "I hate you because",
        "prompt_ids": prompt,
        "direction": [round(float(x), 7) for x in direction],
        "unsteered_greedy": greedy(prompt),
        "steered_greedy": steered_greedy(prompt, hook, layer, direction),
    })

with open(OUT, "w") as f:
    json.dump({"model": MODEL, "torch": torch.__version__, "all_positions": cases}, f, separators=(",", ":"))
print("wrote", OUT)
for c in cases:
    print(c["hook"], c["layer"], "unsteered", c["unsteered_greedy"][:10], "steered", c["steered_greedy"][:10])
