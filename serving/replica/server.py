"""The replica process: flags, socket, model loading, ready line, graceful drain.

Owns `python -m serving.replica`. It checks the flags and the model directory first
(exit 2 with a message on stderr and an `{"event": "error"}` line on stdout), binds the
socket (`--port 0` picks a free port), serves `/health` (503) while the model loads and
warms up on a background thread, then prints one JSON line to stdout,
`{"event": "ready", "host": ..., "port": ..., "model": ..., "url": ...}`, and turns
`/health` to 200. SIGTERM (or SIGINT) starts a drain: `/health` and new requests get 503,
requests in flight finish, then the process exits 0; a second signal, or
`--drain-timeout` seconds, cancels what is left.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from serving.engine import EngineConfig, ModelLoadError, QuantizationError, load_engine, warm_up
from serving.engine.loader import check_model_dir
from serving.engine.quant import MODES, resolve_device, validate
from serving.replica.app import build_app
from serving.replica.state import ReplicaState

log = logging.getLogger("serving.replica")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m serving.replica",
        description="Serve a Hugging Face causal LM directory over an OpenAI-compatible API.",
    )
    p.add_argument("--model", required=True, help="Hugging Face model directory (safetensors)")
    p.add_argument("--served-model-name", help="name clients use (default: the directory name)")
    p.add_argument(
        "--host",
        default=os.environ.get("CP_BIND_HOST", "127.0.0.1"),
        help="address to bind (default 127.0.0.1; under the control plane, env CP_BIND_HOST)",
    )
    p.add_argument("--port", type=int, default=8000, help="port (0 picks a free one)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--quantization", default="none", choices=MODES)
    p.add_argument("--max-batch-size", type=int, default=32, help="sequences per step")
    p.add_argument(
        "--max-wait-ms", type=float, default=0.0, help="how long a lone request waits for company"
    )
    p.add_argument("--max-queue", type=int, default=512, help="waiting requests before 429")
    p.add_argument("--max-model-len", type=int, help="prompt + output tokens per sequence")
    p.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=256,
        help="tokens per step (decode tokens + prefill chunk)",
    )
    p.add_argument(
        "--stream-interval",
        type=int,
        default=1,
        help="streamed tokens per chunk after the first (larger: less overhead per token)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("CP_SERVING_API_KEY"),
        help="require 'Authorization: Bearer KEY' on /v1 (env CP_SERVING_API_KEY)",
    )
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds, then 504")
    p.add_argument(
        "--max-body-bytes", type=int, default=4 * 1024 * 1024, help="larger requests get 413"
    )
    p.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to drain on SIGTERM")
    p.add_argument("--engine", default="auto", choices=["auto", "lean", "hf"], help="runner")
    p.add_argument("--threads", type=int, help="torch threads (default: CPUs available)")
    p.add_argument("--seed", type=int, default=0, help="seed for unseeded sampling")
    p.add_argument(
        "--prefix-reuse-min",
        type=int,
        default=16,
        help="reuse a free slot's cached K/V for a prompt sharing at least this many leading "
        "tokens with it (0: off)",
    )
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    for name in ("max_batch_size", "max_queue", "max_num_batched_tokens", "stream_interval"):
        if getattr(args, name) < (0 if name == "max_queue" else 1):
            p.error(f"--{name.replace('_', '-')} must be positive")
    if not 0 <= args.port <= 65535:
        p.error("--port must be between 0 and 65535")
    if args.max_body_bytes < 1024:
        p.error("--max-body-bytes must be at least 1024")
    if args.request_timeout <= 0 or args.drain_timeout < 0:
        p.error("--request-timeout must be > 0 and --drain-timeout >= 0")
    return args


def engine_config(args: argparse.Namespace) -> EngineConfig:
    threads = args.threads
    if threads is None and hasattr(os, "sched_getaffinity"):
        threads = len(os.sched_getaffinity(0))
    return EngineConfig(
        model=args.model,
        device=args.device,
        quantization=args.quantization,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_model_len=args.max_model_len,
        max_num_batched_tokens=args.max_num_batched_tokens,
        stream_interval=args.stream_interval,
        impl=args.engine,
        threads=threads,
        seed=args.seed,
        prefix_reuse_min=args.prefix_reuse_min,
    )


def emit(event: dict[str, Any]) -> None:
    """One machine-readable line on stdout; under the control plane, readiness and errors
    also go to its events file (``CP_EVENTS_FILE``), which its worker reads."""
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()
    path = os.environ.get("CP_EVENTS_FILE")
    kind = event.get("event")
    if not path or kind not in ("ready", "error"):
        return
    if kind == "ready":
        info = {k: v for k, v in event.items() if k not in ("event", "host", "port", "url")}
        record = {"type": "ready", "port": event["port"], "info": info}
    else:
        record = {"type": "error", "message": event.get("message", "")}
    line = json.dumps({"v": 1, "time": time.time(), **record}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:  # one write on an O_APPEND descriptor: a whole line
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _make_server(config: Any, state: ReplicaState) -> Any:
    import uvicorn

    class ReplicaServer(uvicorn.Server):
        """uvicorn with a drain on the first SIGTERM/SIGINT instead of an immediate stop."""

        drain_started: float | None = None
        cancelled = False

        def handle_exit(self, sig: int, frame: Any) -> None:
            if state.draining or not state.ready:
                if state.draining:
                    self.force_exit = True
                super().handle_exit(sig, frame)
                return
            log.warning("signal %s: draining", sig)
            state.draining = True
            state.metrics.ready.set(0)
            if state.engine is not None:
                state.engine.stop_accepting()
            self.drain_started = time.monotonic()

        async def on_tick(self, counter: int) -> bool:
            if state.draining and not self.should_exit and self.drain_started is not None:
                engine = state.engine
                idle = engine is None or (engine.num_queued == 0 and engine.num_running == 0)
                if state.in_flight == 0 and idle:
                    self.should_exit = True
                elif time.monotonic() - self.drain_started > state.drain_timeout:
                    if not self.cancelled and engine is not None:
                        self.cancelled = True
                        for seq_id in list(engine._by_id):
                            engine.abort(seq_id)
                    if time.monotonic() - self.drain_started > state.drain_timeout + 5:
                        self.should_exit = True
            return await super().on_tick(counter)

    return ReplicaServer(config)


def _load(config: EngineConfig, state: ReplicaState, server: Any, where: dict) -> None:
    try:
        engine, report = load_engine(config)
        engine.start()
        warm_up(engine, report)
    except Exception as exc:
        log.exception("model load failed")
        state.load_error = f"{type(exc).__name__}: {exc}"
        state.exit_code = 1
        emit({"event": "error", "message": state.load_error})
        server.should_exit = True
        return
    state.attach(engine, report)
    if state.draining or server.should_exit:
        return
    state.ready = True
    state.metrics.ready.set(1)
    emit(
        {
            "event": "ready",
            "host": where["host"],
            "port": where["port"],
            "url": f"http://{where['host']}:{where['port']}",
            "model": state.served_model_name,
            "pid": os.getpid(),
            "runner": report.runner,
            "device": report.device,
            "quantization": report.quantization,
            "max_model_len": report.max_model_len,
            "load_seconds": report.load_seconds,
            "warmup_seconds": report.warmup_seconds,
            "rss_bytes": report.rss_bytes,
        }
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = engine_config(args)
    try:
        config.validate()
        check_model_dir(args.model)
        validate(args.quantization, resolve_device(args.device))
    except (ModelLoadError, QuantizationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        emit({"event": "error", "message": str(exc)})
        return 2
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        message = f"cannot bind {args.host}:{args.port}: {exc.strerror or exc}"
        print(f"error: {message}", file=sys.stderr)
        emit({"event": "error", "message": message})
        return 2
    host, port = sock.getsockname()[:2]
    name = args.served_model_name or Path(args.model).resolve().name
    state = ReplicaState(
        served_model_name=name,
        api_key=args.api_key or None,
        request_timeout=args.request_timeout,
        drain_timeout=args.drain_timeout,
        max_body_bytes=args.max_body_bytes,
    )
    import uvicorn

    uv_config = uvicorn.Config(
        build_app(state),
        loop="auto",
        http="auto",
        lifespan="off",
        log_level=args.log_level,
        access_log=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=5,
    )
    server = _make_server(uv_config, state)
    emit({"event": "listening", "host": host, "port": port, "model": name, "pid": os.getpid()})
    loader = threading.Thread(
        target=_load,
        args=(config, state, server, {"host": host, "port": port}),
        name="loader",
        daemon=True,
    )
    loader.start()
    server.run(sockets=[sock])
    if state.engine is not None:
        state.engine.shutdown(timeout=5)
    emit({"event": "stopped", "exit_code": state.exit_code})
    return state.exit_code
