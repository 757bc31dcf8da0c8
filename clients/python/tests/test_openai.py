"""The OpenAI-compatible HTTP/JSON endpoint (`POST /v1/completions` with a `steering` field),
used as OpenAI SDK and curl users would, against a real `steer serve`."""
import json
import struct
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
        oai.completions.create(model="steer", prompt="", max_tokens=4, extra_body={"steering": {"use_bos": False}})
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


# --- OpenAI's completions API to the letter (what lm-evaluation-harness and the SDK rely on) ---

def _tokenize(server, text):
    return json.loads(_post(server, "/tokenize", {"prompt": text, "add_special_tokens": False}))["tokens"]


def test_echo_with_logprobs_lists_the_prompt_then_the_completion(server, oai):
    prompt = "The weather today is cold and"
    ids = _tokenize(server, prompt)
    r = oai.completions.create(model="steer", prompt=[ids], max_tokens=3, logprobs=5, echo=True, temperature=0, seed=1234)
    (c,) = r.choices
    lp = c.logprobs
    # The echo is exactly the tokens sent (no BOS added), then the three generated ones.
    assert len(lp.tokens) == len(ids) + 3 and "".join(lp.tokens[:len(ids)]) == prompt
    assert c.text.startswith(prompt) and c.text == "".join(lp.tokens)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(isinstance(x, float) and x <= 0 for x in lp.token_logprobs[1:])
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    for tok, x, top in zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:]):
        # The five most likely and the chosen token, which has its own value there.
        assert 5 <= len(top) <= 6 and top[tok] == x
    # Greedy: every generated token is the most likely one.
    for tok, x, top in zip(lp.tokens[len(ids):], lp.token_logprobs[len(ids):], lp.top_logprobs[len(ids):]):
        assert x == max(top.values())
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 3
    # The same prompt's log-probabilities through the Score RPC.
    client = SteerClient(server)
    want = json.loads(_post(server, "/v1/rpc/steer.v1.GenerationService/Score",
                            {"texts": [{"tokenIds": ids, "scoreFrom": 1}]}).splitlines()[0])["score"]["logprobs"]
    client.close()
    f32 = lambda xs: [struct.unpack("f", struct.pack("f", x))[0] for x in xs]  # noqa: E731
    assert f32(lp.token_logprobs[1:len(ids)]) == f32(want), "the same f32 values"



def test_max_tokens_0_with_echo_returns_the_prompts_log_probabilities_only(oai):
    r = oai.completions.create(model="steer", prompt="I hate you because", max_tokens=0, echo=True, logprobs=0)
    (c,) = r.choices
    assert c.text == "I hate you because" and r.usage.completion_tokens == 0
    # A text prompt gets BOS: every echoed token, the first included, has a context.
    assert c.logprobs.tokens == ["I", " hate", " you", " because"]
    assert all(x is not None for x in c.logprobs.token_logprobs)
    assert all(list(t) == [tok] for t, tok in zip(c.logprobs.top_logprobs, c.logprobs.tokens))


def test_stop_cuts_the_text_and_finishes_with_stop(oai):
    args = dict(model="steer", prompt="I hate you because", max_tokens=12, temperature=0)
    full = oai.completions.create(**args).choices[0].text
    words = full.split(" ")
    stop = " " + words[3] if len(words) > 3 and words[3] else full[5:8]
    cut = full[:full.index(stop)]
    r = oai.completions.create(stop=[stop, "never appears"], **args)
    assert r.choices[0].text == cut and r.choices[0].finish_reason == "stop"
    assert stop not in r.choices[0].text
    streamed = list(oai.completions.create(stop=stop, stream=True, **args))
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices) == cut
    assert [ch.choices[0].finish_reason for ch in streamed if ch.choices][-1] == "stop"


def test_every_prompt_form_gives_one_choice_per_prompt_in_order(server, oai):
    a, b = "The cat sat on", "A dog"
    by_text = oai.completions.create(model="steer", prompt=[a, b], max_tokens=4, temperature=0, n=2)
    assert [c.index for c in by_text.choices] == [0, 1, 2, 3]
    one = [oai.completions.create(model="steer", prompt=p, max_tokens=4, temperature=0).choices[0].text for p in (a, b)]
    assert [c.text for c in by_text.choices] == [one[0], one[0], one[1], one[1]]
    ids = [[50256] + _tokenize(server, a), [50256] + _tokenize(server, b)]
    by_ids = oai.completions.create(model="steer", prompt=ids, max_tokens=4, temperature=0)
    assert [c.text for c in by_ids.choices] == one, "token ids with BOS sent = the text prompts (BOS added)"
    single = oai.completions.create(model="steer", prompt=ids[1], max_tokens=4, temperature=0)
    assert single.choices[0].text == one[1]
    assert by_text.usage.prompt_tokens == len(ids[0]) + len(ids[1])


def test_models_list_the_served_model_and_profiles_and_select_steering(server, oai):
    names = [m.id for m in oai.models.list()]
    assert names[0] == "steer" and "love" in names
    base = oai.completions.create(model="steer", prompt="I hate you because", max_tokens=0, echo=True, logprobs=0)
    love = oai.completions.create(model="love", prompt="I hate you because", max_tokens=0, echo=True, logprobs=0)
    assert love.model == "love" and love.choices[0].model_extra["steered"] is True
    assert base.choices[0].model_extra["steered"] is False
    assert love.choices[0].logprobs.token_logprobs != base.choices[0].logprobs.token_logprobs
    # The profile is the steering object it names.
    inline = oai.completions.create(model="steer", prompt="I hate you because", max_tokens=0, echo=True, logprobs=0,
                                    extra_body={"steering": LOVE_HATE})
    assert inline.choices[0].logprobs.token_logprobs == love.choices[0].logprobs.token_logprobs
    with pytest.raises(openai.NotFoundError) as e:
        oai.completions.create(model="gpt-4", prompt="Hi", max_tokens=1)
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as e:
        oai.completions.create(model="love", prompt="Hi", max_tokens=1, extra_body={"steering": LOVE_HATE})
    assert e.value.body["param"] == "steering"


def test_parameters_out_of_range_and_fields_not_implemented_are_named(oai):
    for kwargs, param in [
        (dict(top_p=7), "top_p"), (dict(temperature=-1), "temperature"), (dict(logprobs=21), "logprobs"),
        (dict(suffix="x"), "suffix"), (dict(best_of=3), "best_of"), (dict(logit_bias={"50256": -100}), "logit_bias"),
        (dict(presence_penalty=2.5), "presence_penalty"), (dict(extra_body={"colour": "red"}), "colour"),
        (dict(stop=["a", "b", "c", "d", "e"]), "stop"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            oai.completions.create(model="steer", prompt="Hi", max_tokens=2, **kwargs)
        assert e.value.body["param"] == param, (kwargs, e.value.body)


def test_tokenizer_routes_in_vllms_shapes(server):
    info = json.loads(subprocess.run(["curl", "-sS", f"http://{server}/tokenizer_info"], check=True, capture_output=True,
                                     text=True, timeout=60).stdout)
    assert info["eos_token"] == info["bos_token"] == "<|endoftext|>"
    assert _tokenize(server, "<|endoftext|>") == [50256]
    ids = _tokenize(server, "Hello world, café")
    assert json.loads(_post(server, "/detokenize", {"tokens": ids}))["prompt"] == "Hello world, café"
    bad = json.loads(_post(server, "/detokenize", {"tokens": [1, 99999]}))
    assert bad["error"]["param"] == "tokens[1]"


def test_streaming_with_echo_logprobs_and_usage(oai):
    args = dict(model="steer", prompt="I hate you because", max_tokens=4, temperature=0, logprobs=2, echo=True)
    whole = oai.completions.create(**args).choices[0]
    chunks = list(oai.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.text
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert tokens == whole.logprobs.tokens
    assert chunks[-1].usage.completion_tokens == 4 and not chunks[-1].choices


def test_token_id_prompts_and_stop_strings_over_the_rpcs_name_bad_fields(server):
    score = "/v1/rpc/steer.v1.GenerationService/Score"
    for text, field in [({"tokenIds": [464, 99999]}, "texts[0].token_ids[1]"),
                        ({"tokenIds": [464, 3290], "scoreFrom": 3}, "texts[0].score_from"),
                        ({"tokenIds": [464, 3290], "prompt": "x"}, "texts[0].token_ids"),
                        ({"prompt": "x", "continuation": " y", "scoreFrom": 1}, "texts[0].score_from")]:
        bad = json.loads(_post(server, score, {"texts": [text]}))
        assert bad["error"]["param"] == field, (text, bad)
    top = json.loads(_post(server, score, {"texts": [{"tokenIds": [464, 3290, 318]}], "topLogprobs": 3}).splitlines()[0])
    assert [len(t["top"]) for t in top["score"]["topLogprobs"]] == [3, 3]
    gen = "/v1/rpc/steer.v1.GenerationService/GenerateFromTensors"
    for setup, field in [({"promptTokenIds": [464, 3290], "useBos": True}, "setup.use_bos"),
                         ({"promptTokenIds": [464], "prompt": "x"}, "setup.prompt_token_ids"),
                         ({"promptTokenIds": [70000]}, "setup.prompt_token_ids[0]"),
                         ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "setup.stop"),
                         ({"prompt": "x", "stop": [""]}, "setup.stop[0]")]:
        bad = json.loads(_post(server, gen, {"setup": {"nComparisons": 1, "maxNewTokens": 2, **setup}}))
        assert bad["error"]["param"] == field, (setup, bad)


def test_the_python_client_stops_at_a_stop_string(server):
    client = SteerClient(server)
    kw = dict(n_tokens=8, n_comparisons=1, seed=0, temperature=0.0)
    _, full = client.run("I hate you because", LOVE_HATE_ADDS, **kw)
    text = full[0].text
    stop = " " + text.split(" ")[2]
    _, cut = client.run("I hate you because", LOVE_HATE_ADDS, stop=[stop], **kw)
    client.close()
    assert cut[0].text == text[:text.index(stop)] and cut[0].finish_reason == "stop"


LOVE_HATE_ADDS = [(a["layer"], a["coeff"], a["text"]) for a in LOVE_HATE["additions"]]
