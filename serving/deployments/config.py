"""A revision's engine flags: their bounds, defaults and the replica command they make.

The flags are those of ``python -m serving.replica`` (see docs/serving.md); a revision
stores them as a dict, validated here, and the controller turns them into the replica
job's argv.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: Quantization modes and where they run (the engine refuses the rest at load).
QUANTIZATION = ("none", "bf16", "fp16", "int8", "int4")
GPU_ONLY = {"fp16": "fp16 has no fast CPU kernels", "int4": "int4 weight-only is GPU-only"}


@dataclass(frozen=True)
class Flag:
    default: Any
    low: float | None = None
    high: float | None = None
    kind: type = int
    nullable: bool = False
    help: str = ""


ENGINE_FLAGS: dict[str, Flag] = {
    "quantization": Flag("none", kind=str, help=" | ".join(QUANTIZATION)),
    "max_batch_size": Flag(16, 1, 512, help="sequences decoded together (KV-cache slots)"),
    "max_wait_ms": Flag(0, 0, 10_000, kind=float, help="how long a lone request waits"),
    "max_queue": Flag(256, 0, 100_000, help="waiting requests per replica before 429"),
    "max_model_len": Flag(None, 16, 131_072, nullable=True, help="prompt + output tokens"),
    "stream_interval": Flag(1, 1, 64, help="streamed tokens per chunk after the first"),
    "request_timeout": Flag(600, 1, 86_400, kind=float, help="seconds, then 504"),
    "prefix_affinity": Flag(
        False,
        kind=bool,
        help="the gateway sends prompts that start alike to the same replica (its free "
        "slots keep their prompts' K/V) while that replica is not much busier than the rest",
    ),
}
RESOURCE_FLAGS: dict[str, Flag] = {
    "gpus_per_replica": Flag(0, 0, 64, help="GPUs per replica (0: CPU slots)"),
    "cpus_per_replica": Flag(1, 1, 256, help="CPU slots (engine threads) of a CPU replica"),
}
AUTOSCALING: dict[str, Flag] = {
    "target_ongoing_requests": Flag(2.0, 0.1, 10_000, kind=float),
    "upscale_delay": Flag(3.0, 0, 3600, kind=float),
    "downscale_delay": Flag(30.0, 0, 86_400, kind=float),
}


def check(flags: dict[str, Flag], values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Field errors of ``values`` against ``flags`` (empty when all is well)."""
    errors: dict[str, str] = {}
    for name, value in values.items():
        flag = flags.get(name)
        key = f"{prefix}{name}"
        if flag is None:
            errors[key] = f"Unknown field. Fields you can set: {', '.join(sorted(flags))}."
            continue
        if value is None:
            if not flag.nullable:
                errors[key] = "This field may not be null."
            continue
        if flag.kind is bool:
            if not isinstance(value, bool):
                errors[key] = "Must be true or false."
            continue
        if flag.kind is str:
            if not isinstance(value, str):
                errors[key] = f"Must be a string ({flag.help})."
            continue
        number_ok = isinstance(value, int | float) and not isinstance(value, bool)
        if flag.kind is int and not (isinstance(value, int) and not isinstance(value, bool)):
            errors[key] = (
                f"Must be an integer ({flag.help})." if flag.help else "Must be an integer."
            )
            continue
        if not number_ok or not math.isfinite(value):
            errors[key] = "Must be a number."
            continue
        if (flag.low is not None and value < flag.low) or (
            flag.high is not None and value > flag.high
        ):
            errors[key] = f"Must be between {flag.low:g} and {flag.high:g}; got {value:g}."
    return errors


def engine_errors(config: dict[str, Any], gpus: int) -> dict[str, str]:
    """Field errors of a revision's engine flags on a replica with ``gpus`` GPUs."""
    errors = check(ENGINE_FLAGS, config)
    mode = config.get("quantization", "none")
    if "quantization" not in errors and mode not in QUANTIZATION:
        errors["quantization"] = f"{mode!r} is not a mode; use one of {', '.join(QUANTIZATION)}."
    elif not gpus and mode in GPU_ONLY:
        errors["quantization"] = (
            f"{mode} needs a GPU replica ({GPU_ONLY[mode]}); on CPU use none, bf16 or int8, "
            "or set gpus_per_replica."
        )
    return errors


def with_defaults(flags: dict[str, Flag], values: dict[str, Any]) -> dict[str, Any]:
    out = {name: flag.default for name, flag in flags.items()}
    out.update(values)
    return out


def replica_args(config: dict[str, Any], model_path: str, served_name: str, grace: float) -> list:
    """The argv of ``python -m serving.replica`` for a revision (after the module name)."""
    gpus = int(config.get("gpus_per_replica") or 0)
    timeout = float(config["request_timeout"])
    args = [
        "--model", model_path,
        "--served-model-name", served_name,
        "--port", "0",
        "--device", "auto" if gpus else "cpu",
        "--quantization", str(config["quantization"]),
        "--max-batch-size", str(config["max_batch_size"]),
        "--max-wait-ms", f"{float(config['max_wait_ms']):g}",
        "--max-queue", str(config["max_queue"]),
        "--stream-interval", str(config["stream_interval"]),
        "--request-timeout", f"{timeout:g}",
        # Drain within the stop grace period, before the worker's SIGKILL.
        "--drain-timeout", f"{max(1.0, min(timeout, grace - 5)):g}",
        "--log-level", "warning",
    ]  # fmt: skip
    if not gpus:
        args += ["--threads", str(config.get("cpus_per_replica") or 1)]
    if config.get("max_model_len"):
        args += ["--max-model-len", str(config["max_model_len"])]
    return args
