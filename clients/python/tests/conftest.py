"""Starts a real `steer serve` on the tiny random model for the tests."""
import os
import pathlib
import socket
import subprocess
import time

import grpc
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
# Every server the tests start serves the unsteered model as "steer" (OpenAI's `model`).
os.environ.setdefault("STEER_SERVED_MODEL_NAME", "steer")
# A steering profile of the session's server, selected with `model`.
LOVE_PROFILE = '{"additions": [{"layer": 1, "coeff": 4.0, "text": "Love "}, {"layer": 1, "coeff": -4.0, "text": "Hate"}]}'


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(client, proc, limit=120):
    """Polls ModelInfo until the server answers (the model has loaded), or fails if it exits."""
    deadline = time.monotonic() + limit
    while True:
        try:
            client.model_info()
            return
        except grpc.RpcError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("steer serve did not come up")
            time.sleep(0.1)


BINARY = os.environ.get("STEER_BIN", str(ROOT / "target" / "debug" / "steer"))


@pytest.fixture(scope="session")
def vector_dir(tmp_path_factory):
    """The server's vector library."""
    return tmp_path_factory.mktemp("vectors")


@pytest.fixture(scope="session")
def server(vector_dir):
    binary = BINARY
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "serve", "--model", str(ROOT / "fixtures" / "tiny-gpt2"), "--addr", f"127.0.0.1:{port}",
         "--worker-id", "py-test", "--vector-dir", str(vector_dir), "--profile", f"love={LOVE_PROFILE}",
         "--sae-dir", str(ROOT / "fixtures")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "STEER_LOG": "warn"})
    addr = f"127.0.0.1:{port}"
    from steer_client import SteerClient

    client = SteerClient(addr)
    wait_until_serving(client, proc)
    yield addr
    client.close()
    proc.terminate()
    assert proc.wait(timeout=30) == 0


@pytest.fixture()
def client(server):
    """A client of the session's server, closed after each test."""
    from steer_client import SteerClient

    c = SteerClient(server)
    yield c
    c.close()
