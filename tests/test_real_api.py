"""The Done-when of the API issue on the real SmolLM2-135M-Instruct through the official client:
response_format json_schema, tools and logprobs on chat, echo logprobs on completions, and
embeddings that put related texts closer together."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import BaseModel

from slmops.serve import ServeConfig, create_app
from slmops.serve.runner import BackgroundServer

pytestmark = pytest.mark.real
MODEL = "smollm2-135m-instruct"


class Ticket(BaseModel):
    category: str
    urgent: bool


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def client(real_store):
    openai = pytest.importorskip("openai")
    app = create_app(real_store, ServeConfig(models=(MODEL,), threads=2))
    with BackgroundServer(app) as srv:
        yield openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)


def test_parse_a_pydantic_model(client):
    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    ask = [{"role": "user", "content": "Classify this support ticket: I was charged twice."}]
    done = parse(model=MODEL, response_format=Ticket, max_tokens=48, temperature=0, messages=ask)
    assert isinstance(done.choices[0].message.parsed, Ticket)


def test_tool_call_then_final_answer(client):
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(model=MODEL, messages=question, tools=[WEATHER], tool_choice="required",
                                           max_tokens=64, temperature=0)  # fmt: skip
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    result = {"role": "tool", "tool_call_id": call.id, "content": '{"temperature_c": 21, "sky": "sunny"}'}
    history = [*question, first.choices[0].message.model_dump(exclude_none=True), result]
    final = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], max_tokens=40,
                                           temperature=0)  # fmt: skip
    assert final.choices[0].message.content


def test_logprobs_and_echo(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Capital of France?"}],
                                       max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)  # fmt: skip
    content = r.choices[0].logprobs.content
    assert len(content) >= 1 and all(t.logprob <= 0 and len(t.top_logprobs) == 3 for t in content)
    assert content[0].logprob == pytest.approx(content[0].top_logprobs[0].logprob)  # greedy picks the top one
    text = client.completions.create(model=MODEL, prompt="The capital of France is Paris", max_tokens=1,
                                     temperature=0, logprobs=1, echo=True)  # fmt: skip
    lp = text.choices[0].logprobs
    assert lp.token_logprobs[0] is None and all(v <= 0 for v in lp.token_logprobs[1:])


def test_embeddings_put_related_texts_closer(client):
    texts = ["The cat sat on the mat.", "A kitten is sitting on a rug.", "Quarterly revenue grew by 8 percent."]
    data = client.embeddings.create(model=MODEL, input=texts).data
    v = np.array([d.embedding for d in data])
    assert v.shape == (3, 576) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)
    assert v[0] @ v[1] > v[0] @ v[2]
