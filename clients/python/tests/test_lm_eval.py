"""EleutherAI's lm-evaluation-harness driving `steer serve` as it drives any OpenAI-compatible
server (`--model local-completions`, `tokenizer_backend=remote`, fully offline), on three small
committed tasks (lm_eval/: multiple_choice, loglikelihood, generate_until with `until`),
unsteered and under the server's `love` steering profile. Every log-likelihood, greedy flag
and generation must equal Hugging Face's on the same weights (lm_eval/goldens.json, written by
scripts/make_lm_eval_goldens.py), and the profile must change them.

The harness runs from its own venv (.ci/run installs `lm_eval[api]` there and puts `lm_eval` on
PATH); without it this test is skipped with a notice, unless STEER_REQUIRE_LM_EVAL=1 (CI)."""
import glob
import json
import os
import pathlib
import shutil
import subprocess

import pytest

HERE = pathlib.Path(__file__).parent / "lm_eval"
TASKS = ["steer_mc", "steer_ll", "steer_gen"]
LM_EVAL = os.environ.get("LM_EVAL") or shutil.which("lm_eval")


@pytest.fixture(scope="module")
def lm_eval():
    if not LM_EVAL:
        if os.environ.get("STEER_REQUIRE_LM_EVAL") == "1":
            pytest.fail("lm_eval is not installed (pip install 'lm_eval[api]')")
        pytest.skip("lm_eval is not installed (pip install 'lm_eval[api]'); .ci/run installs it")
    return LM_EVAL


def run_harness(lm_eval, server, model, tmp):
    tasks = tmp / "tasks"
    tasks.mkdir(exist_ok=True)
    for i, doc in enumerate((HERE / "tasks.yaml.in").read_text().split("\n---\n")):
        (tasks / f"task{i}.yaml").write_text(doc.replace("@DATA@", str(HERE)))
    out = tmp / f"out-{model}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(tmp / "hf-home"), "HF_DATASETS_CACHE": str(tmp / "datasets"), "TOKENIZERS_PARALLELISM": "false"}
    args = [lm_eval, "--model", "local-completions", "--model_args",
            f"base_url=http://{server}/v1/completions,model={model},tokenizer_backend=remote,num_concurrent=1,max_retries=1",
            "--tasks", ",".join(TASKS), "--include_path", str(tasks), "--output_path", str(out), "--log_samples", "--seed", "1234"]
    run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    print(f"$ lm_eval ... model={model}\n{run.stdout}")  # the results table, in the test log
    assert run.returncode == 0, run.stderr[-4000:]
    samples = {}
    for task in TASKS:
        (path,) = glob.glob(str(out / "**" / f"samples_{task}_*.jsonl"), recursive=True)
        samples[task] = [json.loads(line) for line in open(path)]
    (results,) = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    return samples, json.load(open(results))["results"]


def loglikelihoods(samples):
    """(context, continuation) -> (loglikelihood, is_greedy) over the loglikelihood requests."""
    out = {}
    for task in ("steer_mc", "steer_ll"):
        for s in samples[task]:
            # {"gen_args_0": {"arg_0": context, "arg_1": continuation}, ...}, values as strings.
            args = s["arguments"]
            args = list(args.values()) if isinstance(args, dict) else args
            for a, resp in zip(args, s["resps"]):
                a = list(a.values()) if isinstance(a, dict) else a
                ll, greedy = resp[0]
                out[(a[0], a[1])] = (float(ll), str(greedy) == "True")
    return out


@pytest.fixture(scope="module")
def runs(lm_eval, server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lm_eval")
    return {model: run_harness(lm_eval, server, model, tmp) for model in ("steer", "love")}


@pytest.mark.parametrize("model", ["steer", "love"])
def test_the_harness_scores_equal_hugging_face_on_the_same_weights(runs, model):
    golden = json.loads((HERE / "goldens.json").read_text())
    samples, results = runs[model]
    got = loglikelihoods(samples)
    want = {(g["context"], g["continuation"]): (g["loglikelihood"], g["is_greedy"]) for g in golden["loglikelihood"][model]}
    assert set(got) == set(want), "the harness asked for other pairs than the goldens hold"
    for key, (ll, greedy) in want.items():
        assert got[key][0] == pytest.approx(ll, abs=1e-4), key
        assert got[key][1] == greedy, key
    worst = max(abs(got[k][0] - want[k][0]) for k in want)
    print(f"{model}: {len(want)} loglikelihoods, largest difference from Hugging Face {worst:.2e}")
    gens = [s["resps"][0][0] for s in samples["steer_gen"]]
    docs = [s["doc"]["prompt"] for s in samples["steer_gen"]]
    want_gen = {g["prompt"]: g["text"] for g in golden["generate_until"][model]}
    assert gens == [want_gen[p] for p in docs]
    assert set(results) >= set(TASKS)


def test_the_profile_changes_the_scores(runs):
    plain, love = loglikelihoods(runs["steer"][0]), loglikelihoods(runs["love"][0])
    assert max(abs(plain[k][0] - love[k][0]) for k in plain) > 1e-2
