"""Quantization modes: which ones a device can run, and the fast Linear kernel for each.

Owns the mapping from a mode name (`none`, `bf16`, `fp16`, `int8`, `int4`) and a device to
(a) a clear refusal when the device cannot run the mode, (b) the activation dtype and
(c) a `Linear`-like callable built from an fp32 weight:

| mode | CPU | GPU |
|---|---|---|
| none | fp32, oneDNN- or MKL-packed weights, whichever runs faster here | fp32 |
| bf16 | oneDNN-packed bf16 weights (AVX512-BF16 / AMX); refused without them | bf16 |
| fp16 | refused (no fast fp16 GEMM on CPU) | fp16 |
| int8 | dynamic int8 Linear (fbgemm) | int8 weight-only (torchao), bf16 activations |
| int4 | refused | int4 weight-only (torchao), bf16 activations |

Packed kernels are private torch ops; each one is probed once and falls back to
`F.linear` when it is missing or gives a different answer. For fp32 the kernel is
chosen by timing: which one wins depends on the CPU (measured: MKL's packed GEMM is
25-45% faster than `F.linear` on an Intel Sapphire Rapids VM but no faster on an AMD
Zen 5 VM, where oneDNN's packed fp32 GEMM is 2.5-4x faster than either).
"""

from __future__ import annotations

import sys
import threading
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("none", "bf16", "fp16", "int8", "int4")


class QuantizationError(ValueError):
    """A mode the chosen device cannot run; the message says what to use instead."""


def resolve_device(device: str) -> torch.device:
    """`auto` -> the first GPU if there is one, else CPU; validates `cuda:N`."""
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise QuantizationError(f"--device {device!r} is not a device name: {exc}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise QuantizationError(
                f"--device {device}: no CUDA GPU is visible (torch {torch.__version__}); "
                "use --device cpu"
            )
        index = dev.index or 0
        if index >= torch.cuda.device_count():
            raise QuantizationError(
                f"--device {device}: only {torch.cuda.device_count()} GPU(s) are visible"
            )
        return torch.device("cuda", index)
    if dev.type != "cpu":
        raise QuantizationError(f"--device {device!r}: only cpu, cuda[:N] and auto are supported")
    return dev


def cpu_has_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    cpu = getattr(torch, "cpu", None)
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in probes)


def _has_torchao() -> bool:
    try:
        import torchao  # noqa: F401
    except ImportError:
        return False
    return True


_DEFER_LOCK = threading.Lock()


def defer_transformers_torchao() -> None:
    """Stop transformers from importing torchao before a mode that uses it runs.

    transformers' `quantizers.quantizer_torchao` (imported with `modeling_utils`, that is
    by every `from_pretrained` / `save_pretrained`) imports torchao at module level
    whenever it is installed. That costs start-up time and fills every CPU log with
    torchao's "Failed to load ..._C_mxfp8...so" / "Detected no triton" warnings, though
    only the GPU int8/int4 modes (`quantize_module_torchao`) use torchao. So that module is
    imported once here while transformers reports torchao as missing, and its one
    module-level torchao name gets a stand-in that imports torchao on first call. Nothing
    else changes: the real availability check is restored everywhere before this returns.
    A no-op once torchao or that module is imported. Call it before transformers' model
    code is first imported.
    """
    name = "transformers.quantizers.quantizer_torchao"
    with _DEFER_LOCK:
        if "torchao" in sys.modules or name in sys.modules:
            return
        import transformers.utils as hf_utils
        import transformers.utils.quantization_config  # noqa: F401  (binds the real check)

        real = hf_utils.is_torchao_available

        def unavailable(*args: object, **kwargs: object) -> bool:
            return False

        hf_utils.is_torchao_available = unavailable
        try:
            import transformers.quantizers.quantizer_torchao as hf_torchao
        except ImportError:  # another transformers layout: leave it to transformers
            return
        finally:
            hf_utils.is_torchao_available = real
            for module in list(sys.modules.values()):  # anything bound during the import
                if getattr(module, "is_torchao_available", None) is unavailable:
                    module.is_torchao_available = real
        if real() and not hasattr(hf_torchao, "flatten_tensor_state_dict"):

            def flatten_tensor_state_dict(*args: object, **kwargs: object):
                from torchao.prototype.safetensors.safetensors_support import (
                    flatten_tensor_state_dict as flatten,
                )

                return flatten(*args, **kwargs)

            hf_torchao.flatten_tensor_state_dict = flatten_tensor_state_dict


def validate(mode: str, device: torch.device) -> None:
    """Raise QuantizationError unless `device` can run `mode`."""
    if mode not in MODES:
        raise QuantizationError(f"--quantization {mode!r}: choose one of {', '.join(MODES)}")
    gpu = device.type == "cuda"
    if mode == "fp16" and not gpu:
        raise QuantizationError(
            "--quantization fp16 needs a GPU (CPUs have no fast fp16 matmul); "
            "on CPU use bf16 (AVX512-BF16/AMX CPUs) or int8"
        )
    if mode == "bf16":
        if gpu and not torch.cuda.is_bf16_supported():
            raise QuantizationError("--quantization bf16: this GPU has no bf16; use fp16")
        if not gpu and not cpu_has_bf16():
            raise QuantizationError(
                "--quantization bf16: this CPU has neither AVX512-BF16 nor AMX, so bf16 "
                "would be emulated and slow; use none or int8"
            )
    if mode == "int8" and not gpu:
        engines = torch.backends.quantized.supported_engines
        if "fbgemm" not in engines and "x86" not in engines:
            raise QuantizationError(
                f"--quantization int8 on CPU needs the fbgemm engine; this torch has {engines}"
            )
    if mode == "int4" and not gpu:
        raise QuantizationError(
            "--quantization int4 is GPU-only (torchao int4 weight-only); on CPU use int8"
        )
    if mode in ("int8", "int4") and gpu and not _has_torchao():
        raise QuantizationError(
            f"--quantization {mode} on a GPU needs torchao (pip install torchao)"
        )


def activation_dtype(mode: str, device: torch.device) -> torch.dtype:
    """The dtype activations (and the KV cache) use under `mode` on `device`."""
    if mode == "bf16" or (device.type == "cuda" and mode in ("int8", "int4")):
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    return torch.float32


class PlainLinear(nn.Module):
    """`F.linear` with the weight kept in the activation dtype."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class MklPackedLinear(nn.Module):
    """fp32 Linear on MKL-packed weights: 25-45% faster than `F.linear` at 4-128 rows.

    MKL's packed GEMM only runs when the row count equals the size the weight was
    packed for, so the weight is packed for the full decode batch (`max_batch_size`, the
    row count of every step once the replica is busy); an input a little smaller is
    zero-padded up to it, any other size runs on the plain weight. The packed copy
    doubles the memory of fp32 weights; `make_linear(pack=False)` skips it.
    """

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, buckets: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.weight = weight
        self.bias = bias
        self.packs = {b: torch.ops.mkl._mkl_reorder_linear_weight(weight, b) for b in buckets}
        self.pad_to = {}
        for b in sorted(buckets, reverse=True):
            for rows in range(max(1, (3 * b + 3) // 4), b + 1):
                self.pad_to[rows] = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        bucket = self.pad_to.get(rows)
        if bucket is None:
            return F.linear(x, self.weight, self.bias)
        if bucket != rows:
            x = torch.cat([x, x.new_zeros(bucket - rows, x.shape[1])])
            out = torch.ops.mkl._mkl_linear(x, self.packs[bucket], self.weight, self.bias, bucket)
            return out[:rows]
        return torch.ops.mkl._mkl_linear(x, self.packs[rows], self.weight, self.bias, rows)


class OneDnnPackedLinear(nn.Module):
    """Linear on oneDNN-packed weights: bf16 (AMX / AVX512-BF16 kernels) or fp32.

    Only the packed copy is kept; any row count runs on it (the hint tunes the layout).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, batch_hint: int) -> None:
        super().__init__()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, batch_hint)
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def mkl_buckets(max_batch: int) -> tuple[int, ...]:
    """Row counts to pack fp32 weights for: the full decode batch (one extra weight copy)."""
    return (max_batch,)


def _agrees(
    fast: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, rows: tuple[int, ...]
) -> bool:
    tol = 1e-4 if weight.dtype == torch.float32 else 5e-2
    for n in rows:
        x = torch.randn(n, weight.shape[1], dtype=weight.dtype)
        with torch.inference_mode():
            ref = F.linear(x, weight, bias).float()
            got = fast(x).float()
        scale = max(1.0, ref.abs().max().item())
        if got.shape != ref.shape or not torch.allclose(got, ref, atol=tol * scale, rtol=tol):
            return False
    return True


_PROBED: dict[str, bool] = {}


def _packed_or_plain(
    kind: str,
    make: Callable[[], nn.Module],
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    rows: tuple[int, ...],
) -> nn.Module:
    if _PROBED.get(kind) is False:
        return PlainLinear(weight, bias)
    try:
        layer = make()
        if kind not in _PROBED:
            _PROBED[kind] = _agrees(layer, weight, bias, rows)
        if _PROBED[kind]:
            return layer
    except (RuntimeError, AttributeError, NotImplementedError):
        _PROBED[kind] = False
    return PlainLinear(weight, bias)


def make_linear(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mode: str,
    device: torch.device,
    batch_hint: int = 64,
    pack: bool = True,
) -> nn.Module:
    """Build the fastest Linear for `mode` on `device` from an fp32 `[out, in]` weight.

    `batch_hint` is the row count the engine runs most often (its max batch size);
    `pack=False` rules out kernels that keep a second copy of the weight (MKL packing).
    """
    weight = weight.detach().float().contiguous()
    bias = None if bias is None else bias.detach().float().contiguous()
    if device.type == "cuda":
        return _make_gpu_linear(weight, bias, mode, device)
    if mode == "int8":
        lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        lin.weight.data.copy_(weight)
        if bias is not None:
            lin.bias.data.copy_(bias)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantized = torch.ao.quantization.quantize_dynamic(
                nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8
            )
        return quantized[0]
    if mode == "bf16":
        w16 = weight.to(torch.bfloat16)
        b16 = None if bias is None else bias.to(torch.bfloat16)
        return _packed_or_plain(
            "onednn-bf16",
            lambda: OneDnnPackedLinear(w16, b16, batch_hint),
            w16,
            b16,
            (3, batch_hint),
        )
    rows = (3, batch_hint, max(1, batch_hint - 1))
    candidates: dict[str, nn.Module] = {"plain": PlainLinear(weight, bias)}
    if torch.backends.mkldnn.is_available():
        candidates["onednn-fp32"] = _packed_or_plain(
            "onednn-fp32", lambda: OneDnnPackedLinear(weight, bias, batch_hint), weight, bias, rows
        )
    if pack and torch.backends.mkl.is_available():  # keeps a second copy of the weight
        candidates["mkl-fp32"] = _packed_or_plain(
            "mkl-fp32",
            lambda: MklPackedLinear(weight, bias, mkl_buckets(batch_hint)),
            weight,
            bias,
            rows,
        )
    return _fastest(candidates, weight, batch_hint)


_FASTEST: dict[tuple[int, int, int], str] = {}


def _fastest(candidates: dict[str, nn.Module], weight: torch.Tensor, rows: int) -> nn.Module:
    """The candidate that runs `rows` rows fastest, timed once per (shape, rows).

    A candidate whose probe failed came back as a PlainLinear and is timed as such.
    """
    key = (weight.shape[0], weight.shape[1], rows)
    kind = _FASTEST.get(key)
    if kind is None or kind not in candidates:
        x = torch.randn(rows, weight.shape[1])
        best: dict[str, float] = {}
        with torch.inference_mode():
            for _ in range(3):  # interleaved rounds, best of each: robust to noise
                for name, module in candidates.items():
                    module(x)
                    t0 = time.perf_counter()
                    for _ in range(5):
                        module(x)
                    elapsed = time.perf_counter() - t0
                    best[name] = min(best.get(name, elapsed), elapsed)
        kind = min(best, key=best.__getitem__)
        _FASTEST[key] = kind
    return candidates[kind]


def fp32_kernels() -> dict[str, str]:
    """The fp32 kernel chosen for each `outxin@rows` shape so far (for load reports)."""
    return {f"{o}x{i}@{r}": kind for (o, i, r), kind in sorted(_FASTEST.items())}


def _make_gpu_linear(
    weight: torch.Tensor, bias: torch.Tensor | None, mode: str, device: torch.device
) -> nn.Module:
    dtype = activation_dtype(mode, device)
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=device)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    lin = lin.to(dtype).requires_grad_(False)
    if mode in ("int8", "int4"):
        quantize_module_torchao(lin, mode)
    return lin


def linear_bytes(module: nn.Module) -> int:
    """Bytes a Linear built by make_linear holds (plain, packed and quantized copies)."""
    tensors: dict[int, torch.Tensor] = {}
    for t in [*module.parameters(), *module.buffers()]:
        tensors[id(t)] = t
    for name in ("weight", "bias", "packed"):
        t = getattr(module, name, None)
        if isinstance(t, torch.Tensor):
            tensors[id(t)] = t
    total = 0
    weight = getattr(module, "weight", None)
    for _ in getattr(module, "packs", {}).values():
        # MKL reports its packed buffer's reservation; about the dense size is touched.
        total += weight.numel() * weight.element_size()
    for t in tensors.values():
        try:
            total += t.numel() * t.element_size()
        except RuntimeError:  # opaque mkldnn tensors: count as the dense size
            total += t.numel() * 4
    packed_params = getattr(module, "_packed_params", None)
    if packed_params is not None:  # dynamic int8: int8 weight + fp32 bias
        weight, bias = packed_params._weight_bias()
        total += weight.numel() + (0 if bias is None else bias.numel() * 4)
    return total


def quantize_module_torchao(module: nn.Module, mode: str) -> nn.Module:
    """GPU weight-only int8/int4 on every nn.Linear inside `module` (in place)."""
    from torchao.quantization import quantize_

    if mode == "int8":
        from torchao.quantization import Int8WeightOnlyConfig

        config = Int8WeightOnlyConfig()
    else:
        from torchao.quantization import Int4WeightOnlyConfig

        config = Int4WeightOnlyConfig(group_size=128)
    quantize_(module, config)
    return module


def quantize_hf_model(model: nn.Module, mode: str, device: torch.device) -> nn.Module:
    """Apply `mode` to a whole transformers model (the generic, non-lean path)."""
    if mode == "none":
        return model.float()
    if mode in ("bf16", "fp16"):
        return model.to(activation_dtype(mode, device))
    if device.type == "cuda":
        model = model.to(torch.bfloat16)
        return quantize_module_torchao(model, mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
