"""Vectors as artifacts from Python: files, the library, dataset vectors (checked with numpy)
and llama.cpp control-vector GGUF round trips through the `gguf` package (llama.cpp's own
Python reader and writer)."""
import os
import subprocess

import gguf
import grpc
import numpy as np
import pytest

from conftest import BINARY, ROOT
from steer_client import load_vector, parse_vector

LOVE_HATE = [(2, 4.0, "Love "), (2, -4.0, "Hate")]
PAIRS = [("I love you", "I hate you"), ("Love is kind", "Hate is cruel"), ("What a joy", "What a pain")]
TINY = str(ROOT / "fixtures" / "tiny-gpt2")


def steered_ids(client, **kw):
    _, steered = client.run("I hate you because", n_tokens=10, n_comparisons=2, seed=3, **kw)
    return [c.token_ids for c in steered]


def test_a_saved_vector_runs_like_its_additions_from_a_file_and_from_the_library(client, tmp_path):
    want = steered_ids(client, activation_additions=LOVE_HATE)
    f = client.save_vector("love", LOVE_HATE)
    path = tmp_path / "love.safetensors"
    path.write_bytes(f.data)
    v = load_vector(path)
    assert v.mode == "prefix" and v.digest == f.info.digest
    assert [a["coeff"] for a in v.meta["origin"]["additions"]] == [4.0, -4.0]
    assert steered_ids(client, tensors=v.steering_tensors()) == want
    put = client.put_vector(f.data, "love-py").info
    assert put.name == "love-py" and put.digest == v.digest
    assert "love-py" in [i.name for i in client.list_vectors().vectors]
    assert steered_ids(client, vectors=[client.vector_ref("love-py")]) == want
    assert client.get_vector(v.digest[:12]).data != b""
    assert client.delete_vector("love-py").digest == v.digest
    with pytest.raises(grpc.RpcError) as e:
        client.get_vector("love-py")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_mean_difference_vector_equals_numpy_on_the_captured_activations(client):
    layers = [1, 3]
    for reduction in ["last_token", "mean"]:
        seen = []
        f = client.train_vector("kind", PAIRS, layers, reduction=reduction, batch_size=2,
                                on_progress=lambda d, t: seen.append((d, t)))
        assert seen == [(2, 3), (3, 3)]
        v = parse_vector(f.data)
        assert v.mode == "all_positions"
        acts = client.activations([t for p in PAIRS for t in p], layers)
        for j, t in enumerate(v.tensors):
            def reduce(prompt):
                shape, values = acts[prompt][j]
                a = np.array(values, dtype=np.float64).reshape(shape)
                return a[-1] if reduction == "last_token" else a[1:].mean(axis=0)  # BOS excluded
            want = np.mean([reduce(2 * i) - reduce(2 * i + 1) for i in range(len(PAIRS))], axis=0)
            assert t.point == f"resid_pre.{layers[j]}" and t.k == 1
            np.testing.assert_allclose(np.array(t.values), want, atol=1e-5)


def test_control_vector_gguf_round_trips_through_the_gguf_package(client, tmp_path):
    # Ours -> llama.cpp: steer vector export, read by gguf.GGUFReader.
    f = client.train_vector("kind", PAIRS, [2, 3])
    src = tmp_path / "kind.safetensors"
    src.write_bytes(f.data)
    out = tmp_path / "kind.gguf"
    subprocess.run([BINARY, "vector", "export", str(src), "--gguf", str(out)], check=True, capture_output=True)
    r = gguf.GGUFReader(str(out))

    def field(name):
        fl = r.fields[name]
        return fl.parts[fl.data[0]]

    assert bytes(field("general.architecture")).decode() == "controlvector"
    assert bytes(field("controlvector.model_hint")).decode() == "gpt2"
    assert int(field("controlvector.layer_count")[0]) == 2
    v = parse_vector(f.data)
    got = {t.name: np.array(t.data, dtype=np.float32) for t in r.tensors}
    # resid_pre.L is the output of block L - 1: llama.cpp's direction.(L - 1).
    assert sorted(got) == ["direction.1", "direction.2"]
    for t in v.tensors:
        np.testing.assert_array_equal(got[f"direction.{t.layer - 1}"], np.array(t.values, dtype=np.float32))

    # llama.cpp -> ours: a control vector written by gguf.GGUFWriter (as repeng and
    # cvector-generator write them), imported and run.
    rng = np.random.default_rng(0)
    dirs = {1: rng.standard_normal(64).astype(np.float32), 3: rng.standard_normal(64).astype(np.float32)}
    path = tmp_path / "cv.gguf"
    w = gguf.GGUFWriter(str(path), "controlvector")
    w.add_string("controlvector.model_hint", "gpt2")
    w.add_uint32("controlvector.layer_count", 3)
    for layer, d in dirs.items():
        w.add_tensor(f"direction.{layer}", d)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    back = tmp_path / "cv.safetensors"
    subprocess.run([BINARY, "vector", "import", str(path), "--out", str(back)], check=True, capture_output=True)
    imported = load_vector(back)
    assert imported.mode == "all_positions"
    assert [t.point for t in imported.tensors] == ["block_output.1", "block_output.3"]
    for t in imported.tensors:
        np.testing.assert_array_equal(np.array(t.values, dtype=np.float32), dirs[t.layer])
    # And it steers: the GGUF as a --vector of steer run, and its tensors from Python.
    run = subprocess.run([BINARY, "run", "--model", TINY, "--prompt", "I think", "--vector", f"{path}:4",
                          "--tokens", "5", "--comparisons", "1", "--json", "--vector-dir", str(tmp_path / "lib")],
                         check=True, capture_output=True, text=True)
    rows = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 2
    base, steered = client.run("I think", n_tokens=5, n_comparisons=1, tensors=imported.steering_tensors(scale=4.0))
    assert base[0].token_ids != steered[0].token_ids


def test_bad_vectors_name_their_field(client):
    with pytest.raises(grpc.RpcError) as e:
        client.put_vector(b"junk")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "data.file" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        client.train_vector("x", [("a", "")], [1])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "pairs.pairs[0].negative" in e.value.details()


def test_library_vectors_over_http_json_and_the_openai_endpoint(server, client):
    import json

    from test_openai import _post

    adds = [{"prompt": t, "coeff": c, "layer": l} for l, c, t in LOVE_HATE]
    lines = _post(server, "/v1/rpc/steer.v1.ActivationService/ComputeVector",
                  {"name": "love-json", "additions": {"additions": adds, "useBos": True}, "store": True}).splitlines()
    info = [json.loads(l) for l in lines if "vector" in l][-1]["vector"]["info"]
    assert info["name"] == "love-json" and info["mode"] == "STEERING_MODE_PREFIX"
    listed = json.loads(_post(server, "/v1/rpc/steer.v1.ActivationService/ListVectors", {}))
    assert "love-json" in [v["name"] for v in listed["vectors"]]
    # /v1/completions with the library vector by name: the gRPC client's steered text.
    body = {"model": "steer", "prompt": "I hate you because", "max_tokens": 6, "seed": 3, "temperature": 1.0,
            "top_p": 0.3, "frequency_penalty": 1.0, "steering": {"vectors": [{"name": "love-json"}]}}
    r = json.loads(_post(server, "/v1/completions", body))
    _, want = client.calculate_and_apply_steering_vector("I hate you because", LOVE_HATE, n_tokens=6,
                                                         n_comparisons=1, seed=3)
    assert r["choices"][0]["text"] == want[0]
    bad = json.loads(_post(server, "/v1/completions", {**body, "steering": {"vectors": [{"name": "nope"}]}}))
    assert bad["error"]["param"] == "steering.vectors[0].name"
    # The library vector is a model by name: the same completion without a steering field.
    models = json.loads(subprocess.run(["curl", "-sS", f"http://{server}/v1/models"], check=True, capture_output=True,
                                       text=True, timeout=60).stdout)
    assert "love-json" in [m["id"] for m in models["data"]]
    by_model = json.loads(_post(server, "/v1/completions", {**{k: v for k, v in body.items() if k != "steering"}, "model": "love-json"}))
    assert by_model["choices"][0]["text"] == want[0] and by_model["model"] == "love-json"


def test_a_vector_file_profile_steers_as_its_additions(client, tmp_path):
    import json
    import socket

    from conftest import wait_until_serving
    from steer_client import SteerClient
    from test_openai import _post

    path = tmp_path / "love.safetensors"
    path.write_bytes(client.save_vector("love-file", LOVE_HATE).data)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([BINARY, "serve", "--model", str(ROOT / "fixtures" / "tiny-gpt2"), "--addr", f"127.0.0.1:{port}",
                             "--no-vector-library", "--profile", f"half=file:{path}:0.5", "--profile", f"whole=file:{path}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "STEER_LOG": "warn"})
    try:
        c = SteerClient(f"127.0.0.1:{port}")
        wait_until_serving(c, proc)
        c.close()
        addr = f"127.0.0.1:{port}"
        body = {"prompt": "I hate you because", "max_tokens": 0, "echo": True, "logprobs": 0}
        adds = [{"layer": l, "coeff": c, "text": t} for l, c, t in LOVE_HATE]
        inline = json.loads(_post(addr, "/v1/completions", {**body, "model": "steer", "steering": {"additions": adds}}))
        whole = json.loads(_post(addr, "/v1/completions", {**body, "model": "whole"}))
        half = json.loads(_post(addr, "/v1/completions", {**body, "model": "half"}))
        lp = lambda r: r["choices"][0]["logprobs"]["token_logprobs"]  # noqa: E731
        assert lp(whole) == lp(inline) and lp(half) != lp(whole)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    bad = subprocess.run([BINARY, "serve", "--model", str(ROOT / "fixtures" / "tiny-gpt2"), "--profile", "x=file:/nonexistent.safetensors"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--profile x=file:/nonexistent.safetensors" in bad.stderr
