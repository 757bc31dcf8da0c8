"""PyTorch's figures beside `steer bench`: the same measurements with Hugging Face transformers.

Loads a GPT-2 checkpoint directory (e.g. the XL-shaped random weights that
`steer random-model --shape xl --out bench-models/xl` writes) and measures, for each dtype, a
9-token prefill (batch 1) and greedy decode steps on the KV cache at batch 1 and 6, as
`steer bench` does (same prompt, BOS prepended). Prints a markdown table; nothing is asserted.

    python scripts/bench_torch.py bench-models/xl [--dtypes f32,bf16] [--tokens 16]

Needs torch and transformers (pip install torch transformers); run it beside
`steer bench --model DIR --dtypes f32,bf16,f16,q8_0` so both see the same machine.
"""
import argparse
import time

import torch
from transformers import GPT2LMHeadModel

PROMPT_IDS = [50256, 40, 1816, 510, 284, 616, 1545, 290, 531]  # BOS + "I went up to my friend and said"
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def prefill_secs(model, ids):
    best = float("inf")
    with torch.inference_mode():
        model(ids)  # warm-up
        for _ in range(3):
            t = time.perf_counter()
            model(ids, use_cache=True)
            best = min(best, time.perf_counter() - t)
    return best


def decode_step_secs(model, batch, tokens):
    ids = torch.tensor([PROMPT_IDS] * batch)
    with torch.inference_mode():
        out = model(ids, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        t = time.perf_counter()
        for _ in range(tokens):
            out = model(nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        return (time.perf_counter() - t) / tokens


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--tokens", type=int, default=16)
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    for name in a.dtypes.split(","):
        t = time.perf_counter()
        model = GPT2LMHeadModel.from_pretrained(a.model, torch_dtype=DTYPES[name]).eval()
        print(f"{name}: loaded in {time.perf_counter() - t:.1f} s", flush=True)
        pre = prefill_secs(model, torch.tensor([PROMPT_IDS]))
        b1 = decode_step_secs(model, 1, a.tokens)
        b6 = decode_step_secs(model, 6, a.tokens)
        rows.append((name, pre, b1, b6))
        print(f"{name}: prefill 9 tokens {pre:.3f} s; decode batch 1 {1 / b1:.2f} tok/s; batch 6 {6 / b6:.2f} tok/s total", flush=True)
        del model
    print("| dtype | batch 1 decode | batch 6 decode, total | prefill 9 tokens |")
    print("|---|---|---|---|")
    for name, pre, b1, b6 in rows:
        print(f"| PyTorch {name} | {1 / b1:.2f} tok/s | {6 / b6:.2f} tok/s | {pre:.3f} s |")


if __name__ == "__main__":
    main()
