"""Golden outputs of Hugging Face `transformers` for steering beyond addition (ABLATE, CLAMP),
position windows and SAE features, on the committed tiny random GPT-2.

Writes fixtures/goldens/tiny-gpt2-ops.json (and the SAE fixture fixtures/tiny-sae/, in SAELens's
layout: written by SAELens's own code when `sae_lens` is installed, else by hand in its documented
layout), which services/model/tests/ops.rs holds the engine to. Run from the repository root:

    pip install torch transformers safetensors   # and sae-lens, to write the SAE with SAELens
    python scripts/make_op_goldens.py

Every case is greedy generation of 20 tokens with a forward pre-hook (RESID_PRE) or forward hook
(BLOCK_OUTPUT) on one block that edits the residual stream at the positions of the window, in
every forward pass: the prompt's positions in the prefill, each new token's while decoding on the
KV cache (or, without the cache, every position of the whole sequence at every step). Positions
are absolute (0 is BOS). The ops, on a unit direction u (the given row normalised):
    ablate: x - (x . u) u          clamp c: x - (x . u - c) u          add v: x + v
"""
import json
import os
import sys

import torch

import hf_hooks
from transformers import GPT2LMHeadModel, GPT2TokenizerFast

MODEL = "fixtures/tiny-gpt2"
OUT = "fixtures/goldens/tiny-gpt2-ops.json"
SAE_DIR = "fixtures/tiny-sae"
BOS = 50256
N_NEW = 20

torch.manual_seed(0)
model = GPT2LMHeadModel.from_pretrained(MODEL, torch_dtype=torch.float32).eval()
tok = GPT2TokenizerFast.from_pretrained(MODEL)
blocks = model.transformer.h
model.generation_config.eos_token_id = None
model.generation_config.pad_token_id = BOS
D = model.config.n_embd


def ids_of(text):
    return [BOS] + tok(text)["input_ids"]


def stream(ids, hook, layer):
    """The residual stream at a hook point for one prompt, [T, d]."""
    rec = {}
    handle = hf_hooks.register(blocks[layer], hook, lambda h: rec.__setitem__("x", h[0].clone()) or h)
    with torch.no_grad():
        model(torch.tensor([ids]))
    handle.remove()
    return rec["x"]


def f32_list(t):
    """Values rounded to 7 significant digits: the golden file holds what both sides use."""
    return [float(f"{float(x):.7g}") for x in t.reshape(-1)]


def window_positions(window, k, prompt_len):
    """(start, end) of a window; end None = no end."""
    if window == "prefix":
        return 0, k
    if window == "all_positions":
        return 0, None
    if window == "generated":
        return prompt_len, None
    a, b = window.split("-")
    return int(a), (int(b) if b else None)


def editor(op, rows, value, window, prompt_len, use_cache):
    """A hook function applying `op` over the window's absolute positions in each pass."""
    rows = torch.tensor(rows, dtype=torch.float32).reshape(-1, D)
    k = rows.shape[0]
    if op != "add":
        rows = rows / rows.norm(dim=-1, keepdim=True)
    start, end = window_positions(window, k, prompt_len)
    state = {"seen": 0}

    def change(h):
        t = h.shape[1]
        first = state["seen"] if use_cache else 0
        state["seen"] = first + t if use_cache else 0
        h = h.clone()
        for i in range(t):
            p = first + i
            if p < start or (end is not None and p >= end):
                continue
            v = rows[p if window == "prefix" else 0]
            x = h[0, i]
            if op == "add":
                h[0, i] = x + v
            elif op == "ablate":
                h[0, i] = x - (x @ v) * v
            else:
                h[0, i] = x - ((x @ v) - value) * v
        return h

    return change


def greedy(ids, edits=(), use_cache=True):
    handles = [hf_hooks.register(blocks[layer], hook, change) for hook, layer, change in edits]
    try:
        with torch.no_grad():
            g = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               do_sample=False, max_new_tokens=N_NEW, min_new_tokens=N_NEW, use_cache=use_cache)
        return g[0, len(ids):].tolist()
    finally:
        for h in handles:
            h.remove()


prompt_text = "I hate you because"
prompt = ids_of(prompt_text)
other_text = "The weather today is"
other = ids_of(other_text)
cases = []
for hook, layer in [("resid_pre", 2), ("block_output", 2)]:
    x = stream(prompt, hook, layer)
    # The direction: Love - Hate at the point (last token), as the vector goldens take it; the
    # prefix ablation's rows: the prompt's own first positions' streams.
    plus, minus = stream(ids_of("Love "), hook, layer)[-1], stream(ids_of("Hate"), hook, layer)[-1]
    direction = f32_list(plus - minus)
    prefix_rows = f32_list(x[:3])
    u = torch.tensor(direction) / torch.tensor(direction).norm()
    # Far from where the stream sits along u, so that clamping moves it.
    clamp = float(f"{float((x @ u).abs().max()) * 4 + 1:.4g}")
    for op in ["ablate", "clamp"]:
        for window in ["prefix", "all_positions", "generated", "3-8", "4-"]:
            rows = prefix_rows if window == "prefix" else direction
            k = 3 if window == "prefix" else 1
            value = clamp if op == "clamp" else 0.0
            case = {"op": op, "hook": hook, "layer": layer, "window": window, "k": k, "rows": rows, "value": value,
                    "prompt_ids": prompt}
            for use_cache in [True, False]:
                change = editor(op, rows, value, window, len(prompt), use_cache)
                case["greedy_kv" if use_cache else "greedy_no_kv"] = greedy(prompt, [(hook, layer, change)], use_cache)
            cases.append(case)

# A mixed batch: an unsteered row, an ADD row (another prompt, all positions) and an ABLATE row
# (generated tokens only), each its own golden.
hook, layer = "resid_pre", 2
plus, minus = stream(ids_of("Love "), hook, layer)[-1], stream(ids_of("Hate"), hook, layer)[-1]
direction = f32_list(0.5 * (plus - minus))
mixed = {
    "hook": hook,
    "layer": layer,
    "direction": direction,
    "rows": [
        {"prompt_ids": prompt, "op": None, "greedy": greedy(prompt)},
        {"prompt_ids": other, "op": "add", "window": "all_positions",
         "greedy": greedy(other, [(hook, layer, editor("add", direction, 0.0, "all_positions", len(other), True))])},
        {"prompt_ids": prompt, "op": "ablate", "window": "generated",
         "greedy": greedy(prompt, [(hook, layer, editor("ablate", direction, 0.0, "generated", len(prompt), True))])},
    ],
}

# An SAE on block_output.1 (hook_resid_post), d_sae 16, in SAELens's layout.
D_SAE = 16
gen = torch.Generator().manual_seed(7)
w_dec = torch.randn(D_SAE, D, generator=gen) * 0.5
w_enc = torch.randn(D, D_SAE, generator=gen) * 0.1
b_enc = torch.zeros(D_SAE)
b_dec = torch.zeros(D)
os.makedirs(SAE_DIR, exist_ok=True)
written_by = "hand (SAELens's documented layout)"
try:
    from sae_lens import SAE, StandardSAEConfig

    cfg = StandardSAEConfig(d_in=D, d_sae=D_SAE, dtype="float32", device="cpu")
    cfg.metadata.model_name = "tiny-gpt2"
    cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    sae = SAE.from_dict(cfg.to_dict())
    with torch.no_grad():
        sae.W_dec.copy_(w_dec)
        sae.W_enc.copy_(w_enc)
        sae.b_enc.copy_(b_enc)
        sae.b_dec.copy_(b_dec)
    sae.save_model(SAE_DIR)
    back = SAE.load_from_disk(SAE_DIR, device="cpu")
    assert torch.equal(back.W_dec, w_dec), "SAELens reads back what it wrote"
    import sae_lens
    written_by = f"sae_lens {sae_lens.__version__} (SAE.save_model)"
except ImportError:
    from safetensors.torch import save_file

    with open(os.path.join(SAE_DIR, "cfg.json"), "w") as f:
        json.dump({"d_in": D, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "architecture": "standard",
                   "metadata": {"model_name": "tiny-gpt2", "hook_name": "blocks.1.hook_resid_post"}}, f)
    save_file({"W_dec": w_dec, "W_enc": w_enc, "b_enc": b_enc, "b_dec": b_dec}, os.path.join(SAE_DIR, "sae_weights.safetensors"))
feature, scale = 5, 6.0
row = w_dec[feature].tolist()
sae_case = {
    "dir": SAE_DIR,
    "written_by": written_by,
    "feature": feature,
    "scale": scale,
    "prompt_ids": prompt,
    "greedy": greedy(prompt, [("block_output", 1, editor("add", [scale * v for v in row], 0.0, "all_positions", len(prompt), True))]),
}

with open(OUT, "w") as f:
    json.dump({"model": MODEL, "torch": torch.__version__, "n_new": N_NEW, "unsteered_greedy": greedy(prompt), "cases": cases,
               "mixed": mixed, "sae": sae_case}, f, separators=(",", ":"))
print("wrote", OUT, "SAE by", written_by)
base = greedy(prompt)
for c in cases:
    print(c["op"], c["hook"], c["window"], "changed" if c["greedy_kv"] != base else "same", c["greedy_kv"][:8])
print("sae", "changed" if sae_case["greedy"] != base else "same")
