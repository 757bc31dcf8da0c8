"""TLS and bearer tokens from Python, against a real `steer serve --tls-cert ... --auth-tokens ...`."""
import os
import pathlib
import subprocess

import grpc
import pytest

from conftest import ROOT, _free_port, wait_until_serving
from steer_client import SteerClient

TOKEN = "python-test-token-0123456789"


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def secure_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=steer-test-ca", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
             cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.crt",
             "-days", "2", "-extfile", "ext.cnf", cwd=d)
    (d / "tokens").write_text(f"# one per line\n{TOKEN}\n")
    binary = os.environ.get("STEER_BIN", str(ROOT / "target" / "debug" / "steer"))
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "serve", "--model", str(ROOT / "fixtures" / "tiny-gpt2"), "--addr", f"127.0.0.1:{port}",
         "--tls-cert", str(d / "server.crt"), "--tls-key", str(d / "server.key"), "--auth-tokens", str(d / "tokens")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "STEER_LOG": "warn"})
    addr = f"localhost:{port}"
    client = SteerClient(addr, tls_ca=str(d / "ca.crt"), token=TOKEN, timeout=30)
    wait_until_serving(client, proc)
    yield addr, d / "ca.crt"
    client.close()
    proc.terminate()
    assert proc.wait(timeout=30) == 0


def test_tls_with_the_right_token_runs_the_experiment(secure_server):
    addr, ca = secure_server
    client = SteerClient(addr, tls_ca=str(ca), token=TOKEN)
    unsteered, steered = client.calculate_and_apply_steering_vector(
        "I hate you because", [(1, 4.0, "Love "), (1, -4.0, "Hate")], n_tokens=4, n_comparisons=1)
    assert len(unsteered) == len(steered) == 1
    client.close()


def test_a_missing_or_wrong_token_is_unauthenticated(secure_server):
    addr, ca = secure_server
    for token in ("", "python-test-token-0123456780"):
        client = SteerClient(addr, tls_ca=str(ca), token=token)
        with pytest.raises(grpc.RpcError) as e:
            client.model_info()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        client.close()


def test_an_untrusted_server_is_refused(secure_server):
    addr, _ = secure_server
    client = SteerClient(addr, tls=True, token=TOKEN, timeout=5)
    with pytest.raises(grpc.RpcError) as e:
        client.model_info()
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    client.close()


def test_the_openai_endpoint_takes_the_token_as_its_api_key(secure_server):
    import openai

    addr, ca = secure_server
    http = openai.DefaultHttpxClient(verify=str(ca))
    ok = openai.OpenAI(base_url=f"https://{addr}/v1", api_key=TOKEN, http_client=http)
    r = ok.completions.create(model="steer", prompt="I hate you because", max_tokens=3)
    assert len(r.choices) == 1
    bad = openai.OpenAI(base_url=f"https://{addr}/v1", api_key="not-the-token-000000", http_client=http, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model="steer", prompt="I hate you because", max_tokens=3)


def test_models_and_tokenizer_routes_need_the_token_too(secure_server):
    import json
    import ssl
    import urllib.error
    import urllib.request

    addr, ca = secure_server
    ctx = ssl.create_default_context(cafile=str(ca))

    def status(method, path, body, token=None):
        headers = {"content-type": "application/json", **({"authorization": f"Bearer {token}"} if token else {})}
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"https://{addr}{path}", data=data, headers=headers, method=method)
        try:
            return urllib.request.urlopen(req, context=ctx, timeout=60).status
        except urllib.error.HTTPError as e:
            return e.code

    for method, path, body in [("GET", "/v1/models", None), ("GET", "/tokenizer_info", None),
                               ("POST", "/tokenize", {"prompt": "Hi"}), ("POST", "/detokenize", {"tokens": [17250]})]:
        assert status(method, path, body) == 401, path
        assert status(method, path, body, TOKEN) == 200, path
