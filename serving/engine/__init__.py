"""The inference engine: quantized models, continuous batching, a slot KV cache, streaming.

Owns everything between a Hugging Face model directory and a stream of tokens; it knows
nothing of HTTP or Django. Typical use::

    from serving.engine import EngineConfig, SamplingParams, load_engine, warm_up
    engine, report = load_engine(EngineConfig(model="path/to/hf-dir", quantization="int8"))
    engine.start()
    warm_up(engine, report)
    [out] = engine.generate([engine.tokenizer("Hello").input_ids], SamplingParams(max_tokens=8))

Modules: `loader` (config, load, warm-up), `engine` (admission, scheduler, step loop),
`lean` (fast Llama-family forward over slots), `hf_runner` (generic fallback), `quant`
(modes and Linear kernels), `sampling`, `sequence` (per-request state, detokenizing,
stop strings), `runner` (the scheduler/runner contract), `tiny` (test models).
"""

from serving.engine.engine import (
    CollectingSink,
    Engine,
    EngineClosed,
    EngineStats,
    QueueFull,
    SchedulerConfig,
)
from serving.engine.loader import (
    EngineConfig,
    LoadReport,
    ModelLoadError,
    load_engine,
    warm_up,
)
from serving.engine.quant import MODES, QuantizationError
from serving.engine.sampling import InvalidParam, SamplingParams, TokenLogprob
from serving.engine.sequence import RequestOutput

__all__ = [
    "MODES",
    "CollectingSink",
    "Engine",
    "EngineClosed",
    "EngineConfig",
    "EngineStats",
    "InvalidParam",
    "LoadReport",
    "ModelLoadError",
    "QuantizationError",
    "QueueFull",
    "RequestOutput",
    "SamplingParams",
    "SchedulerConfig",
    "TokenLogprob",
    "load_engine",
    "warm_up",
]
