"""From a Hugging Face model directory to a warmed-up Engine.

Owns `EngineConfig` (everything a replica's flags set), loading a directory with
transformers (weights from safetensors only, never pickles, no remote code), choosing
the runner (`lean` for Llama-family models, `hf` for anything else, or forced), applying
the quantization mode, and the warm-up that runs every kernel shape once before the
engine reports ready. Load time and memory are recorded in `LoadReport`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from serving.engine import quant
from serving.engine.engine import Engine, SchedulerConfig
from serving.engine.hf_runner import HFRunner
from serving.engine.lean import LeanCausalLM, lean_unsupported_reason
from serving.engine.sampling import SamplingParams

log = logging.getLogger("serving.engine")

DEFAULT_MAX_MODEL_LEN = 2048


class ModelLoadError(ValueError):
    """The model directory cannot be served as asked; the message says why."""


@dataclass(slots=True)
class EngineConfig:
    """What to load and how to run it (the replica's flags)."""

    model: str
    device: str = "auto"
    quantization: str = "none"
    max_batch_size: int = 32
    max_wait_ms: float = 0.0
    max_queue: int = 512
    max_model_len: int | None = None
    max_num_batched_tokens: int = 256
    stream_interval: int = 1
    impl: str = "auto"  # auto | lean | hf
    threads: int | None = None
    seed: int = 0
    prefix_reuse_min: int = 16

    def validate(self) -> None:
        checks = [
            (self.max_batch_size >= 1, "--max-batch-size must be >= 1"),
            (self.max_wait_ms >= 0, "--max-wait-ms must be >= 0"),
            (self.max_queue >= 0, "--max-queue must be >= 0"),
            (self.stream_interval >= 1, "--stream-interval must be >= 1"),
            (self.max_model_len is None or self.max_model_len >= 2, "--max-model-len >= 2"),
            (self.impl in ("auto", "lean", "hf"), "--engine must be auto, lean or hf"),
            (self.threads is None or self.threads >= 1, "--threads must be >= 1"),
            (self.prefix_reuse_min >= 0, "--prefix-reuse-min must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ModelLoadError(message)


@dataclass(slots=True)
class LoadReport:
    """How the model was loaded: shown in the ready line and in BENCHMARKS.md."""

    model: str
    runner: str
    device: str
    quantization: str
    dtype: str
    max_model_len: int
    parameters: int
    load_seconds: float
    warmup_seconds: float = 0.0
    weight_bytes: int = 0
    kv_cache_bytes: int = 0
    rss_bytes: int = 0
    lean_fallback_reason: str | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def check_model_dir(path: str) -> Path:
    """Refuse directories that are missing, not a causal LM, or hold only pickled weights."""
    root = Path(path)
    if not root.is_dir():
        raise ModelLoadError(f"--model {path}: not a directory")
    if not (root / "config.json").is_file():
        raise ModelLoadError(f"--model {path}: no config.json (not a Hugging Face model directory)")
    if not any(root.glob("*.safetensors")):
        pickled = [p.name for p in root.glob("*.bin")] + [p.name for p in root.glob("*.pt")]
        hint = f" (found {', '.join(pickled)}; convert them to safetensors)" if pickled else ""
        raise ModelLoadError(f"--model {path}: no *.safetensors weights{hint}")
    return root


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config):
        value = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    if not ids and getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def load_engine(config: EngineConfig) -> tuple[Engine, LoadReport]:
    """Load, quantize and build the engine (not started, not warmed up).

    The work runs on a short-lived thread. Measured on the 2-core VM: when the thread
    that later waits on the engine (a script's main thread) also did the loading, the
    engine thread ran 1.6-1.8x slower (int8, batch 16: ~1,130 vs ~1,900 tok/s), most
    likely because that thread keeps its own OpenMP team alive next to the engine's.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = _load_engine(config)
        except BaseException as exc:  # re-raised on the caller's thread
            box["error"] = exc

    loader = threading.Thread(target=run, name="engine-loader")
    loader.start()
    loader.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def _load_engine(config: EngineConfig) -> tuple[Engine, LoadReport]:
    quant.defer_transformers_torchao()  # torchao only for the GPU modes that use it
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config.validate()
    root = check_model_dir(config.model)
    device = quant.resolve_device(config.device)
    quant.validate(config.quantization, device)
    if config.threads:
        torch.set_num_threads(config.threads)
    t0 = time.perf_counter()
    hf_config = AutoConfig.from_pretrained(root, trust_remote_code=False)
    limit = int(getattr(hf_config, "max_position_embeddings", 0) or DEFAULT_MAX_MODEL_LEN)
    max_len = config.max_model_len or min(limit, DEFAULT_MAX_MODEL_LEN)
    if max_len > limit:
        raise ModelLoadError(
            f"--max-model-len {max_len} exceeds the model's max_position_embeddings {limit}"
        )
    reason = lean_unsupported_reason(hf_config, max_len)
    impl = config.impl
    if impl == "lean" and reason:
        raise ModelLoadError(f"--engine lean cannot serve this model: {reason}")
    if impl == "auto":
        impl = "hf" if reason else "lean"
    tokenizer = AutoTokenizer.from_pretrained(root, trust_remote_code=False)
    load_dtype = torch.float32
    if impl == "hf" and config.quantization in ("bf16", "fp16"):
        load_dtype = quant.activation_dtype(config.quantization, device)
    model = AutoModelForCausalLM.from_pretrained(
        root, use_safetensors=True, dtype=load_dtype, trust_remote_code=False
    ).eval()
    params = sum(p.numel() for p in model.parameters())
    slots = config.max_batch_size
    runner: LeanCausalLM | HFRunner
    if impl == "lean":
        runner = LeanCausalLM(model, config.quantization, device, slots, max_len)
        eos = eos_ids(model, tokenizer)
        del model
    else:
        model = quant.quantize_hf_model(model.to(device), config.quantization, device)
        runner = HFRunner(model, device, slots, max_len)
        eos = eos_ids(model, tokenizer)
    engine = Engine(
        runner,
        tokenizer,
        SchedulerConfig(
            max_batch_size=config.max_batch_size,
            max_wait_ms=config.max_wait_ms,
            max_queue=config.max_queue,
            max_num_batched_tokens=max(config.max_num_batched_tokens, config.max_batch_size),
            stream_interval=config.stream_interval,
            threads=config.threads,
            seed=config.seed,
            prefix_reuse_min=config.prefix_reuse_min,
        ),
        eos,
    )
    mem = runner.memory_bytes()
    report = LoadReport(
        model=str(root),
        runner=impl,
        device=str(device),
        quantization=config.quantization,
        dtype=str(quant.activation_dtype(config.quantization, device)).replace("torch.", ""),
        max_model_len=max_len,
        parameters=int(params),
        load_seconds=round(time.perf_counter() - t0, 3),
        weight_bytes=mem["weights"],
        kv_cache_bytes=mem["kv_cache_reserved"],
        rss_bytes=_rss_bytes(),
        lean_fallback_reason=reason if impl == "hf" else None,
    )
    if impl == "lean" and config.quantization == "none" and device.type == "cpu":
        report.extra["fp32_kernels"] = quant.fp32_kernels()
    return engine, report


def warm_up(engine: Engine, report: LoadReport | None = None) -> float:
    """Run a lone request and a full batch once, so no request pays for first-use costs."""
    t0 = time.perf_counter()
    vocab = engine.runner.vocab_size
    prompt = [i % vocab for i in range(1, 9)]
    greedy = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    engine.generate([prompt], greedy)
    n = engine.config.max_batch_size
    engine.generate([prompt] * n, greedy)
    sampled = SamplingParams(max_tokens=2, temperature=0.8, top_p=0.9, top_k=20, logprobs=2)
    engine.generate([prompt] * min(n, 2), sampled)
    seconds = time.perf_counter() - t0
    if report is not None:
        report.warmup_seconds = round(seconds, 3)
        report.rss_bytes = _rss_bytes()
    return seconds


def describe(report: LoadReport) -> str:
    return json.dumps(report.as_dict(), sort_keys=True)
