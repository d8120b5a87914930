"""OpenAI wire formats: response bodies, server-sent-event chunks and error bodies.

Owns the exact JSON shapes of `text_completion`, `chat.completion` and
`chat.completion.chunk` objects, the legacy completions `logprobs` block and the chat
`logprobs.content` list, usage objects, and `{"error": {...}}` bodies. Hot-path chunks
(one per token per stream) are assembled from a precomputed prefix and `json.dumps` of
the text alone.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from serving.engine.sampling import TokenLogprob
from serving.replica.errors import ERROR_TYPES, error_body, error_response, sse_error

__all__ = ["ERROR_TYPES", "error_body", "error_response", "sse_error"]

DONE = b"data: [DONE]\n\n"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class TokenText:
    """Token id -> the text OpenAI shows for it in logprobs (cached per replica)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._tokenizer.decode([token_id])
            self._cache[token_id] = text
        return text


def completion_logprobs(
    lps: list[TokenLogprob], text_of: TokenText, offset: int = 0
) -> dict[str, Any]:
    tokens, values, tops, offsets = [], [], [], []
    pos = offset
    for lp in lps:
        tok = text_of(lp.token_id)
        tokens.append(tok)
        values.append(lp.logprob)
        tops.append({text_of(t): v for t, v in lp.top})
        offsets.append(pos)
        pos += len(tok)
    return {
        "tokens": tokens,
        "token_logprobs": values,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def chat_logprobs(lps: list[TokenLogprob], text_of: TokenText) -> dict[str, Any]:
    content = []
    for lp in lps:
        tok = text_of(lp.token_id)
        content.append(
            {
                "token": tok,
                "logprob": lp.logprob,
                "bytes": list(tok.encode("utf-8")),
                "top_logprobs": [
                    {"token": text_of(t), "logprob": v, "bytes": list(text_of(t).encode())}
                    for t, v in lp.top
                ],
            }
        )
    return {"content": content, "refusal": None}


class ChunkWriter:
    """Builds the SSE chunks of one streamed response."""

    def __init__(self, chat: bool, model: str, include_usage: bool) -> None:
        self.chat = chat
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self.object = "chat.completion.chunk" if chat else "text_completion"
        head = {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": model,
            "system_fingerprint": None,
        }
        self._head = json.dumps(head, separators=(",", ":"))[:-1]  # without the closing brace
        self._tail = ',"usage":null}' if include_usage else "}"

    def _wrap(self, choice: str) -> bytes:
        return f'data: {self._head},"choices":[{choice}]{self._tail}\n\n'.encode()

    def role(self, index: int) -> bytes:
        return self._wrap(
            f'{{"index":{index},"delta":{{"role":"assistant","content":""}},'
            '"logprobs":null,"finish_reason":null}'
        )

    def delta(
        self,
        index: int,
        text: str,
        finish_reason: str | None,
        logprobs: dict[str, Any] | None = None,
        token_ids: list[int] | None = None,
    ) -> bytes:
        lp = "null" if logprobs is None else json.dumps(logprobs)
        fr = "null" if finish_reason is None else json.dumps(finish_reason)
        extra = "" if token_ids is None else f',"token_ids":{json.dumps(token_ids)}'
        if self.chat:
            content = "{}" if finish_reason and not text else f'{{"content":{json.dumps(text)}}}'
            body = (
                f'{{"index":{index},"delta":{content},"logprobs":{lp},"finish_reason":{fr}{extra}}}'
            )
        else:
            body = (
                f'{{"index":{index},"text":{json.dumps(text)},'
                f'"logprobs":{lp},"finish_reason":{fr}{extra}}}'
            )
        return self._wrap(body)

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        body = {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [],
            "usage": usage(prompt_tokens, completion_tokens),
        }
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def completion_body(
    model: str, choices: list[dict[str, Any]], prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": new_id("cmpl"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_body(
    model: str, choices: list[dict[str, Any]], prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    }
