"""GPU check of the training recipe, for a lent H100 (or any CUDA GPU).

Trains the ~125M-parameter preset in bf16 on the bundled corpus and prints one table:

- a minimal hand-written loop (the baseline, same model, batch and precision),
- the recipe as a plain process (its overhead vs the baseline: target ratio >= 0.95),
- the recipe under ``torchrun --nproc_per_node 1``: DDP over NCCL (world size 1),
- the same with ``--strategy fsdp`` (FSDP2 over NCCL, world size 1),
- DDP with ``--activation-checkpointing`` (memory vs speed) and, with ``--compile``,
  DDP with ``torch.compile`` per decoder layer.

Columns: tokens/s, step time, MFU (PaLM FLOP count over the GPU's dense bf16 peak), peak
CUDA memory, ratio to the baseline. Each run is a fresh process; warm-up steps are
excluded. About 3-4 minutes on an H100 (most of it process start-up).

    python bench/gpu_check_training.py                 # on the GPU machine
    python bench/gpu_check_training.py --dry-run       # print the commands only
    python bench/gpu_check_training.py --cpu-smoke     # the whole script, tiny, on CPU
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from typing import Any

from recipe_common import recipe_argv, run_baseline, run_recipe, table


def runs(a: argparse.Namespace, cache: str) -> list[tuple[str, str, list[str], int]]:
    """(label, kind, flags, nproc) for every row; kind is 'baseline' or 'recipe'."""
    if a.cpu_smoke:
        model = [
            "--preset",
            "tiny",
            "--seq-len",
            "64",
            "--micro-batch",
            "2",
            "--vocab-size",
            "1024",
            "--precision",
            "bf16",
            "--device",
            "cpu",
        ]
    else:
        model = [
            "--preset",
            a.preset,
            "--seq-len",
            str(a.seq_len),
            "--micro-batch",
            str(a.micro_batch),
            "--precision",
            a.precision,
            "--device",
            "cuda",
        ]
    common = [*model, "--max-steps", str(a.steps), "--log-every", "5", "--cache-dir", cache]
    rows = [
        ("hand-written loop", "baseline", common, 0),
        ("recipe, 1 process", "recipe", common, 0),
        ("recipe, DDP x1 (torchrun)", "recipe", common, 1),
        ("recipe, FSDP2 x1 (torchrun)", "recipe", [*common, "--strategy", "fsdp"], 1),
        ("recipe, DDP x1 + act. ckpt", "recipe", [*common, "--activation-checkpointing"], 1),
    ]
    if a.compile:
        rows.append(("recipe, DDP x1 + compile", "recipe", [*common, "--compile"], 1))
    return rows


def fmt_row(label: str, r: dict[str, Any] | None, base: float | None, err: str = "") -> list:
    if r is None:
        return [label, "FAILED", "", "", "", "", err[:60]]
    ratio = f"{r['tokens_per_s'] / base:.3f}" if base else "-"
    mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
    return [
        label,
        f"{r['tokens_per_s']:,.0f}",
        f"{r['step_time_s'] * 1000:.1f}",
        mfu,
        f"{r['peak_memory_mb'] / 1024:.2f}",
        ratio,
        "",
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="125m")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--compile", action="store_true", help="add a torch.compile row")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny model on CPU (script check)")
    p.add_argument("--json", help="also write the results to this file")
    a = p.parse_args()
    if a.cpu_smoke:
        a.steps, a.warmup = min(a.steps, 10), min(a.warmup, 5)

    import torch

    if not a.cpu_smoke and not a.dry_run and not torch.cuda.is_available():
        print("no CUDA device: use --cpu-smoke or --dry-run here", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')} | {device} | torch {torch.__version__} | "
        f"CUDA {torch.version.cuda} | python {platform.python_version()}"
    )

    results: list[dict[str, Any]] = []
    rows: list[list] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as cache:
        base_tps: float | None = None
        for label, kind, flags, nproc in runs(a, cache):
            if a.dry_run:
                argv = recipe_argv(flags, nproc) if kind == "recipe" else ["baseline", *flags]
                print(f"{label}: {' '.join(argv)}")
                continue
            print(f"running: {label} ...", flush=True)
            started = time.time()
            try:
                if kind == "baseline":
                    r = run_baseline(flags, a.steps, a.warmup, timeout=900)
                    base_tps = r["tokens_per_s"]
                else:
                    r = run_recipe(flags, a.warmup, nproc=nproc, timeout=900)
            except Exception as exc:  # keep going: one failed row must not hide the rest
                print(f"  failed: {exc}", flush=True)
                rows.append(fmt_row(label, None, None, str(exc).splitlines()[0]))
                results.append({"label": label, "error": str(exc)[-2000:]})
                continue
            print(f"  {r['tokens_per_s']:,.0f} tok/s in {time.time() - started:.0f} s", flush=True)
            rows.append(fmt_row(label, r, base_tps))
            results.append({"label": label, **r})
    if a.dry_run:
        return 0
    print()
    shape = (
        "tiny preset, micro-batch 2 x seq 64 (cpu smoke)"
        if a.cpu_smoke
        else f"preset {a.preset}, micro-batch {a.micro_batch} x seq {a.seq_len}"
    )
    print(f"{shape}, {a.precision}, {a.steps} steps ({a.warmup} warm-up excluded)")
    print(table(["run", "tokens/s", "step ms", "MFU", "peak GB", "vs loop", "note"], rows))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
