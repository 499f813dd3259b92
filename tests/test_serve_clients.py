"""The official ``openai`` client and LangChain's ``ChatOpenAI`` against a real server on the
tiny random model: structured output parsed into pydantic models, tool calls round-tripped,
streamed tool-call deltas reassembled by the client."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from slmops.serve import ServeConfig, create_app
from slmops.serve.runner import BackgroundServer

HELLO = [{"role": "user", "content": "Hello"}]


class City(BaseModel):
    name: Literal["Paris", "Rome", "Oslo"]
    population_millions: int = Field(ge=0, le=40)
    capital: bool


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}


@pytest.fixture(scope="module")
def server(serve_store):
    app = create_app(serve_store, ServeConfig(models=("tiny",), threads=1))
    with BackgroundServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def _parse(client):
    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    return parse


def test_openai_parse_gives_a_pydantic_object(client):
    done = _parse(client)(model="tiny", messages=HELLO, response_format=City, max_tokens=64, temperature=0.8, seed=1)
    city = done.choices[0].message.parsed
    assert isinstance(city, City) and done.choices[0].finish_reason == "stop"


def test_openai_tool_call_round_trip(client):
    first = client.chat.completions.create(
        model="tiny", messages=HELLO, tools=[WEATHER], tool_choice="required", max_tokens=128, temperature=0
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] in ("Paris", "Rome")
    history = [
        *HELLO,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 21})},
    ]
    final = client.chat.completions.create(model="tiny", messages=history, max_tokens=8, temperature=0)
    assert final.choices[0].message.content is not None and final.choices[0].message.tool_calls is None


def test_streamed_tool_call_deltas_reassemble(client):
    kw = {"model": "tiny", "messages": HELLO, "tools": [WEATHER], "max_tokens": 128, "temperature": 0,
          "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}  # fmt: skip
    whole = client.chat.completions.create(**kw).choices[0].message.tool_calls[0]
    with client.chat.completions.stream(**kw) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    streamed = final.choices[0].message.tool_calls[0]
    assert (streamed.function.name, streamed.function.arguments) == (whole.function.name, whole.function.arguments)
    assert final.choices[0].finish_reason == "tool_calls"


def test_langchain_bind_tools_and_with_structured_output(server):
    lc = pytest.importorskip("langchain_openai")
    from langchain_core.messages import HumanMessage, ToolMessage

    llm = lc.ChatOpenAI(base_url=server.url + "/v1", api_key="unused", model="tiny", max_tokens=128,
                        temperature=0, max_retries=0)  # fmt: skip
    city = llm.with_structured_output(City, method="json_schema").invoke("Name a city.")
    assert isinstance(city, City)
    bound = llm.bind_tools([WEATHER], tool_choice="get_weather")
    ai = bound.invoke([HumanMessage("Weather in Paris?")])
    (call,) = ai.tool_calls
    assert call["name"] == "get_weather" and call["args"]["city"] in ("Paris", "Rome")
    answer = llm.invoke([HumanMessage("Weather in Paris?"), ai, ToolMessage('{"c": 21}', tool_call_id=call["id"])])
    assert isinstance(answer.content, str)
