"""steer against llama.cpp on the same GGUF files, alternated, on this machine.

For each GGUF (e.g. the f32 and q8_0 files `scripts/make_gguf.py --with-output` writes from the
XL-shaped random weights), each round runs `steer bench --model FILE --batches 1` (the weights
kept in the file's type) and then llama.cpp (llama-cpp-python, one process per measurement, the
same thread count) on the same file: the 9-token prompt's prefill (best of 3) and batch-1 decode
steps on the KV cache, mean over --tokens steps. llama.cpp's steps are `llama_decode` of one
token (its logits copied out, the next token their argmax); steer's are its engine's full steps,
the post's sampling (top_p 0.3, penalties) included. Prints each round and a table of medians
with the ratio steer / llama.cpp; nothing is asserted. `scripts/bench_llamacpp.sh` builds the
reference and calls this.

    python scripts/bench_llamacpp.py --steer target/release/steer --rounds 3 \\
        bench-models/xl-gguf/xl-f32.gguf bench-models/xl-gguf/xl-q8_0.gguf
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

PROMPT_IDS = [50256, 40, 1816, 510, 284, 616, 1545, 290, 531]  # BOS + "I went up to my friend and said"
LINE = "LLAMACPP "


def llama_child(path, tokens, threads):
    """One measurement of llama.cpp in this process; prints one JSON line."""
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=256, n_batch=64,
                verbose=False, use_mmap=False)
    best = float("inf")
    for i in range(4):  # a warm-up, then the best of 3, as steer bench
        llm.reset()
        t = time.perf_counter()
        llm.eval(PROMPT_IDS)
        if i:
            best = min(best, time.perf_counter() - t)
    llm.reset()
    llm.eval(PROMPT_IDS)
    tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    llm.eval([tok])  # the first decode step, not timed (steer bench's first token is the prefill's)
    t = time.perf_counter()
    for _ in range(tokens):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        llm.eval([tok])
    step = (time.perf_counter() - t) / tokens
    print(LINE + json.dumps({"prefill_secs": best, "decode_tok_s": 1.0 / step}), flush=True)


def run_llama(path, tokens, threads):
    out = subprocess.run([sys.executable, __file__, "--llama-child", path, "--tokens", str(tokens), "--threads", str(threads)],
                         capture_output=True, text=True, check=True)
    line = next(l for l in out.stdout.splitlines() if l.startswith(LINE))
    return json.loads(line[len(LINE):])


def run_steer(steer, path, tokens):
    env = dict(os.environ, RUST_LOG="warn")
    out = subprocess.run([steer, "bench", "--model", path, "--batches", "1", "--tokens", str(tokens)],
                         capture_output=True, text=True, check=True, env=env)
    text = out.stdout
    prefill = float(re.search(r"prefill 9 tokens \(batch 1\): ([0-9.]+) s", text).group(1))
    decode = float(re.search(r"decode batch 1: [0-9.]+ ms/step, ([0-9.]+) tokens/s per row", text).group(1))
    weights = re.search(r"weights (\S+)", text)
    bw = re.search(r"read bandwidth:? ([0-9.]+) GB/s", text)
    return {"prefill_secs": prefill, "decode_tok_s": decode, "dtype": weights.group(1) if weights else "?",
            "bandwidth": float(bw.group(1)) if bw else float("nan")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf", nargs="*")
    ap.add_argument("--steer", default="target/release/steer")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--llama-child", metavar="GGUF")
    a = ap.parse_args()
    if a.llama_child:
        return llama_child(a.llama_child, a.tokens, a.threads)
    rows = []
    for path in a.gguf:
        steer, llama = [], []
        for r in range(a.rounds):
            s = run_steer(a.steer, path, a.tokens)
            l = run_llama(path, a.tokens, a.threads)
            steer.append(s)
            llama.append(l)
            print(f"{os.path.basename(path)} round {r + 1}: steer ({s['dtype']}, probe {s['bandwidth']:.1f} GB/s) "
                  f"decode {s['decode_tok_s']:.2f} tok/s, prefill {s['prefill_secs']:.3f} s | llama.cpp decode "
                  f"{l['decode_tok_s']:.2f} tok/s, prefill {l['prefill_secs']:.3f} s | decode ratio "
                  f"{s['decode_tok_s'] / l['decode_tok_s']:.2f}x", flush=True)
        rows.append((path, steer, llama))
    print()
    print(f"| file | steer decode batch 1 | llama.cpp | ratio | steer prefill 9 tokens | llama.cpp | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for path, steer, llama in rows:
        med = lambda xs, k: statistics.median(x[k] for x in xs)
        ratios = [s["decode_tok_s"] / l["decode_tok_s"] for s, l in zip(steer, llama)]
        pre = [l["prefill_secs"] / s["prefill_secs"] for s, l in zip(steer, llama)]
        print(f"| {os.path.basename(path)} | {med(steer, 'decode_tok_s'):.2f} tok/s | {med(llama, 'decode_tok_s'):.2f} tok/s | "
              f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) | {med(steer, 'prefill_secs'):.3f} s | "
              f"{med(llama, 'prefill_secs'):.3f} s | {statistics.median(pre):.2f}x ({min(pre):.2f}-{max(pre):.2f}) |")


if __name__ == "__main__":
    main()
