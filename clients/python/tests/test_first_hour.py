"""What a researcher meets in the first hour: addresses, names, padding, printing, defaults."""
import pathlib
import time

import grpc
import numpy as np
import pytest

from steer_client import SteerClient, address, evals

ROOT = pathlib.Path(__file__).resolve().parents[3]


def test_every_address_form_reaches_the_server(server):
    host, port = server.rsplit(":", 1)
    for form in [server, f"http://{server}", f"http://{server}/", f"dns:{server}", f"dns:///{server}"]:
        c = SteerClient(form)
        assert c.model_info().n_layer == 4, form
        c.close()
    assert address("localhost") == ("localhost:50051", False)
    assert address("https://h.example:443") == ("h.example:443", True)
    for bad in ["ftp://h:1", "h:port", "http://h:1/path"]:
        with pytest.raises(ValueError, match="address"):
            address(bad)


def test_nothing_listening_fails_fast_naming_unavailable():
    c = SteerClient("127.0.0.1:1")
    t = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        c.model_info()
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - t < 2.0
    c.close()


def test_hooks_take_both_spellings_and_a_typo_lists_the_names(client):
    a = client.steering_tensors([(1, 2.0, "Love")], hook="block-output")
    b = client.steering_tensors([(1, 2.0, "Love")], hook="block_output")
    assert a[0].values() == b[0].values() and a[0].point == "block_output.1"
    with pytest.raises(ValueError, match="resid_pre, block_output"):
        client.steering_tensors([(1, 2.0, "Love")], hook="resid-pree")


def test_a_short_prompt_is_padded_on_request(client):
    adds = [(1, 5.0, "I talk about weddings constantly")]
    with pytest.raises(grpc.RpcError) as e:
        client.run("Hi", adds, n_tokens=2, n_comparisons=1)
    assert "pad_short_prompt=True" in e.value.details()
    u, s = client.run("Hi", adds, n_tokens=2, n_comparisons=1, pad_short_prompt=True)
    assert len(s[0].token_ids) == 2 and s[0].finish_reason == "length"


def test_steering_tensors_print_and_convert_with_their_shape(client):
    t = client.steering_tensors([(2, 3.0, "Love "), (2, -3.0, "Hate")])[0]
    assert t.shape == (3, 64)
    rows = t.values()
    assert len(rows) == 3 and all(len(r) == 64 for r in rows)
    arr = t.numpy()
    assert arr.shape == (3, 64) and arr.dtype == np.float32 and np.allclose(arr, np.array(rows))
    text = repr(t)
    assert text.startswith("SteeringTensor(resid_pre.2, shape [3, 64], position norms [") and "\\x" not in text


def test_text_sets_default_to_the_committed_ones():
    sets = evals.text_sets()
    assert sorted(sets) == ["unrelated", "wedding"]
    assert sets == evals.text_sets(ROOT / "fixtures" / "eval"), "the packaged copy equals fixtures/eval"
