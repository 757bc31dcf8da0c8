"""Steering beyond addition from Python: ops and windows on tensors and library vectors, the
ablated direction gone from activations, and SAE features (the server's SaeVector and this
client's own vector_from_sae give the same vector)."""
import json
import math
import subprocess

import grpc
import pytest

from conftest import BINARY, ROOT
from steer_client import load_vector, parse_vector, vector_from_sae
from steer_client.vectors import Vector, VectorTensor

GOLDENS = json.loads((ROOT / "fixtures" / "goldens" / "tiny-gpt2-ops.json").read_text())
SAE = ROOT / "fixtures" / "tiny-sae"
GREEDY = dict(temperature=0.0, top_p=None, frequency_penalty=0.0, repetition_penalty=1.0)
PROMPT = "I hate you because"


def direction(point, values):
    """A one-tensor vector (only its tensors and window are used to make steering tensors)."""
    return Vector({"mode": "all_positions"}, [VectorTensor(point, 1, len(values), list(values))])


def test_ablate_over_the_generated_tokens_gives_the_hugging_face_tokens(client):
    m = GOLDENS["mixed"]
    t = direction("resid_pre.2", m["direction"]).steering_tensors(op="ablate", window="generated")[0]
    _, steered = client.run(PROMPT, n_tokens=20, n_comparisons=1, tensors=[t], **GREEDY)
    assert steered[0].token_ids == m["rows"][2]["greedy"]
    # The same tensor as a clamp over positions 3..8 is another steering.
    c = t.with_op("clamp=4").in_window("3-8")
    assert (c.header.op, c.header.clamp_value, c.header.window_start, c.header.window_end) == (3, 4.0, 3, 8)
    _, clamped = client.run(PROMPT, n_tokens=20, n_comparisons=1, tensors=[c], **GREEDY)
    assert clamped[0].token_ids != steered[0].token_ids
    with pytest.raises(ValueError, match="window"):
        t.in_window("8-3")
    with pytest.raises(ValueError, match="op"):
        t.with_op("clamp")


def test_after_an_ablation_the_activations_have_no_component_along_the_direction(client):
    info = client.model_info()
    v = vector_from_sae(SAE, [3], d_model=info.d_model, n_layer=info.n_layer)  # block_output.1
    t = v.steering_tensors(op="ablate", window="2-")[0]
    u = v.tensors[0].values
    norm = math.sqrt(sum(x * x for x in u))
    u = [x / norm for x in u]
    [[(shape, after)]] = client.activations(["Steering one direction at a time"], [1], hook="block_output", steering=[t])
    [[(_, before)]] = client.activations(["Steering one direction at a time"], [1], hook="block_output")
    d = shape[1]
    for pos in range(shape[0]):
        a = sum(x * y for x, y in zip(after[pos * d:(pos + 1) * d], u))
        b = sum(x * y for x, y in zip(before[pos * d:(pos + 1) * d], u))
        if pos >= 2:
            assert abs(a) < 1e-4, (pos, a, b)
        else:
            assert a == b


def test_sae_features_from_the_server_and_from_python_are_the_same_vector(client, tmp_path):
    s = GOLDENS["sae"]
    [sae] = [i for i in client.list_saes() if i.name == "tiny-sae"]
    assert (sae.d_in, sae.d_sae, sae.hook_name, sae.unusable) == (64, 16, "blocks.1.hook_resid_post", "")
    feats = client.sae_features("tiny-sae", first=0, count=16, top_tokens=3).features
    assert [f.index for f in feats] == list(range(16)) and all(len(f.top_tokens) == 3 for f in feats)
    served = parse_vector(client.sae_vector("tiny-sae", [s["feature"]], scale=s["scale"]).data)
    info = client.model_info()
    local = vector_from_sae(SAE, [s["feature"]], scale=s["scale"], d_model=info.d_model, n_layer=info.n_layer,
                            fingerprint=info.weights_fingerprint, model=info.name)
    assert local.digest == served.digest
    assert local.tensors[0].values == served.tensors[0].values
    assert local.meta["origin"]["w_dec_digest"] == served.meta["origin"]["w_dec_digest"]
    # The server accepts the Python-written file (it checks the digest), and it steers as the HF hook.
    client.put_vector(local.to_bytes(), "sae-f5")
    _, steered = client.run(PROMPT, n_tokens=20, n_comparisons=1, vectors=[client.vector_ref("sae-f5")], **GREEDY)
    assert steered[0].token_ids == s["greedy"]
    # A clamp vector: same digest both ways (the op is part of it).
    clamp_local = vector_from_sae(SAE, [2, 9], clamp=2.5, d_model=info.d_model, n_layer=info.n_layer)
    clamp_served = parse_vector(client.sae_vector("tiny-sae", [2, 9], clamp=2.5).data)
    assert clamp_local.op == clamp_served.op == "clamp=2.5"
    assert clamp_local.digest == clamp_served.digest
    client.put_vector(clamp_local.to_bytes(), "sae-clamp")


def test_from_sae_on_the_command_line_and_bad_saes_name_their_field(server, tmp_path):
    out = tmp_path / "f5.safetensors"
    s = GOLDENS["sae"]
    subprocess.run([BINARY, "vector", "from-sae", "--url", server, "--sae", str(SAE), "--feature", str(s["feature"]),
                    "--scale", str(s["scale"]), "--out", str(out)], check=True, capture_output=True)
    v = load_vector(out)
    assert v.meta["origin"]["kind"] == "sae" and v.meta["origin"]["features"] == [s["feature"]]
    bad = tmp_path / "bad-sae"
    bad.mkdir()
    (bad / "cfg.json").write_text(json.dumps({"d_in": 32, "d_sae": 4, "hook_name": "blocks.0.hook_resid_pre"}))
    (bad / "sae_weights.safetensors").write_bytes((SAE / "sae_weights.safetensors").read_bytes())
    with pytest.raises(ValueError, match="cfg.json.d_in"):
        vector_from_sae(bad, [0], d_model=64, n_layer=4)
    (bad / "cfg.json").write_text(json.dumps({"d_in": 64, "d_sae": 16, "hook_name": "blocks.0.hook_mlp_out"}))
    with pytest.raises(ValueError, match="cfg.json.hook_name"):
        vector_from_sae(bad, [0], d_model=64, n_layer=4)
    run = subprocess.run([BINARY, "vector", "from-sae", "--url", server, "--sae", str(bad), "--feature", "0",
                          "--out", str(tmp_path / "x.safetensors")], capture_output=True, text=True)
    assert run.returncode != 0 and "cfg.json.hook_name" in run.stderr
    with pytest.raises(grpc.RpcError) as e:
        client_sae = __import__("steer_client").SteerClient(server)
        client_sae.sae_vector("tiny-sae", [99])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "features[0]" in e.value.details()


def test_library_vectors_take_an_op_and_window_over_http(server, client):
    m = GOLDENS["mixed"]
    info = client.model_info()
    # A file holding the golden direction at resid_pre.2: the SAE file's layout, its tensor swapped.
    v = vector_from_sae(SAE, [0], d_model=info.d_model, n_layer=info.n_layer)
    v.tensors[0] = VectorTensor("resid_pre.2", 1, 64, m["direction"])
    v.meta["tensors"][0].update(name="resid_pre.2", hook="resid_pre", layer=2)
    from steer_client.vectors import _digest
    v.meta["digest"] = _digest("all_positions", "add", v.tensors)
    client.put_vector(v.to_bytes(), "mixed-dir")
    body = {"prompt": PROMPT, "max_tokens": 20, "temperature": 0, "frequency_penalty": 0,
            "steering": {"vectors": [{"name": "mixed-dir", "op": "ablate", "window": "generated"}]}}
    out = json.loads(subprocess.run(["curl", "-sS", f"http://{server}/v1/completions", "-H", "content-type: application/json",
                                     "-d", json.dumps(body)], check=True, capture_output=True, text=True).stdout)
    text = out["choices"][0]["text"]
    want = client.run(PROMPT, n_tokens=20, n_comparisons=1, vectors=[client.vector_ref("mixed-dir", op="ablate", window="generated")],
                      **GREEDY)[1][0]
    assert want.token_ids == m["rows"][2]["greedy"]
    assert text == want.text
    body["steering"]["vectors"][0]["op"] = "squash"
    bad = json.loads(subprocess.run(["curl", "-sS", f"http://{server}/v1/completions", "-H", "content-type: application/json",
                                     "-d", json.dumps(body)], check=True, capture_output=True, text=True).stdout)
    assert bad["error"]["param"] == "steering.vectors[0].op", bad


def test_profiles_carry_ops_and_windows_from_files_and_json(client, tmp_path):
    """A file profile of a clamp vector (its op in the file) and a JSON profile ablating a
    library vector over the generated tokens each steer as the same steering sent inline."""
    import os
    import socket

    from conftest import wait_until_serving
    from steer_client import SteerClient

    info = client.model_info()
    clamp = vector_from_sae(SAE, [2, 9], clamp=2.5, d_model=info.d_model, n_layer=info.n_layer)
    path = tmp_path / "clamp.safetensors"
    clamp.save(path)
    lib = tmp_path / "lib"
    lib.mkdir()
    m = GOLDENS["mixed"]
    d = direction("resid_pre.2", m["direction"])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ablate_profile = json.dumps({"vectors": [{"name": "mixed-dir", "op": "ablate", "window": "generated"}]})
    proc = subprocess.Popen([BINARY, "serve", "--model", str(ROOT / "fixtures" / "tiny-gpt2"), "--addr", f"127.0.0.1:{port}",
                             "--vector-dir", str(lib), "--profile", f"clamped=file:{path}", "--profile", f"ablated={ablate_profile}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "STEER_LOG": "warn"})
    try:
        c = SteerClient(f"127.0.0.1:{port}")
        wait_until_serving(c, proc)
        # The library vector the JSON profile names (resolved per request).
        v = vector_from_sae(SAE, [0], d_model=info.d_model, n_layer=info.n_layer)
        v.tensors[0] = VectorTensor("resid_pre.2", 1, 64, m["direction"])
        v.meta["tensors"][0].update(name="resid_pre.2", hook="resid_pre", layer=2)
        from steer_client.vectors import _digest
        v.meta["digest"] = _digest("all_positions", "add", v.tensors)
        c.put_vector(v.to_bytes(), "mixed-dir")
        addr = f"127.0.0.1:{port}"

        def complete(model):
            body = {"model": model, "prompt": PROMPT, "max_tokens": 20, "temperature": 0, "frequency_penalty": 0}
            out = subprocess.run(["curl", "-sS", f"http://{addr}/v1/completions", "-H", "content-type: application/json",
                                  "-d", json.dumps(body)], check=True, capture_output=True, text=True).stdout
            return json.loads(out)["choices"][0]["text"]

        _, want_clamped = c.run(PROMPT, n_tokens=20, n_comparisons=1, tensors=clamp.steering_tensors(), **GREEDY)
        _, want_ablated = c.run(PROMPT, n_tokens=20, n_comparisons=1, tensors=d.steering_tensors(op="ablate", window="generated"),
                                **GREEDY)
        assert want_ablated[0].token_ids == m["rows"][2]["greedy"]
        assert complete("clamped") == want_clamped[0].text
        assert complete("ablated") == want_ablated[0].text
        assert complete("clamped") != complete("steer")
        c.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
