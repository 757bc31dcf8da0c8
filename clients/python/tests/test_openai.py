"""The OpenAI-compatible HTTP/JSON endpoint (`POST /v1/completions` with a `steering` field),
used as OpenAI SDK and curl users would, against a real `steer serve`."""
import json
import subprocess

import openai
import pytest

from steer_client import SteerClient

LOVE_HATE = {"additions": [{"layer": 1, "coeff": 4.0, "text": "Love "}, {"layer": 1, "coeff": -4.0, "text": "Hate"}]}
# The post's sampling, spelled as OpenAI fields: temperature 1, top_p 0.3, frequency penalty 1.
POST = {"temperature": 1.0, "top_p": 0.3, "frequency_penalty": 1.0}


@pytest.fixture()
def oai(server):
    return openai.OpenAI(base_url=f"http://{server}/v1", api_key="unused")


def test_steered_completion_equals_the_grpc_clients(server, oai):
    r = oai.completions.create(model="steer", prompt="I hate you because", max_tokens=6, seed=3, **POST,
                               extra_body={"steering": LOVE_HATE})
    assert r.object == "text_completion" and len(r.choices) == 1
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 6
    grpc_client = SteerClient(server)
    _, steered = grpc_client.calculate_and_apply_steering_vector(
        "I hate you because", [(a["layer"], a["coeff"], a["text"]) for a in LOVE_HATE["additions"]],
        n_tokens=6, n_comparisons=1, seed=3)
    assert r.choices[0].text == steered[0]
    grpc_client.close()


def test_compare_returns_unsteered_then_steered_choices(oai):
    r = oai.completions.create(model="steer", prompt="I hate you because", max_tokens=5, n=2, seed=1, **POST,
                               extra_body={"steering": {**LOVE_HATE, "compare": True}})
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [c.model_extra["steered"] for c in r.choices] == [False, False, True, True]
    assert [c.text for c in r.choices[:2]] != [c.text for c in r.choices[2:]]


def test_streaming_yields_the_same_text_token_by_token(oai):
    args = dict(model="steer", prompt="I hate you because", max_tokens=6, seed=5, **POST, extra_body={"steering": LOVE_HATE})
    whole = oai.completions.create(**args).choices[0].text
    chunks = list(oai.completions.create(stream=True, **args))
    assert len(chunks) >= 6
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason == "length"


def test_bad_requests_are_openai_errors_naming_the_parameter(oai):
    with pytest.raises(openai.BadRequestError) as e:
        oai.completions.create(model="steer", prompt="", max_tokens=4)
    assert e.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as e:
        oai.completions.create(model="steer", prompt="Hi", max_tokens=4,
                               extra_body={"steering": {"additions": [{"layer": 9, "coeff": 1, "text": "x"}]}})
    assert e.value.body["param"] == "steering.additions[0].layer"


def test_curl_streams_server_sent_events(server):
    body = json.dumps({"prompt": "I hate you because", "max_tokens": 3, "stream": True, "steering": LOVE_HATE})
    out = subprocess.run(["curl", "-sSN", f"http://{server}/v1/completions", "-H", "content-type: application/json", "-d", body],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    events = [line[len("data: "):] for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    tokens = [json.loads(e) for e in events[:-1]]
    assert len(tokens) == 4 and tokens[-1]["choices"][0]["finish_reason"] == "length"


def _post(server, path, body, accept=None):
    args = ["curl", "-sS", f"http://{server}{path}", "-H", "content-type: application/json", "-d", json.dumps(body)]
    if accept:
        args += ["-H", f"accept: {accept}"]
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout


def test_json_mirrors_of_the_rpcs_reproduce_the_grpc_clients_output(server):
    import base64

    info = json.loads(_post(server, "/v1/rpc/steer.v1.GenerationService/GetModelInfo", {}))["info"]
    assert info["nLayer"] == 4 and info["dModel"] == 64
    adds = [{"prompt": a["text"], "coeff": a["coeff"], "layer": a["layer"]} for a in LOVE_HATE["additions"]]
    lines = _post(server, "/v1/rpc/steer.v1.ActivationService/GetSteeringTensors",
                  {"additions": adds, "hook": "HOOK_RESID_PRE", "useBos": True}).splitlines()
    tensors = []
    for m in map(json.loads, lines):
        if "header" in m:
            tensors.append({"header": m["header"], "data": b""})
        elif "chunk" in m:
            tensors[-1]["data"] += base64.b64decode(m["chunk"]["data"])
    inline = [{"header": t["header"], "data": base64.b64encode(t["data"]).decode()} for t in tensors]
    setup = {"prompt": "I hate you because", "useBos": True, "nComparisons": 1, "maxNewTokens": 6, "seed": 3,
             "nTensors": len(inline), "sampling": {"temperature": 1.0, "topP": 0.3, "frequencyPenalty": 1.0}}
    out = _post(server, "/v1/rpc/steer.v1.GenerationService/GenerateFromTensors", {"setup": setup, "tensors": inline},
                accept="text/event-stream")
    events = [json.loads(l[len("data: "):]) for l in out.splitlines() if l.startswith("data: ")]
    steered = [e["finished"]["text"] for e in events if "finished" in e and e["finished"].get("steered")]
    client = SteerClient(server)
    _, want = client.calculate_and_apply_steering_vector(
        "I hate you because", [(a["layer"], a["coeff"], a["text"]) for a in LOVE_HATE["additions"]],
        n_tokens=6, n_comparisons=1, seed=3)
    client.close()
    assert steered == want
    bad = json.loads(_post(server, "/v1/rpc/steer.v1.GenerationService/GenerateFromTensors",
                           {"setup": {"prompt": "", "nComparisons": 1, "maxNewTokens": 2}}))
    assert bad["error"]["param"] == "setup.prompt"


def test_hooks_either_spelling_padding_and_warnings(oai):
    both = [oai.completions.create(model="steer", prompt="I hate you because", max_tokens=4, seed=2, **POST,
                                   extra_body={"steering": {**LOVE_HATE, "hook": h}}).choices[0].text
            for h in ("block_output", "block-output")]
    assert both[0] == both[1]
    with pytest.raises(openai.BadRequestError) as e:
        oai.completions.create(model="steer", prompt="Hi", max_tokens=2,
                               extra_body={"steering": {"additions": [{"layer": 1, "coeff": 5, "text": "I talk about weddings"}]}})
    assert '"pad_short_prompt": true' in str(e.value)
    r = oai.completions.create(model="steer", prompt="Hi", max_tokens=2, extra_body={"steering": {
        "additions": [{"layer": 1, "coeff": 5, "text": "I talk about weddings"}], "pad_short_prompt": True}})
    assert r.usage.completion_tokens == 2 and not r.model_extra.get("warnings")
    r = oai.completions.create(model="steer", prompt="I hate you because", max_tokens=2, extra_body={"steering": {
        "additions": [{"layer": 2, "coeff": 0, "text": "Love"}]}})
    assert "resid_pre.2: the steering tensor is all zeros" in r.model_extra["warnings"][0]
