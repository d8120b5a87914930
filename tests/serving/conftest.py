"""Fixtures for the serving tests: a tiny local model, its HF reference, replica processes.

The model (hidden 64, 2 layers, vocab 512, byte-level BPE trained here, 150 training
steps so its predictions are peaked rather than uniform) is built once per session.
Replicas are real `python -m serving.replica` subprocesses on 127.0.0.1 with `--port 0`;
a fixture waits for their ready line and stops them with SIGTERM (SIGKILL if stuck).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 90.0


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from serving.engine.tiny import build_tiny_llama

    torch.set_num_threads(1)
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), "test", train_steps=150)


@pytest.fixture(scope="session")
def hf_model(model_dir: Path):
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True).eval()


@pytest.fixture(scope="session")
def tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="session")
def greedy_reference(hf_model, tokenizer):
    """prompt text, n -> the token ids `model.generate` picks greedily (cut after EOS)."""
    cache: dict[tuple[str, int], list[int]] = {}
    eos = hf_model.config.eos_token_id

    def ref(prompt: str, n: int) -> list[int]:
        key = (prompt, n)
        if key not in cache:
            ids = tokenizer(prompt).input_ids
            with torch.inference_mode():
                out = hf_model.generate(
                    torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=eos
                )
            new = out[0, len(ids) :].tolist()
            if eos in new:
                new = new[: new.index(eos) + 1]
            cache[key] = new
        return cache[key]

    return ref


@dataclass
class Replica:
    """A running replica process."""

    proc: subprocess.Popen
    port: int
    events: list[dict] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def read_events(self, timeout: float = 10.0, until: str | None = None) -> list[dict]:
        """Read the JSON lines the process prints, until EOF, `until` or the timeout."""
        deadline = time.monotonic() + timeout
        stdout = self.proc.stdout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([stdout], [], [], 0.1)
            if not ready:
                if self.proc.poll() is not None:
                    break
                continue
            line = stdout.readline()
            if not line:
                break
            self.events.append(json.loads(line))
            if until is not None and self.events[-1]["event"] == until:
                break
        return self.events


def start_replica(model: Path, *args: str, wait_ready: bool = True) -> Replica:
    cmd = [sys.executable, "-m", "serving.replica", "--model", str(model), "--port", "0"]
    cmd += ["--threads", "1", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    replica = Replica(proc=proc, port=0)
    deadline = time.monotonic() + START_TIMEOUT
    want = "ready" if wait_ready else "listening"
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"replica exited with {proc.wait()} before '{want}'")
        event = json.loads(line)
        replica.events.append(event)
        if event.get("port"):
            replica.port = event["port"]
        if event["event"] == "error":
            proc.kill()
            raise RuntimeError(f"replica failed: {event['message']}")
        if event["event"] == want:
            return replica
    proc.kill()
    raise RuntimeError(f"replica not {want} within {START_TIMEOUT} s")


@pytest.fixture(scope="session")
def replica(model_dir: Path) -> Iterator[Replica]:
    """The shared replica most API tests talk to."""
    rep = start_replica(model_dir, "--max-batch-size", "16", "--max-num-batched-tokens", "32")
    yield rep
    rep.stop()


@pytest.fixture()
def spawn(model_dir: Path) -> Iterator:
    """Start replicas with custom flags; all are stopped at the end of the test."""
    started: list[Replica] = []

    def _spawn(*args: str, wait_ready: bool = True) -> Replica:
        rep = start_replica(model_dir, *args, wait_ready=wait_ready)
        started.append(rep)
        return rep

    yield _spawn
    for rep in started:
        rep.stop()


@pytest.fixture
def version(cast, tmp_path: Path):
    """A registered version of alpha's model "tiny" (its directory holds a config only)."""
    from serving.models import Model, ModelVersion

    model = Model.objects.create(project=cast.alpha, name="tiny")
    (tmp_path / "config.json").write_text("{}")
    return ModelVersion.objects.create(model=model, version=1, source="upload", path=str(tmp_path))
