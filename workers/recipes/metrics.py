"""Throughput, memory and MFU accounting for the recipe.

MFU (model FLOPs utilisation) follows the PaLM paper's count: per token, 6 x the
non-embedding parameters plus 12 x layers x hidden x sequence length for attention
(forward + backward; activation recomputation is not counted). It is only reported on
GPUs whose dense peak is known (or given with ``--peak-tflops``).
"""

from __future__ import annotations

import resource
import sys
import time

import torch

# Dense tensor-core peaks (TFLOP/s) for bf16/fp16; fp32 runs use TF32 peaks.
_PEAKS_BF16 = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
}


def peak_tflops(device: torch.device, precision: str, override: float | None) -> float | None:
    """The device's dense peak TFLOP/s for this precision, or None when unknown/CPU."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in _PEAKS_BF16.items():  # most specific names first
        if key in name:
            return peak if precision != "fp32" else peak / 2.0
    return None


def flops_per_token(n_params_non_embedding: int, layers: int, hidden: int, seq_len: int) -> float:
    return 6.0 * n_params_non_embedding + 12.0 * layers * hidden * seq_len


def peak_memory_bytes(device: torch.device) -> int:
    """Peak CUDA memory allocated on GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


class Throughput:
    """Tokens/samples per second over the last logging interval (all ranks together)."""

    def __init__(self, tokens_per_step: int, samples_per_step: int, flops_per_step: float):
        self.tokens_per_step = tokens_per_step
        self.samples_per_step = samples_per_step
        self.flops_per_step = flops_per_step
        self.reset()

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.steps = 0

    def tick(self) -> None:
        self.steps += 1

    def read(self, world: int, peak: float | None) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        step_time = elapsed / max(self.steps, 1)
        out = {
            "step_time_s": step_time,
            "tokens_per_s": self.tokens_per_step * self.steps / elapsed,
            "samples_per_s": self.samples_per_step * self.steps / elapsed,
        }
        if peak:
            achieved = self.flops_per_step * self.steps / elapsed
            out["mfu"] = achieved / (peak * 1e12 * world)
        return out
