"""POST /v1/completions and /v1/chat/completions: from a validated request to a response.

Owns tokenizing (chat template from the tokenizer, a plain fallback without one), the
length checks, fanning a request out into choices (prompts x n), admission (429 with
Retry-After on a full queue, 503 while draining), and the two response paths:
non-streaming (wait for all choices, racing the client's disconnect and the request
timeout: 504) and streaming (SSE in OpenAI's chunk format; the first token is awaited
before the headers go out, so a queue timeout is still a proper 504; a disconnect or a
timeout mid-stream cancels the remaining choices and frees their slots at once).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from serving.engine import EngineClosed, InvalidParam, QueueFull, SamplingParams
from serving.engine.sequence import FINISH_ABORT, FINISH_ERROR
from serving.replica import openai_format as fmt
from serving.replica.state import CollectSink, ReplicaState, StreamSink
from serving.replica.validation import BadField, ParsedRequest, TooLarge

_TIMEOUT = object()


class SSEResponse(StreamingResponse):
    """A StreamingResponse that always runs `on_close`, however the stream ends."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            try:
                if aclose is not None:
                    await aclose()
            finally:
                self._on_close()


def chat_prompt(tokenizer: Any, parsed: ParsedRequest) -> str:
    """The chat template applied to the messages (a plain transcript without a template)."""
    if getattr(tokenizer, "chat_template", None):
        try:
            return tokenizer.apply_chat_template(
                parsed.messages, tokenize=False, **parsed.chat_template_kwargs
            )
        except Exception as exc:  # a template may reject a role order, say
            raise BadField("messages", f"the chat template rejected the messages: {exc}") from exc
    lines = [f"{m['role']}: {m['content']}" for m in parsed.messages]
    if parsed.chat_template_kwargs.get("add_generation_prompt", True):
        lines.append("assistant:")
    return "\n".join(lines)


#: A token is rarely longer than this many characters: a prompt longer than
#: max_model_len times it cannot fit, and is refused before it is tokenized.
CHARS_PER_TOKEN = 16
PREPARE_SECONDS = 10.0


def _check_size(engine: Any, parsed: ParsedRequest, chat: bool) -> None:
    limit = max(65536, engine.max_model_len * CHARS_PER_TOKEN)
    if chat:
        chars = sum(len(m["content"]) for m in parsed.messages)
    else:
        chars = max((len(p) for p in parsed.prompts), default=0)
    if chars > limit:
        raise BadField(
            "messages" if chat else "prompt",
            f"the prompt is {chars} characters; this model takes at most "
            f"{engine.max_model_len} tokens (prompts over {limit} characters are refused)",
        )


def _token_ids(state: ReplicaState, parsed: ParsedRequest, chat: bool) -> list[list[int]]:
    tokenizer = state.engine.tokenizer
    if chat:
        text = chat_prompt(tokenizer, parsed)
        return [tokenizer(text, add_special_tokens=False).input_ids]
    out = []
    for p in parsed.prompts:
        out.append(list(p) if isinstance(p, list) else tokenizer(p).input_ids)
    return out


def _retry_after(state: ReplicaState) -> str:
    engine = state.engine
    per_slot = max(1, engine.num_queued // max(1, engine.config.max_batch_size))
    return str(min(60, per_slot))


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def handle_generate(request: Request, state: ReplicaState, parsed: ParsedRequest) -> Response:
    """Run a validated completions (`parsed.messages` empty) or chat request."""
    chat = bool(parsed.messages)
    engine = state.engine
    t0 = time.monotonic()
    deadline = t0 + state.request_timeout
    _check_size(engine, parsed, chat)
    try:  # tokenizing (and the chat template) off the event loop, with a time bound
        prompts = await asyncio.wait_for(
            asyncio.get_running_loop().run_in_executor(
                state.prepare_pool, _token_ids, state, parsed, chat
            ),
            timeout=PREPARE_SECONDS,
        )
    except TimeoutError:
        raise BadField(
            "messages" if chat else "prompt",
            f"preparing the prompt took longer than {PREPARE_SECONDS:g} s",
        ) from None
    choices: list[tuple[int, list[int], SamplingParams]] = []
    for pi, ids in enumerate(prompts):
        base = parsed.params
        if chat and not parsed.max_tokens_given:
            base = dataclasses.replace(base, max_tokens=max(1, engine.max_model_len - len(ids)))
        try:
            engine.check_lengths(len(ids), base.max_tokens)
        except InvalidParam as exc:
            raise BadField(exc.field, str(exc)) from exc
        for j in range(parsed.n):
            params = base
            if parsed.n > 1 and base.seed is not None:
                params = dataclasses.replace(base, seed=base.seed + j)
            choices.append((pi * parsed.n + j, ids, params))
    loop = asyncio.get_running_loop()
    metrics = state.metrics
    queue: asyncio.Queue = asyncio.Queue()
    sinks: list[Any] = []
    try:
        for index, ids, params in choices:
            if parsed.stream:
                sink: Any = StreamSink(loop, metrics, t0, queue, index)
            else:
                sink = CollectSink(loop, metrics, t0)
            sink.request_id = engine.submit(ids, params, sink)
            sinks.append(sink)
    except InvalidParam as exc:
        _abort_all(state, sinks)
        raise BadField(exc.field, str(exc)) from exc
    except QueueFull as exc:
        _abort_all(state, sinks)
        return fmt.error_response(
            429,
            f"The server is busy ({exc}); retry later",
            headers={"Retry-After": _retry_after(state)},
        )
    except EngineClosed as exc:
        _abort_all(state, sinks)
        return fmt.error_response(503, str(exc), headers={"Retry-After": "1"})
    metrics.prompt_tokens.inc(sum(len(ids) for ids in prompts))
    if parsed.stream:
        return await _stream(request, state, parsed, prompts, sinks, queue, deadline, chat)
    return await _collect(request, state, parsed, prompts, sinks, deadline, chat)


def _abort_all(state: ReplicaState, sinks: list[Any], reason: str | None = None) -> None:
    unfinished = 0
    for sink in sinks:
        done = sink.final is not None if isinstance(sink, CollectSink) else sink.finished
        if not done:
            state.engine.abort(sink.request_id)
            unfinished += 1
    if reason and unfinished:
        state.metrics.aborted.labels(reason).inc()


async def _collect(
    request: Request,
    state: ReplicaState,
    parsed: ParsedRequest,
    prompts: list[list[int]],
    sinks: list[CollectSink],
    deadline: float,
    chat: bool,
) -> Response:
    gathered = asyncio.gather(*(s.future for s in sinks))
    disconnect = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait(
            {gathered, disconnect},
            timeout=max(0.0, deadline - time.monotonic()),
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        disconnect.cancel()
    if gathered not in done:
        gathered.cancel()
        if disconnect in done:
            _abort_all(state, sinks, "client_disconnect")
            return Response(status_code=499)
        _abort_all(state, sinks, "timeout")
        return fmt.error_response(
            504, f"The request did not finish within {state.request_timeout:g} s and was cancelled"
        )
    finals = [s.final for s in sinks]
    for final in finals:
        if final.finish_reason == FINISH_ERROR:
            return fmt.error_response(500, f"generation failed: {final.error}")
        if final.finish_reason == FINISH_ABORT:
            return fmt.error_response(503, "the request was cancelled while the replica drained")
    text_of = state.text_of
    out = []
    for i, sink in enumerate(sinks):
        final = sink.final
        text = "".join(sink.text)
        prompt_ids = prompts[i // parsed.n]
        if chat:
            choice: dict[str, Any] = {
                "index": i,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": fmt.chat_logprobs(sink.logprobs, text_of)
                if parsed.chat_logprobs
                else None,
                "finish_reason": final.finish_reason,
            }
        else:
            prefix = ""
            if parsed.echo:
                p = parsed.prompts[i // parsed.n]
                prefix = p if isinstance(p, str) else state.engine.tokenizer.decode(p)
            choice = {
                "index": i,
                "text": prefix + text,
                "logprobs": fmt.completion_logprobs(sink.logprobs, text_of)
                if parsed.params.logprobs is not None
                else None,
                "finish_reason": final.finish_reason,
            }
        if parsed.return_token_ids:
            choice["token_ids"] = sink.ids
            choice["prompt_token_ids"] = prompt_ids
        out.append(choice)
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(s.final.completion_tokens for s in sinks)
    body_fn = fmt.chat_body if chat else fmt.completion_body
    body = body_fn(parsed.model, out, prompt_tokens, completion_tokens)
    return JSONResponse(body)


async def _first_item(request: Request, queue: asyncio.Queue, deadline: float) -> tuple[Any, bool]:
    """Wait for the first output: (item, disconnected). item is _TIMEOUT on timeout."""
    getter = asyncio.ensure_future(queue.get())
    disconnect = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait(
            {getter, disconnect},
            timeout=max(0.0, deadline - time.monotonic()),
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        disconnect.cancel()
    if getter in done:
        return getter.result(), False
    getter.cancel()
    return _TIMEOUT, disconnect in done


async def _stream(
    request: Request,
    state: ReplicaState,
    parsed: ParsedRequest,
    prompts: list[list[int]],
    sinks: list[StreamSink],
    queue: asyncio.Queue,
    deadline: float,
    chat: bool,
) -> Response:
    first, disconnected = await _first_item(request, queue, deadline)
    if first is _TIMEOUT:
        if disconnected:
            _abort_all(state, sinks, "client_disconnect")
            return Response(status_code=499)
        _abort_all(state, sinks, "timeout")
        return fmt.error_response(
            504, f"No token within {state.request_timeout:g} s; the request was cancelled"
        )
    out = first[1]
    if out.finished and out.finish_reason == FINISH_ERROR:
        _abort_all(state, sinks)
        return fmt.error_response(500, f"generation failed: {out.error}")
    writer = fmt.ChunkWriter(chat, parsed.model, parsed.include_usage)
    loop = asyncio.get_running_loop()
    timer = loop.call_at(
        loop.time() + max(0.0, deadline - time.monotonic()), queue.put_nowait, (-1, _TIMEOUT)
    )
    state.begin()  # the stream outlives this handler; on_close ends it
    t0 = time.monotonic()

    def on_close() -> None:
        timer.cancel()
        _abort_all(state, sinks, "client_disconnect")
        state.end()
        state.metrics.latency.labels("chat" if chat else "completions").observe(
            time.monotonic() - t0
        )

    body = _chunks(state, parsed, prompts, sinks, queue, writer, chat, first)
    return SSEResponse(body, on_close)


async def _chunks(
    state: ReplicaState,
    parsed: ParsedRequest,
    prompts: list[list[int]],
    sinks: list[StreamSink],
    queue: asyncio.Queue,
    writer: fmt.ChunkWriter,
    chat: bool,
    first: tuple[int, Any],
) -> AsyncIterator[bytes]:
    pending = len(sinks)
    completion_tokens = 0
    text_of = state.text_of
    want_lp = parsed.params.logprobs is not None
    emitted = [0] * len(sinks)  # characters sent per choice (for text_offset)
    if chat:
        yield b"".join(writer.role(i) for i in range(len(sinks)))
    elif parsed.echo:
        parts = []
        for i in range(len(sinks)):
            p = parsed.prompts[i // parsed.n]
            text = p if isinstance(p, str) else state.engine.tokenizer.decode(p)
            parts.append(writer.delta(i, text, None))
        yield b"".join(parts)
    batch = [first]
    while True:
        parts = []
        for index, out in batch:
            if out is _TIMEOUT:
                _abort_all(state, sinks, "timeout")
                yield b"".join(parts) + fmt.sse_error(
                    504, f"the request exceeded {state.request_timeout:g} s and was cancelled"
                )
                return
            if out.finished and out.finish_reason in (FINISH_ERROR, FINISH_ABORT):
                code, msg = (500, f"generation failed: {out.error}")
                if out.finish_reason == FINISH_ABORT:
                    code, msg = (503, "the request was cancelled while the replica drained")
                yield b"".join(parts) + fmt.sse_error(code, msg)
                return
            lp = None
            if want_lp and out.logprobs:
                if chat:
                    lp = fmt.chat_logprobs(out.logprobs, text_of)
                else:
                    lp = fmt.completion_logprobs(out.logprobs, text_of, emitted[index])
            emitted[index] += len(out.text)
            ids = out.token_ids if parsed.return_token_ids else None
            if out.finished:
                pending -= 1
                completion_tokens += out.completion_tokens
                if chat and (out.text or lp or ids):
                    parts.append(writer.delta(index, out.text, None, lp, ids))
                    parts.append(writer.delta(index, "", out.finish_reason))
                else:
                    parts.append(writer.delta(index, out.text, out.finish_reason, lp, ids))
            elif out.text or lp or ids:
                parts.append(writer.delta(index, out.text, None, lp, ids))
        if pending == 0:
            if parsed.include_usage:
                prompt_tokens = sum(len(p) for p in prompts)
                parts.append(writer.usage_chunk(prompt_tokens, completion_tokens))
            parts.append(fmt.DONE)
            yield b"".join(parts)
            return
        if parts:
            yield b"".join(parts)
        batch = [await queue.get()]
        while not queue.empty():
            batch.append(queue.get_nowait())


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON, read no further than ``limit`` bytes (then a 413)."""
    too_large = TooLarge(None, f"the request body is larger than this server's {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadField(None, f"the request body is not valid JSON: {exc}") from exc
    except RecursionError:
        raise BadField(None, "the request body is nested too deeply") from None


Handler = Callable[[Request], Awaitable[Response]]
