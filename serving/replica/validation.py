"""Request validation for the OpenAI-compatible endpoints.

Owns turning a JSON body into a typed request, field by field: every known OpenAI field
is checked for type and range (fields we cannot honour are accepted only at their
neutral value, so a client that sends `presence_penalty: 0` works and one that sends
`0.5` is told it is unsupported), unknown fields are refused, and every refusal is a
`BadField` that names the field and says what to send instead. Nothing here raises
anything else on bad input, so bad input can never become a 500.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from serving.engine.sampling import MAX_LOGPROBS, SamplingParams

MAX_N = 16
MAX_PROMPTS = 64
MAX_STOP = 4
#: The chat template variables a client may set (all true/false).
TEMPLATE_KWARGS = {"add_generation_prompt", "enable_thinking", "continue_final_message"}
ROLES = ("system", "developer", "user", "assistant", "tool")


class BadField(ValueError):
    """A field with a bad value: a 400 whose `param` is the field."""

    status = 400

    def __init__(self, field_name: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field_name


class TooLarge(BadField):
    """The request body is over the replica's limit: a 413."""

    status = 413


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(body: dict, name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return default
    if not _is_int(v):
        raise BadField(name, f"'{name}' must be an integer, got {type(v).__name__}")
    if v < lo or (hi is not None and v > hi):
        upper = f" and {hi}" if hi is not None else ""
        rule = f"between {lo}{upper}" if hi is not None else f">= {lo}"
        raise BadField(name, f"'{name}' must be {rule}, got {v}")
    return v


def _float(body: dict, name: str, default: float, lo: float, hi: float) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise BadField(name, f"'{name}' must be a number, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise BadField(name, f"'{name}' must be between {lo} and {hi}, got {v}")
    return float(v)


def _bool(body: dict, name: str, default: bool) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise BadField(name, f"'{name}' must be true or false, got {type(v).__name__}")
    return v


def _neutral(body: dict, name: str, neutral: tuple[Any, ...], what: str) -> None:
    v = body.get(name)
    if v is None or v in neutral:
        return
    raise BadField(name, f"'{name}' is not supported by this server ({what})")


def _stop(body: dict) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise BadField("stop", "'stop' must be a string or a list of strings")
    if len(v) > MAX_STOP:
        raise BadField("stop", f"'stop' takes at most {MAX_STOP} strings, got {len(v)}")
    if any(s == "" for s in v):
        raise BadField("stop", "'stop' strings must not be empty")
    return tuple(v)


def _stop_token_ids(body: dict) -> tuple[int, ...]:
    v = body.get("stop_token_ids")
    if v is None:
        return ()
    if not isinstance(v, list) or not all(_is_int(t) and t >= 0 for t in v):
        raise BadField("stop_token_ids", "'stop_token_ids' must be a list of token ids (>= 0)")
    return tuple(v)


def _stream_options(body: dict, stream: bool) -> bool:
    v = body.get("stream_options")
    if v is None:
        return False
    if not stream:
        raise BadField("stream_options", "'stream_options' is only allowed with 'stream': true")
    if not isinstance(v, dict) or set(v) - {"include_usage", "continuous_usage_stats"}:
        raise BadField("stream_options", "'stream_options' takes only 'include_usage'")
    return _bool(v, "include_usage", False)


COMMON = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "user",
    "top_k",
    "ignore_eos",
    "stop_token_ids",
    "include_stop_str_in_output",
    "return_token_ids",
}
COMPLETION_FIELDS = COMMON | {"prompt", "echo", "logprobs", "suffix", "best_of"}
CHAT_FIELDS = COMMON | {
    "messages",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "store",
    "metadata",
    "service_tier",
    "modalities",
    "reasoning_effort",
    "chat_template_kwargs",
    "add_generation_prompt",
}


@dataclass(slots=True)
class ParsedRequest:
    """A validated request: prompts (text or token ids) and how to sample them."""

    model: str
    prompts: list[str | list[int]]
    params: SamplingParams
    n: int
    stream: bool
    include_usage: bool
    max_tokens_given: bool
    echo: bool = False
    return_token_ids: bool = False
    chat_logprobs: bool = False
    messages: list[dict] = field(default_factory=list)
    chat_template_kwargs: dict = field(default_factory=dict)


def _common(body: Any, allowed: set[str]) -> tuple[dict, str, SamplingParams, int, bool, bool]:
    if not isinstance(body, dict):
        raise BadField(None, "the request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadField(unknown[0], f"Unrecognized request argument supplied: {unknown[0]}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadField("model", "'model' is required and must be a string (see GET /v1/models)")
    n = _int(body, "n", 1, 1, MAX_N)
    stream = _bool(body, "stream", False)
    include_usage = _stream_options(body, stream)
    _neutral(body, "presence_penalty", (0, 0.0), "only 0 is accepted")
    _neutral(body, "frequency_penalty", (0, 0.0), "only 0 is accepted")
    v = body.get("logit_bias")
    if v is not None and (not isinstance(v, dict) or v):
        raise BadField("logit_bias", "'logit_bias' is not supported by this server (send {})")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise BadField("user", "'user' must be a string")
    top_k = _int(body, "top_k", 0, -1)
    seed = _int(body, "seed", None, 0, 2**63 - 1)
    params = SamplingParams(
        max_tokens=16,
        temperature=_float(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_float(body, "top_p", 1.0, 0.0, 1.0),
        top_k=top_k or 0,
        seed=seed,
        stop=_stop(body),
        stop_token_ids=_stop_token_ids(body),
        ignore_eos=_bool(body, "ignore_eos", False),
        include_stop_str_in_output=_bool(body, "include_stop_str_in_output", False),
    )
    if params.top_p == 0.0:
        raise BadField("top_p", "'top_p' must be greater than 0")
    return body, model, params, n or 1, stream, include_usage


def parse_completion(body: Any) -> ParsedRequest:
    """Validate a POST /v1/completions body."""
    body, model, params, n, stream, include_usage = _common(body, COMPLETION_FIELDS)
    prompt = body.get("prompt")
    prompts: list[str | list[int]]
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    elif (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(p, list) and p and all(_is_int(t) for t in p) for p in prompt)
    ):
        prompts = list(prompt)
    else:
        raise BadField(
            "prompt",
            "'prompt' is required: a string, a list of strings, a list of token ids, "
            "or a list of lists of token ids (none of them empty)",
        )
    if len(prompts) > MAX_PROMPTS:
        raise BadField("prompt", f"at most {MAX_PROMPTS} prompts per request")
    if any(isinstance(p, str) and not p for p in prompts):
        raise BadField("prompt", "'prompt' strings must not be empty")
    max_tokens = _int(body, "max_tokens", None, 1)
    params.max_tokens = max_tokens or 16
    params.logprobs = _int(body, "logprobs", None, 0, 5)
    echo = _bool(body, "echo", False)
    if echo and params.logprobs is not None:
        raise BadField("echo", "'echo' together with 'logprobs' is not supported")
    if body.get("suffix") is not None:
        raise BadField("suffix", "'suffix' is not supported by this server")
    best_of = _int(body, "best_of", None, 1)
    if best_of is not None and best_of != n:
        raise BadField("best_of", "'best_of' is not supported (leave it out or set it to n)")
    return ParsedRequest(
        model=model,
        prompts=prompts,
        params=params,
        n=n,
        stream=stream,
        include_usage=include_usage,
        max_tokens_given=max_tokens is not None,
        echo=echo,
        return_token_ids=_bool(body, "return_token_ids", False),
    )


def _content(msg: dict, i: int) -> str:
    content = msg.get("content")
    where = f"messages[{i}].content"
    if content is None:
        if msg.get("role") == "assistant":
            return ""
        raise BadField(where, f"'{where}' is required")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise BadField(
                    f"{where}[{j}]", f"'{where}[{j}]' must be a text part; only text is supported"
                )
            if not isinstance(part.get("text"), str):
                raise BadField(f"{where}[{j}].text", f"'{where}[{j}].text' must be a string")
            parts.append(part["text"])
        return "".join(parts)
    raise BadField(where, f"'{where}' must be a string or a list of text parts")


def parse_chat(body: Any) -> ParsedRequest:
    """Validate a POST /v1/chat/completions body."""
    body, model, params, n, stream, include_usage = _common(body, CHAT_FIELDS)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadField("messages", "'messages' is required: a non-empty list of messages")
    clean = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise BadField(f"messages[{i}]", f"'messages[{i}]' must be an object")
        role = msg.get("role")
        if role not in ROLES:
            raise BadField(f"messages[{i}].role", f"'messages[{i}].role' must be one of {ROLES}")
        item = {"role": role, "content": _content(msg, i)}
        if isinstance(msg.get("name"), str):
            item["name"] = msg["name"]
        clean.append(item)
    max_tokens = _int(body, "max_completion_tokens", None, 1)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", None, 1)
    params.max_tokens = max_tokens or 16
    chat_logprobs = _bool(body, "logprobs", False)
    top = _int(body, "top_logprobs", None, 0, MAX_LOGPROBS)
    if top is not None and not chat_logprobs:
        raise BadField("top_logprobs", "'top_logprobs' needs 'logprobs': true")
    params.logprobs = (top or 0) if chat_logprobs else None
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise BadField("response_format", "only {'type': 'text'} is supported")
    for name in ("tools", "functions"):
        if body.get(name):
            raise BadField(name, f"'{name}' (tool calling) is not supported by this server")
    for name in ("tool_choice", "function_call"):
        _neutral(body, name, ("none", "auto"), "tool calling is not supported")
    _bool(body, "store", False)
    _bool(body, "parallel_tool_calls", True)
    add_generation_prompt = _bool(body, "add_generation_prompt", True)
    if body.get("metadata") is not None and not isinstance(body["metadata"], dict):
        raise BadField("metadata", "'metadata' must be an object")
    if body.get("service_tier") is not None and not isinstance(body["service_tier"], str):
        raise BadField("service_tier", "'service_tier' must be a string")
    _neutral(body, "modalities", (["text"],), "only ['text'] is accepted")
    _neutral(body, "reasoning_effort", (), "this model has no reasoning mode")
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise BadField("chat_template_kwargs", "'chat_template_kwargs' must be an object")
    for key, value in kwargs.items():
        # The model's own template only: a client's template (or any other variable it
        # could loop over) would run on this server.
        if key not in TEMPLATE_KWARGS:
            raise BadField(
                f"chat_template_kwargs.{key}"[:80],
                f"'chat_template_kwargs' takes only {sorted(TEMPLATE_KWARGS)}, not {key!r}"[:200],
            )
        if not isinstance(value, bool):
            raise BadField(
                f"chat_template_kwargs.{key}", f"'chat_template_kwargs.{key}' must be true/false"
            )
    return ParsedRequest(
        model=model,
        prompts=[],
        params=params,
        n=n,
        stream=stream,
        include_usage=include_usage,
        max_tokens_given=max_tokens is not None,
        return_token_ids=_bool(body, "return_token_ids", False),
        chat_logprobs=chat_logprobs,
        messages=clean,
        chat_template_kwargs={**kwargs, "add_generation_prompt": add_generation_prompt},
    )
