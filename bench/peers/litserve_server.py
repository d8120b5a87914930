"""LitServe peer: the reference model behind LitServe's dynamic batching.

Run from its own venv: var/bench-venvs/litserve/bin/python bench/peers/litserve_server.py
--model DIR --port P --max-batch-size 16 --batch-timeout 0.05. POST /predict
{"prompt": "..."} -> {"text": "...", "completion_tokens": 64}.
"""

from __future__ import annotations

import argparse
import os
import sys

import litserve as ls

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_batch import BatchGenerator


class LlamaAPI(ls.LitAPI):
    def __init__(self, model_dir: str, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.model_dir = model_dir

    def setup(self, device: str) -> None:
        self.generator = BatchGenerator(self.model_dir)

    def decode_request(self, request: dict) -> str:
        return request["prompt"]

    def batch(self, inputs: list[str]) -> list[str]:
        return list(inputs)

    def predict(self, prompts: list[str]) -> list[dict]:
        return self.generator(prompts)

    def unbatch(self, output: list[dict]) -> list[dict]:
        return output

    def encode_response(self, output: dict) -> dict:
        return output


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--batch-timeout", type=float, default=0.05)
    args = p.parse_args()
    api = LlamaAPI(args.model, args.max_batch_size, args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=600)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False)


if __name__ == "__main__":
    main()
