import grpc
import pytest

from steer_client import generation_pb2, tensor_pb2

LOVE_HATE = [(1, 8.0, "Love "), (1, -8.0, "Hate")]


def test_model_info_and_cache(client):
    info = client.model_info()
    assert info.n_layer == 4 and info.d_model == 64
    assert info.dtype == tensor_pb2.DTYPE_F32


def test_calculate_and_apply_steering_vector_mirrors_the_seed(client):
    unsteered, steered = client.calculate_and_apply_steering_vector(
        "I hate you because", LOVE_HATE, n_tokens=12, n_comparisons=3, use_bos=True, hook="block_output",
        strict_lengths=True, repetition_penalty=1.2, frequency_penalty=0.0)
    assert len(unsteered) == 3 and len(steered) == 3
    assert all(isinstance(t, str) and t for t in unsteered + steered)
    assert unsteered != steered


def test_rows_are_paired_by_seed_and_reproducible(client):
    u, s = client.run("I hate you because", LOVE_HATE, n_tokens=10, n_comparisons=2, seed=5)
    assert [c.seed for c in u] == [c.seed for c in s] == [5, 6]
    assert all(len(c.token_ids) == 10 for c in u + s)
    u2, s2 = client.run("I hate you because", LOVE_HATE, n_tokens=10, n_comparisons=2, seed=5)
    assert [c.token_ids for c in s2] == [c.token_ids for c in s]
    assert all(c.worker == "py-test" for c in u + s)


def test_zero_coefficients_change_nothing(client):
    with pytest.warns(UserWarning, match="resid_pre.2: the steering tensor is all zeros"):
        u, s = client.run("I hate you because", [(2, 0.0, "Love "), (2, 0.0, "Hate")], n_tokens=8, n_comparisons=2)
    assert [c.token_ids for c in u] == [c.token_ids for c in s]


def test_tokens_stream_before_rows_finish(client):
    tensors = client.steering_tensors(LOVE_HATE)
    assert tensors[0].header.shape == [3, 64]
    kinds = [m.WhichOneof("event") for m in client.generate_stream("I hate you because", tensors, n_tokens=5,
                                                                    n_comparisons=1)]
    assert kinds[0] == "token" and kinds.count("finished") == 2 and kinds.count("token") == 10


def test_invalid_arguments_name_the_field(client):
    with pytest.raises(grpc.RpcError) as e:
        client.steering_tensors([(99, 1.0, "x")])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "additions[0].layer" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        list(client.generate_stream("I hate you", [], top_p=1.5))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "top_p" in e.value.details()
