"""The Python evals against `steer eval --json` (the same measurements from the Rust client, on
the same server) and against numpy on the captured activations."""
import json
import math
import subprocess

import numpy as np
import pytest

from conftest import BINARY, ROOT
from steer_client import evals


def cli(server, *args):
    out = subprocess.run([BINARY, "eval", *args, "--json", "--activation-url", f"http://{server}"],
                         check=True, capture_output=True, text=True)
    return [json.loads(l) for l in out.stdout.splitlines()]


def test_perplexity_and_kl_equal_the_rust_clients(server, client):
    sets = evals.text_sets(ROOT / "fixtures" / "eval")
    assert sorted(sets) == ["unrelated", "wedding"]
    rows = evals.perplexity_sweep(client, " wedding", " ", [1, 3], [2.0], sets)
    want = cli(server, "perplexity", "--layers", "1,3", "--coeffs", "2")
    assert len(rows) == len(want) == 3
    for r, w in zip(rows, want):
        assert (r["layer"], r["coeff"], r["method"]) == (w["layer"], w["coeff"], w["method"])
        for name in sets:
            for k in ("perplexity_unsteered", "perplexity_steered", "ratio"):
                assert math.isclose(r["sets"][name][k], w["sets"][name][k], rel_tol=1e-9), (name, k)
    kl = evals.kl_sweep(client, " wedding", " ", [2], [1.0, 4.0], "I'm excited because I'm going to a", top=3)
    want = cli(server, "kl", "--layers", "2", "--coeffs", "1,4", "--top", "3")
    assert [round(r["kl"], 9) for r in kl] == [round(w["kl"], 9) for w in want]
    assert [t["token_id"] for t in kl[1]["top"]] == [t["token_id"] for t in want[1]["top"]]


def test_norms_equal_numpy_and_words_are_counted_whole(client):
    rows = evals.norms(client, "Anger", "Calm", [0, 2], [10.0], "I think you're")
    for r in rows:
        (shape, values), = client.activations(["I think you're"], [r["layer"]])[0]
        a = np.array(values).reshape(shape)[1:]
        assert math.isclose(r["resid_norm"], np.linalg.norm(a, axis=1).mean(), rel_tol=1e-6)
        t = np.array(client.steering_tensors([(r["layer"], 10.0, "Anger"), (r["layer"], -10.0, "Calm")])[0].values())
        assert math.isclose(r["steering_norm"], np.linalg.norm(t.reshape(-1, shape[1]), axis=1).mean(), rel_tol=1e-6)
    assert evals.count_words("A Wedding! wedding-cake, unmarried; married", evals.WEDDING_WORDS) == 3
    t = evals.topic_words(client, " wedding", " ", [1], [4.0], "I went up to my friend and said", n=2, n_tokens=5)
    assert t[0]["completions"] == 2 and 0 <= t[0]["fraction_steered"] <= 1


def test_a_server_sweep_equals_the_client_side_one_and_is_kept(client):
    sets = {"w": ["The bride smiled at the groom.", "We cut the cake."]}
    sweep_id = evals.start_sweep(client, "perplexity", " wedding", " ", [1, 2], [2.0], sets)
    seen = []
    done = evals.watch_sweep(client, sweep_id, lambda d, t: seen.append((d, t)))
    assert done["state"] == "done" and seen[-1] == (3, 3)
    local = evals.perplexity_sweep(client, " wedding", " ", [1, 2], [2.0], sets)
    for a, b in zip(done["rows"], local):
        assert math.isclose(a["sets"]["w"]["ratio"], b["sets"]["w"]["ratio"], rel_tol=1e-12)
    assert sweep_id in [s["id"] for s in evals.list_sweeps(client)]
    assert evals.watch_sweep(client, sweep_id)["rows"] == done["rows"]

    norms_id = evals.start_sweep(client, "norms", "Anger", "Calm", [0, 2], [10.0], prompt="I think you're")
    rows = evals.watch_sweep(client, norms_id)["rows"]
    assert [r["layer"] for r in rows] == [0, 2] and all(r["resid_norm"] > 0 for r in rows)
