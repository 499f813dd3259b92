"""Structured output, tool calls, logprobs, embeddings and the OpenAPI document, over the ASGI
app on the tiny random model. A random model writes random text, so an answer that parses and
validates can only come from constrained decoding."""

from __future__ import annotations

import base64
import json

import jsonschema
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from slmops.engines.base import GenerationParams, GenerationRequest
from slmops.engines.grammar import GrammarError, json_schema_grammar
from slmops.serve import ServeConfig, create_app

HELLO = [{"role": "user", "content": "Hello"}]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"enum": ["Paris", "Rome"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
    },
    "required": ["name", "age", "city", "tags"],
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def schema_format(schema: dict, strict: bool = True) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": strict}}


def chat(**kw) -> dict:
    return {"model": "tiny", "messages": HELLO, "max_tokens": 96, "temperature": 0, **kw}


def sse(text: str) -> list[dict]:
    lines = [ln.removeprefix("data: ") for ln in text.splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(ln) for ln in lines[:-1]]


@pytest.fixture(scope="module")
def client(serve_store):
    with TestClient(create_app(serve_store, ServeConfig(threads=1, max_tokens_cap=256, max_body_bytes=1 << 17))) as c:
        yield c


def error(r, param: str | None) -> dict:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param, err
    return err


# -- response_format ----------------------------------------------------------------------------
def test_json_schema_answers_parse_and_validate_in_one_batch(client, openai_schema):
    body = client.post(
        "/v1/chat/completions", json=chat(n=6, temperature=1.0, seed=3, response_format=schema_format(PERSON))
    ).json()
    openai_schema(body, "CreateChatCompletionResponse")
    for choice in body["choices"]:
        assert choice["finish_reason"] == "stop", choice
        jsonschema.validate(json.loads(choice["message"]["content"]), PERSON)
    assert len({c["message"]["content"] for c in body["choices"]}) > 1  # sampled, each row its own matcher


def test_json_object_and_unconstrained_rows_share_a_batch(tiny_engine):
    grammar = json_schema_grammar({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]})
    requests = [
        GenerationRequest.chat("Hi", GenerationParams(max_tokens=24, temperature=1.0, seed=i, grammar=g))
        for i, g in enumerate([grammar, None, grammar, None])
    ]
    results = tiny_engine.generate(requests)
    assert json.loads(results[0].text) in ({"ok": True}, {"ok": False}) and results[0].finish_reason == "stop"
    assert json.loads(results[2].text) in ({"ok": True}, {"ok": False})
    alone = tiny_engine.generate([requests[1]])[0]
    assert alone.text == results[1].text  # a row without a grammar is untouched by its neighbours'


def test_json_object_mode_and_streaming(client):
    params = chat(temperature=0.9, seed=5, max_tokens=160, response_format=schema_format(PERSON))
    whole = client.post("/v1/chat/completions", json=params).json()["choices"][0]
    events = sse(client.post("/v1/chat/completions", json={**params, "stream": True}).text)
    text = "".join(c["delta"].get("content") or "" for ev in events for c in ev["choices"])
    assert text == whole["message"]["content"] and json.loads(text)["city"] in ("Paris", "Rome")
    obj = client.post("/v1/chat/completions", json=chat(response_format={"type": "json_object"}, max_tokens=8)).json()
    assert obj["choices"][0]["message"]["content"].startswith("{")


def test_a_grammar_that_cannot_finish_ends_with_length(client):
    body = client.post("/v1/chat/completions", json=chat(max_tokens=3, response_format=schema_format(PERSON))).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length" and choice["message"]["content"].startswith("{")


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "object", "if": {"properties": {}}}, ["if"]),
        ({"type": "string", "format": "no-such-format"}, ["no-such-format"]),
        ({"type": "nonsense"}, ["not a valid JSON Schema"]),
        ({"type": "object", "properties": {f"k{i}": {"type": "string", "description": "x" * 100} for i in range(900)}},
         ["bytes", "limit"]),
        ({"type": "array", "items": json.loads('{"type": "array", "items": ' * 30 + "{}" + "}" * 30)}, ["deep"]),
    ],
)
def test_schemas_the_server_cannot_enforce_are_400s_naming_the_problem(client, schema, words):
    err = error(client.post("/v1/chat/completions", json=chat(response_format=schema_format(schema))),
                "response_format.json_schema.schema")  # fmt: skip
    assert all(w in err["message"] for w in words), err
    if words == ["if"]:
        assert err["code"] == "unsupported_schema_keyword"
        lenient = client.post("/v1/chat/completions", json=chat(response_format=schema_format(schema, strict=False)))
        assert lenient.status_code == 200  # strict: false ignores what cannot be enforced


def test_grammar_errors_in_the_python_api():
    with pytest.raises(GrammarError, match="if"):
        json_schema_grammar({"type": "object", "if": {}})
    assert json_schema_grammar({"type": "object", "if": {}}, strict=False)


# -- tools ----------------------------------------------------------------------------------------
def test_required_and_named_tool_calls_validate_against_their_parameters(client, openai_schema):
    for choice, names in (("required", {"get_weather", "get_time"}), ({"type": "function", "function": {"name": "get_time"}}, {"get_time"})):  # noqa: E501
        body = client.post(
            "/v1/chat/completions",
            json=chat(tools=[WEATHER, TIME], tool_choice=choice, max_tokens=200, parallel_tool_calls=False),
        ).json()
        openai_schema(body, "CreateChatCompletionResponse")
        c = body["choices"][0]
        assert c["finish_reason"] == "tool_calls", c
        (call,) = c["message"]["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("call-") and call["function"]["name"] in names
        args = json.loads(call["function"]["arguments"])
        spec = {"get_weather": WEATHER, "get_time": TIME}[call["function"]["name"]]
        jsonschema.validate(args, spec["function"]["parameters"])


def test_tool_call_round_trip_and_streamed_deltas(client, openai_schema):
    params = chat(tools=[WEATHER], tool_choice="required", max_tokens=200, temperature=0.7, seed=2)
    whole = client.post("/v1/chat/completions", json=params).json()["choices"][0]["message"]["tool_calls"]
    events = sse(client.post("/v1/chat/completions", json={**params, "stream": True}).text)
    calls: dict[int, dict] = {}
    for ev in events:
        openai_schema(ev, "CreateChatCompletionStreamResponse")
        for d in ev["choices"][0]["delta"].get("tool_calls") or []:
            entry = calls.setdefault(d["index"], {"name": "", "arguments": ""})
            entry["id"] = d.get("id", entry.get("id"))
            entry["name"] += d.get("function", {}).get("name") or ""
            entry["arguments"] += d.get("function", {}).get("arguments") or ""
    assert [ev["choices"][0]["finish_reason"] for ev in events if ev["choices"][0]["finish_reason"]] == ["tool_calls"]
    assert [(c["name"], c["arguments"]) for c in calls.values()] == [
        (w["function"]["name"], w["function"]["arguments"]) for w in whole
    ]
    history = [
        *HELLO,
        {"role": "assistant", "content": None, "tool_calls": whole},
        {"role": "tool", "tool_call_id": whole[0]["id"], "content": '{"temperature_c": 21}'},
    ]
    final = client.post(
        "/v1/chat/completions", json=chat(messages=history, tools=[WEATHER], tool_choice="none", max_tokens=8)
    ).json()
    assert "choices" in final, final
    assert final["choices"][0]["message"]["content"] is not None


def test_the_default_tool_format_reaches_the_prompt(tiny_engine):
    from slmops.engines.base import Message

    msgs = (
        Message("user", "Weather?"),
        Message("assistant", "", tool_calls=(("c1", "get_weather", '{"city": "Rome"}'),)),
        Message("tool", "sunny", tool_call_id="c1"),
    )
    ids = tiny_engine.prompt_ids(GenerationRequest(messages=msgs, tools=json.dumps([WEATHER["function"]])))
    text = tiny_engine.tokenizer.decode(ids)
    assert "get_weather" in text and '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}' in text
    assert '<tool_response>{"name": "get_weather", "content": "sunny"}</tool_response>' in text


def test_bad_tool_requests_are_400s(client):
    error(client.post("/v1/chat/completions", json=chat(tools=[WEATHER],
          tool_choice={"type": "function", "function": {"name": "nope"}})), "tool_choice")  # fmt: skip
    error(client.post("/v1/chat/completions", json=chat(tool_choice="required")), "tool_choice")
    orphan = [*HELLO, {"role": "tool", "tool_call_id": "call-x", "content": "1"}]
    error(client.post("/v1/chat/completions", json=chat(messages=orphan)), "messages[1].tool_call_id")
    bad_args = [*HELLO, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{oops"}}]}]  # fmt: skip
    r = client.post("/v1/chat/completions", json=chat(messages=bad_args))
    error(r, "messages[1].tool_calls[0].function.arguments")
    bad_params = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "if": {}}}}
    err = error(client.post("/v1/chat/completions", json=chat(tools=[bad_params], tool_choice="required")),
                "tools[0].function.parameters")  # fmt: skip
    assert "if" in err["message"]


# -- logprobs -------------------------------------------------------------------------------------
def _loglik(engine, prompt: list[int], completion: list[int]) -> float:
    ids = torch.tensor([prompt + completion])
    with torch.inference_mode():
        lp = torch.log_softmax(engine.model(input_ids=ids).logits[0].float(), -1)
    return sum(float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(completion))


def test_logprobs_sum_to_the_models_own_log_likelihood(tiny_engine):
    request = GenerationRequest.chat("Hello", GenerationParams(max_tokens=12, temperature=0.8, seed=4, logprobs=3))
    result = tiny_engine.generate([request])[0]
    lps = result.logprobs
    assert len(lps) == result.completion_tokens  # no end-of-turn token in 12 random tokens
    ids = [lp.token_id for lp in lps]
    expected = _loglik(tiny_engine, tiny_engine.prompt_ids(request), ids)
    assert sum(lp.logprob for lp in lps) == pytest.approx(expected, abs=1e-3)
    assert all(len(lp.top) == 3 and lp.top[0][1] >= lp.top[1][1] >= lp.top[2][1] for lp in lps)


def test_chat_logprobs_and_top_logprobs_over_http(client, tiny_engine, openai_schema):
    body = client.post("/v1/chat/completions", json=chat(max_tokens=10, logprobs=True, top_logprobs=2)).json()
    openai_schema(body, "CreateChatCompletionResponse")
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 10
    for tok in content:  # greedy: the chosen token is the most likely one
        assert len(tok["top_logprobs"]) == 2 and tok["logprob"] == pytest.approx(tok["top_logprobs"][0]["logprob"])
        assert bytes(tok["bytes"]).decode("utf-8", "replace") == tok["token"]
    request = GenerationRequest.chat("Hello", GenerationParams(max_tokens=10, logprobs=0))
    engine_sum = sum(lp.logprob for lp in tiny_engine.generate([request])[0].logprobs)
    assert sum(t["logprob"] for t in content) == pytest.approx(engine_sum, abs=1e-4)
    events = sse(client.post("/v1/chat/completions", json=chat(max_tokens=10, logprobs=True, stream=True)).text)
    streamed = [t["logprob"] for ev in events for c in ev["choices"] for t in (c["logprobs"] or {}).get("content", [])]
    assert streamed == pytest.approx([t["logprob"] for t in content])


def test_completion_echo_logprobs_score_the_prompt_like_lm_eval(client, tiny_engine):
    ids = tiny_engine.tokenizer("The capital of France is Paris")["input_ids"]
    body = client.post("/v1/completions", json={"model": "tiny", "prompt": ids, "max_tokens": 1, "temperature": 0,
                                                "logprobs": 1, "echo": True}).json()  # fmt: skip
    lp = body["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == len(ids) + 1 and lp["token_logprobs"][0] is None
    ctx = 3  # what lm-evaluation-harness sums: the continuation's tokens, without the generated one
    expected = _loglik(tiny_engine, ids[:ctx], ids[ctx:])
    assert sum(lp["token_logprobs"][ctx:-1]) == pytest.approx(expected, abs=1e-3)
    assert all(max(top.values()) >= v for top, v in zip(lp["top_logprobs"][1:], lp["token_logprobs"][1:], strict=True))
    assert body["choices"][0]["text"].startswith("The capital of France is Paris")
    plain = client.post("/v1/completions", json={"model": "tiny", "prompt": "Hello", "max_tokens": 4, "temperature": 0,
                                                 "logprobs": 2}).json()  # fmt: skip
    assert len(plain["choices"][0]["logprobs"]["tokens"]) == 4


def test_logprob_ranges_are_400s(client):
    error(client.post("/v1/chat/completions", json=chat(logprobs=True, top_logprobs=21)), "top_logprobs")
    error(client.post("/v1/chat/completions", json=chat(top_logprobs=2)), "top_logprobs")
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "logprobs": 6})
    error(r, "logprobs")


# -- embeddings -----------------------------------------------------------------------------------
def test_embeddings_shape_determinism_batch_and_base64(client, tiny_engine):
    texts = ["Hello world", "The capital of France is Paris.", "two plus two"]
    one = [client.post("/v1/embeddings", json={"model": "tiny", "input": t}).json() for t in texts]
    batch = client.post("/v1/embeddings", json={"model": "tiny", "input": texts}).json()
    hidden = tiny_engine.model.config.hidden_size
    vectors = np.array([d["embedding"] for d in batch["data"]])
    assert vectors.shape == (3, hidden) and [d["index"] for d in batch["data"]] == [0, 1, 2]
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors, [o["data"][0]["embedding"] for o in one], atol=1e-5)
    again = client.post("/v1/embeddings", json={"model": "tiny", "input": texts}).json()
    assert [d["embedding"] for d in again["data"]] == [d["embedding"] for d in batch["data"]]
    b64 = client.post("/v1/embeddings", json={"model": "tiny", "input": texts, "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, vectors[0], atol=1e-6)
    assert batch["usage"]["prompt_tokens"] == sum(len(tiny_engine.tokenizer(t)["input_ids"]) for t in texts)
    short = client.post("/v1/embeddings", json={"model": "tiny", "input": "Hello", "dimensions": 8}).json()
    assert len(short["data"][0]["embedding"]) == 8


def test_bad_embedding_inputs_are_400s(client):
    for bad in ("", [], ["ok", ""], [[]]):
        error(client.post("/v1/embeddings", json={"model": "tiny", "input": bad}), "input")
    error(client.post("/v1/embeddings", json={"model": "tiny", "input": "word " * 600}), "input")
    error(client.post("/v1/embeddings", json={"model": "tiny", "input": "x", "dimensions": 10_000}), "dimensions")
    error(client.post("/v1/embeddings", json={"model": "tiny", "input": "x", "encoding_format": "hex"}),
          "encoding_format")  # fmt: skip


# -- OpenAPI --------------------------------------------------------------------------------------
def test_openapi_describes_what_the_server_accepts(client):
    doc = client.get("/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"} <= set(doc["paths"])
    schemas = doc["components"]["schemas"]
    request = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]

    def check(payload: dict) -> None:
        jsonschema.validate(payload, {"$ref": request["$ref"], "components": {"schemas": schemas}})

    good = chat(response_format=schema_format(PERSON), tools=[WEATHER], tool_choice="auto", logprobs=True)
    check(good)
    assert client.post("/v1/chat/completions", json={**good, "max_tokens": 2}).status_code == 200
    with pytest.raises(jsonschema.ValidationError):
        check({**good, "temprature": 1})
    assert client.post("/v1/chat/completions", json={**good, "temprature": 1}).status_code == 400
    page = client.get("/docs")
    assert page.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in page.text and "http" not in page.text
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200


def test_no_docs_turns_both_off(serve_store):
    with TestClient(create_app(serve_store, ServeConfig(threads=1, docs=False))) as c:
        assert c.get("/openapi.json").status_code == 404 and c.get("/docs").status_code == 404
