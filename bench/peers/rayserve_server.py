"""Ray Serve peer: the reference model behind `@serve.batch`.

Run from its own venv: var/bench-venvs/ray/bin/python bench/peers/rayserve_server.py
--model DIR --port P --max-batch-size 16 --batch-wait 0.05. POST /predict
{"prompt": "..."} -> {"text": "...", "completion_tokens": 64}. Stays up until SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

import ray
from ray import serve
from starlette.requests import Request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def build(model_dir: str, max_batch_size: int, batch_wait: float, max_ongoing: int, threads: int):
    # Ray sets OMP_NUM_THREADS of an actor to its num_cpus: give it the threads the
    # other servers get.
    @serve.deployment(max_ongoing_requests=max_ongoing, ray_actor_options={"num_cpus": threads})
    class Llama:
        def __init__(self) -> None:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from hf_batch import BatchGenerator

            self.generator = BatchGenerator(model_dir)

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait)
        async def generate(self, prompts: list[str]) -> list[dict]:
            return self.generator(prompts)

        async def __call__(self, request: Request) -> dict:
            body = await request.json()
            return await self.generate(body["prompt"])

    return Llama.bind()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--batch-wait", type=float, default=0.05)
    p.add_argument("--max-ongoing-requests", type=int, default=64)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = p.parse_args()
    ray.init(num_cpus=max(2, args.threads), include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    app = build(
        args.model, args.max_batch_size, args.batch_wait, args.max_ongoing_requests, args.threads
    )
    serve.run(app, route_prefix="/predict", blocking=False)
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
