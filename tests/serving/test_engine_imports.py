"""A CPU replica never imports torchao: only the GPU int8/int4 modes use it.

Each check runs in a fresh interpreter, since this test process may already hold torchao
(other tests quantize with it). transformers imports torchao with its model code whenever
torchao is installed; `quant.defer_transformers_torchao` keeps that import lazy.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving.engine.tiny import build_tiny_llama

ROOT = Path(__file__).resolve().parents[2]

MARKER = "--- calling transformers' deferred torchao name ---"

# Loads on CPU with none and int8 and prints whether torchao got imported; then (after a
# marker on stderr) checks transformers' torchao save path still works: the stand-in for
# its module-level torchao name imports torchao on first call.
SCRIPT = f"""
import sys
import serving.replica.server, serving.engine.engine, serving.engine.quant
from serving.engine.loader import EngineConfig, load_engine
for mode in ("none", "int8"):
    load_engine(EngineConfig(model=sys.argv[1], quantization=mode, device="cpu", threads=1))
print('torchao' in sys.modules, flush=True)
if sys.argv[2] == "1":
    print({MARKER!r}, file=sys.stderr, flush=True)
    import torch
    from transformers.quantizers import quantizer_torchao
    flat, _ = quantizer_torchao.flatten_tensor_state_dict({{"w": torch.zeros(2)}})
    print('torchao' in sys.modules, sorted(flat))
"""


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-imports"), "test")


def test_cpu_replica_does_not_import_torchao(tiny_dir: Path):
    try:
        import torchao  # noqa: F401

        has_torchao = True
    except ImportError:  # nothing to defer; the CPU load must still not need it
        has_torchao = False
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_dir), "1" if has_torchao else "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    loaded_on_cpu = lines[-2] if has_torchao else lines[-1]
    assert loaded_on_cpu == "False", proc.stdout
    before_marker = proc.stderr.split(MARKER)[0]
    failed = [line for line in before_marker.splitlines() if "Failed to load" in line]
    assert not failed, failed
    if has_torchao:
        assert lines[-1] == "True ['w']", proc.stdout
