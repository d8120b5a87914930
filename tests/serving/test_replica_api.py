"""The replica over HTTP: OpenAI formats, greedy equality, streaming, batching, openai client."""

from __future__ import annotations

import asyncio
import json
import random

import httpx
import openai
import pytest

WORDS = "def class import return self value print for while if else with as".split()


@pytest.fixture(scope="module")
def name(replica) -> str:
    return next(e["model"] for e in replica.events if e["event"] == "ready")


@pytest.fixture(scope="module")
def client(replica):
    with httpx.Client(base_url=replica.url, timeout=60) as c:
        yield c


def sse_events(text: str) -> list:
    """Parse an SSE body into JSON objects (and the final '[DONE]')."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_ready_line_health_and_models(replica, client, name):
    ready = next(e for e in replica.events if e["event"] == "ready")
    assert ready["port"] == replica.port and ready["host"] == "127.0.0.1"
    assert client.get("/health").status_code == 200
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == [name]
    assert client.get(f"/v1/models/{name}").json()["id"] == name


def test_greedy_completion_equals_generate(client, name, tokenizer, greedy_reference):
    for prompt, n in [("def value(self):", 24), ("import", 7), ("class A:\n    def", 40)]:
        body = {"model": name, "prompt": prompt, "max_tokens": n, "temperature": 0}
        r = client.post("/v1/completions", json={**body, "return_token_ids": True})
        assert r.status_code == 200, r.text
        data = r.json()
        want = greedy_reference(prompt, n)
        choice = data["choices"][0]
        assert choice["token_ids"] == want
        assert choice["text"] == tokenizer.decode(want, skip_special_tokens=True)
        assert data["object"] == "text_completion" and data["id"].startswith("cmpl-")
        assert data["usage"] == {
            "prompt_tokens": len(tokenizer(prompt).input_ids),
            "completion_tokens": len(want),
            "total_tokens": len(tokenizer(prompt).input_ids) + len(want),
        }


def test_stream_agrees_with_non_stream(client, name):
    body = {"model": name, "prompt": "for x in", "max_tokens": 30, "temperature": 0}
    plain = client.post("/v1/completions", json=body).json()
    r = client.post(
        "/v1/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    usage = events[-2]
    assert usage["choices"] == [] and usage["usage"] == plain["usage"]
    chunks = events[:-2]
    assert all(c["object"] == "text_completion" and c["usage"] is None for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert "".join(c["choices"][0]["text"] for c in chunks) == plain["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert len(chunks) > 5  # really streamed, token by token


def test_chat_stream_and_non_stream(client, name, tokenizer):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "import os"},
    ]
    body = {"model": name, "messages": messages, "max_tokens": 20, "temperature": 0}
    plain = client.post("/v1/chat/completions", json=body).json()
    assert plain["object"] == "chat.completion"
    msg = plain["choices"][0]["message"]
    assert msg["role"] == "assistant"
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert plain["usage"]["prompt_tokens"] == len(
        tokenizer(prompt, add_special_tokens=False).input_ids
    )
    events = sse_events(client.post("/v1/chat/completions", json={**body, "stream": True}).text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == msg["content"]


def test_openai_client(replica, name):
    client = openai.OpenAI(base_url=f"{replica.url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == [name]
    done = client.completions.create(model=name, prompt="while", max_tokens=8, temperature=0)
    assert done.choices[0].finish_reason in ("length", "stop")
    assert done.usage.completion_tokens == 8 or done.choices[0].finish_reason == "stop"
    chat = client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=10, temperature=0
    )
    streamed = client.chat.completions.create(
        model=name,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=10,
        temperature=0,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == chat.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=name, prompt="x", max_tokens=0)
    assert err.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")


async def _complete(client: httpx.AsyncClient, name: str, prompt: str, n: int) -> dict:
    body = {"model": name, "prompt": prompt, "max_tokens": n, "temperature": 0}
    r = await client.post("/v1/completions", json={**body, "return_token_ids": True})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def test_concurrent_requests_equal_each_alone(replica, name, greedy_reference):
    """16 at once (continuous batching, chunked prefill) == each run alone == generate."""
    rng = random.Random(7)
    cases = [
        (" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60))), rng.randint(1, 48))
        for _ in range(16)
    ]

    async def run() -> tuple[list, list]:
        async with httpx.AsyncClient(base_url=replica.url, timeout=60) as c:
            alone = [await _complete(c, name, p, n) for p, n in cases]
            together = await asyncio.gather(*(_complete(c, name, p, n) for p, n in cases))
        return alone, together

    alone, together = asyncio.run(run())
    for (prompt, n), a, t in zip(cases, alone, together, strict=True):
        assert t["token_ids"] == a["token_ids"] == greedy_reference(prompt, n)
        assert t["text"] == a["text"]


def test_multiple_prompts_and_n(client, name):
    body = {"model": name, "prompt": ["def", "class"], "n": 2, "max_tokens": 6, "seed": 3}
    data = client.post("/v1/completions", json={**body, "return_token_ids": True}).json()
    choices = data["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    assert choices[0]["prompt_token_ids"] == choices[1]["prompt_token_ids"]
    assert choices[0]["prompt_token_ids"] != choices[2]["prompt_token_ids"]
    assert data["usage"]["completion_tokens"] == sum(len(c["token_ids"]) for c in choices)


def test_logprobs_and_stop(client, name):
    body = {"model": name, "prompt": "self.", "max_tokens": 6, "temperature": 0, "logprobs": 2}
    lp = client.post("/v1/completions", json=body).json()["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 6
    assert all(len(t) <= 2 for t in lp["top_logprobs"])
    assert all(v <= 0 for v in lp["token_logprobs"])
    chat = {
        "model": name,
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 4,
        "logprobs": True,
        "top_logprobs": 3,
    }
    content = client.post("/v1/chat/completions", json=chat).json()["choices"][0]["logprobs"]
    assert len(content["content"]) == 4
    assert all(len(t["top_logprobs"]) == 3 for t in content["content"])
    full = client.post(
        "/v1/completions", json={"model": name, "prompt": "if", "max_tokens": 30, "temperature": 0}
    ).json()["choices"][0]["text"]
    stop = full[4:7]
    cut = client.post(
        "/v1/completions",
        json={"model": name, "prompt": "if", "max_tokens": 30, "temperature": 0, "stop": [stop]},
    ).json()["choices"][0]
    assert cut["finish_reason"] == "stop" and cut["text"] == full[: full.find(stop)]


BAD = [
    ({"prompt": "x"}, "model"),
    ({"model": "{name}", "prompt": ""}, "prompt"),
    ({"model": "{name}", "prompt": 5}, "prompt"),
    ({"model": "{name}"}, "prompt"),
    ({"model": "{name}", "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"model": "{name}", "prompt": "x", "max_tokens": "5"}, "max_tokens"),
    ({"model": "{name}", "prompt": "x", "max_tokens": 999999}, "max_tokens"),
    ({"model": "{name}", "prompt": "x", "temperature": -1}, "temperature"),
    ({"model": "{name}", "prompt": "x", "temperature": "hot"}, "temperature"),
    ({"model": "{name}", "prompt": "x", "top_p": 0}, "top_p"),
    ({"model": "{name}", "prompt": "x", "top_p": 1.5}, "top_p"),
    ({"model": "{name}", "prompt": "x", "top_k": -5}, "top_k"),
    ({"model": "{name}", "prompt": "x", "n": 0}, "n"),
    ({"model": "{name}", "prompt": "x", "n": 1000}, "n"),
    ({"model": "{name}", "prompt": "x", "stream": "yes"}, "stream"),
    (
        {"model": "{name}", "prompt": "x", "stream_options": {"include_usage": True}},
        "stream_options",
    ),
    ({"model": "{name}", "prompt": "x", "stop": [1]}, "stop"),
    ({"model": "{name}", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": "{name}", "prompt": "x", "seed": -1}, "seed"),
    ({"model": "{name}", "prompt": "x", "logprobs": 9}, "logprobs"),
    ({"model": "{name}", "prompt": "x", "presence_penalty": 0.5}, "presence_penalty"),
    ({"model": "{name}", "prompt": "x", "logit_bias": {"1": 5}}, "logit_bias"),
    ({"model": "{name}", "prompt": "x", "suffix": "y"}, "suffix"),
    ({"model": "{name}", "prompt": "x", "echo": True, "logprobs": 1}, "echo"),
    ({"model": "{name}", "prompt": "x", "bogus": 1}, "bogus"),
    ({"model": "{name}", "prompt": [1, 2, 99999]}, "prompt"),
    ({"model": "{name}", "prompt": "x " * 3000}, "prompt"),
]
BAD_CHAT = [
    ({"model": "{name}"}, "messages"),
    ({"model": "{name}", "messages": []}, "messages"),
    ({"model": "{name}", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"model": "{name}", "messages": [{"role": "user"}]}, "messages[0].content"),
    ({"model": "{name}", "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    (
        {"model": "{name}", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        "messages[0].content[0]",
    ),
    (
        {"model": "{name}", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
        "top_logprobs",
    ),
    ({"model": "{name}", "messages": [{"role": "user", "content": "x"}], "tools": [{}]}, "tools"),
    (
        {
            "model": "{name}",
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_object"},
        },
        "response_format",
    ),
    (
        {
            "model": "{name}",
            "messages": [{"role": "user", "content": "x"}],
            "max_completion_tokens": -3,
        },
        "max_completion_tokens",
    ),
]


def _fill(body: dict, name: str) -> dict:
    return {k: (name if v == "{name}" else v) for k, v in body.items()}


@pytest.mark.parametrize(("body", "field"), BAD)
def test_bad_completion_fields_are_400(client, name, body, field):
    r = client.post("/v1/completions", json=_fill(body, name))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == field
    assert field.split("[")[0] in error["message"] or field == "model"


@pytest.mark.parametrize(("body", "field"), BAD_CHAT)
def test_bad_chat_fields_are_400(client, name, body, field):
    r = client.post("/v1/chat/completions", json=_fill(body, name))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field


def test_malformed_bodies_and_routes(client, name):
    r = client.post("/v1/completions", content=b"{not json")
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = client.post("/v1/completions", content=b"[1, 2]")
    assert r.status_code == 400
    r = client.post("/v1/completions", json={"model": "other", "prompt": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = client.get("/v1/completions")
    assert r.status_code == 405 and "error" in r.json()
    assert client.get("/v1/nothing").status_code == 404


def test_bodies_that_would_exhaust_the_replica_are_refused_and_it_stays_responsive(client, name):
    # Over the body limit (4 MiB): 413 before it is read, whatever the declared length.
    big = b'{"model": "' + name.encode() + b'", "prompt": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    r = client.post("/v1/completions", content=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():
        yield big[: len(big) // 2]
        yield big[len(big) // 2 :]

    r = client.post("/v1/completions", content=chunks())  # chunked: no length declared
    assert r.status_code == 413
    # Nested 100,000 deep: a 400, not a 500.
    r = client.post("/v1/completions", content=b"[" * 100_000 + b"]" * 100_000)
    assert r.status_code == 400 and "nested" in r.json()["error"]["message"]
    # A prompt far longer than the model could take is refused before it is tokenized.
    r = client.post(
        "/v1/completions", json={"model": name, "prompt": "value " * 600_000, "max_tokens": 1}
    )
    assert r.status_code == 400 and "characters" in r.json()["error"]["message"]
    r = client.post(
        "/v1/chat/completions",
        json={"model": name, "messages": [{"role": "user", "content": "x" * 3_000_000}]},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    # A client's own chat template (or any variable but the allowed flags) is refused.
    for kwargs in (
        {"chat_template": "{% for i in range(10**9) %}x{% endfor %}"},
        {"tools": [1]},
        {"enable_thinking": "yes"},
    ):
        r = client.post(
            "/v1/chat/completions",
            json={
                "model": name,
                "messages": [{"role": "user", "content": "hi"}],
                "chat_template_kwargs": kwargs,
            },
        )
        assert r.status_code == 400, (kwargs, r.text)
        assert r.json()["error"]["param"].startswith("chat_template_kwargs")
    ok = client.post(
        "/v1/chat/completions",
        json={
            "model": name,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
            "chat_template_kwargs": {"add_generation_prompt": True},
        },
    )
    assert ok.status_code == 200, ok.text
    assert client.get("/health", timeout=2).status_code == 200


def test_metrics(client, name):
    client.post("/v1/completions", json={"model": name, "prompt": "x", "max_tokens": 3})
    text = client.get("/metrics").text
    for metric in (
        'cp_serving_requests_total{endpoint="completions",status="200"}',
        "cp_serving_request_latency_seconds_bucket",
        "cp_serving_time_to_first_token_seconds_bucket",
        "cp_serving_inter_token_latency_seconds_bucket",
        "cp_serving_generated_tokens_total",
        "cp_serving_prompt_tokens_total",
        "cp_serving_queue_depth",
        "cp_serving_running_sequences",
        "cp_serving_engine_batch_size_bucket",
        "cp_serving_ready 1.0",
    ):
        assert metric in text, metric
    generated = [
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("cp_serving_generated_tokens_total")
    ]
    assert generated and generated[0] >= 3
