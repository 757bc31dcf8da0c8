"""Golden lm-evaluation-harness answers of Hugging Face `transformers` on the committed tiny
random GPT-2, for clients/python/tests/test_lm_eval.py: what `lm_eval --model
local-completions` must report when it drives `steer serve` on the same weights.

Writes clients/python/tests/lm_eval/goldens.json. Run from the repository root:

    pip install torch transformers safetensors
    python scripts/make_lm_eval_goldens.py [fixtures/tiny-gpt2] [clients/python/tests/lm_eval/goldens.json]

For every loglikelihood request the three committed tasks make (multiple_choice choices with
the default " " target delimiter, the loglikelihood task's pairs; context and continuation
split as the harness splits them: trailing spaces of the context move to the continuation,
continuation tokens = tokens(context + continuation) minus tokens(context), an empty context is
<|endoftext|>): the continuation's log-likelihood and whether it is the greedy continuation.
For every generate_until prompt (its tokens as sent, no BOS): the greedy completion of up to 8
tokens, cut at the first of the task's `until` strings. Each unsteered ("steer") and under the `love` profile
of the tests' server: 4 * (act("Love ") - act("Hate")) at resid_pre.1, BOS first, right-padded
with spaces to equal length, added to positions 0..k-1 of the prompt in the prefill only.
"""
import json
import pathlib
import sys

import torch
from transformers import GPT2LMHeadModel, GPT2TokenizerFast

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import hf_hooks  # noqa: E402

MODEL = sys.argv[1] if len(sys.argv) > 1 else "fixtures/tiny-gpt2"
OUT = sys.argv[2] if len(sys.argv) > 2 else "clients/python/tests/lm_eval/goldens.json"
DATA = pathlib.Path(OUT).parent
BOS, SPACE = 50256, 220
UNTIL, MAX_GEN = ["\n", "oya", " Follow"], 8

model = GPT2LMHeadModel.from_pretrained(MODEL, torch_dtype=torch.float32).eval()
tok = GPT2TokenizerFast.from_pretrained(MODEL)
blocks = model.transformer.h


def enc(text):
    return tok(text)["input_ids"] if text else []


def encode_pair(context, continuation):
    if not context:
        return [BOS], enc(continuation)
    n = len(context) - len(context.rstrip())
    if n:
        continuation, context = context[-n:] + continuation, context[:-n]
    whole, ctx = enc(context + continuation), enc(context)
    return ctx, whole[len(ctx):]


def love_steering():
    texts = [(4.0, "Love "), (-4.0, "Hate")]
    ids = [[BOS] + enc(t) for _, t in texts]
    k = max(map(len, ids))
    total = 0
    for (c, _), i in zip(texts, ids):
        i = i + [SPACE] * (k - len(i))
        with torch.no_grad():
            h = model(torch.tensor([i]), output_hidden_states=True).hidden_states[1][0]
        total = total + c * h
    return total


def steered(steer):
    """A context manager adding `steer` at positions 0..k-1 of resid_pre.1 on passes longer than 1."""
    class Ctx:
        def __enter__(self):
            if steer is None:
                return self
            k = steer.shape[0]

            def add(h):
                if h.shape[1] > 1:
                    h = h.clone()
                    h[:, :k] += steer
                return h
            self.h = hf_hooks.register(blocks[1], "resid_pre", add)
            return self

        def __exit__(self, *a):
            if steer is not None:
                self.h.remove()
    return Ctx()


def loglikelihood(ctx, cont, steer):
    ids = ctx + cont
    with steered(steer), torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0], dim=-1)
    rows = logp[len(ctx) - 1:len(ids) - 1]
    want = torch.tensor(cont)
    ll = rows.gather(1, want[:, None]).sum().item()
    greedy = bool((rows.argmax(dim=-1) == want).all())
    return ll, greedy


def generate(ids, steer):
    out = []
    for _ in range(MAX_GEN):
        # No cache: the prompt is one pass (the steering's), each later pass recomputes it too.
        with steered(steer), torch.no_grad():
            logits = model(torch.tensor([ids + out])).logits[0, -1]
        out.append(int(logits.argmax()))
    text = tok.decode(out)
    for u in UNTIL:
        text = text.split(u)[0]
    return text


def rows(name):
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


pairs = []
for d in rows("mc.jsonl"):
    ctx = f"Question: {d['question']}\nAnswer:"
    pairs += [(ctx, " " + c) for c in d["choices"]]
pairs += [(d["context"], d["continuation"]) for d in rows("ll.jsonl")]
prompts = [d["prompt"] for d in rows("gen.jsonl")]

golden = {"model": MODEL, "torch": torch.__version__, "loglikelihood": {}, "generate_until": {}}
for profile, steer in [("steer", None), ("love", love_steering())]:
    golden["loglikelihood"][profile] = [
        {"context": c, "continuation": x, "loglikelihood": ll, "is_greedy": g}
        for (c, x) in pairs for ll, g in [loglikelihood(*encode_pair(c, x), steer)]
    ]
    golden["generate_until"][profile] = [{"prompt": p, "text": generate(enc(p), steer)} for p in prompts]
pathlib.Path(OUT).write_text(json.dumps(golden, indent=1) + "\n")
print(f"wrote {OUT}: {len(pairs)} loglikelihood pairs and {len(prompts)} generations per profile")
