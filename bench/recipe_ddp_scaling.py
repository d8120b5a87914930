"""DDP scaling on CPU: 2 gloo processes vs 1 process, each with one thread.

Weak scaling: every process trains the same micro-batch, so 2 processes move twice the
tokens per step; efficiency = tokens/s(2 processes) / (2 x tokens/s(1 process)). Both
runs are the recipe itself (``torchrun --nproc_per_node 2`` vs plain ``python -m``),
alternated for ``--rounds`` rounds; medians are reported. A 1-process run with 2 threads
is shown for reference (the other way to use the same two cores).

    .venv/bin/python bench/recipe_ddp_scaling.py
"""

from __future__ import annotations

import argparse

from recipe_common import machine_line, median, run_recipe, table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seq-len", default="256")
    p.add_argument("--micro-batch", default="8")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    flags = ["--preset", a.preset, "--seq-len", a.seq_len, "--micro-batch", a.micro_batch,
             "--max-steps", str(a.steps), "--log-every", "5"]  # fmt: skip
    one, two, one2 = [], [], []
    for r in range(a.rounds):
        one.append(run_recipe(flags, a.warmup, OMP_NUM_THREADS="1")["tokens_per_s"])
        two.append(run_recipe(flags, a.warmup, nproc=2, OMP_NUM_THREADS="1")["tokens_per_s"])
        one2.append(run_recipe(flags, a.warmup, OMP_NUM_THREADS="2")["tokens_per_s"])
        print(f"round {r + 1}: 1 proc {one[-1]:,.0f}, 2 procs {two[-1]:,.0f}, "
              f"1 proc x 2 threads {one2[-1]:,.0f} tok/s", flush=True)  # fmt: skip
    t1, t2, t12 = median(one), median(two), median(one2)
    print()
    print(machine_line())
    print(f"flags: {' '.join(flags)}; {a.warmup} warm-up steps excluded; {a.rounds} rounds")
    print(
        table(
            ["run", "tokens/s (median)", "vs 1 process"],
            [
                ["1 process, 1 thread", f"{t1:,.0f}", "1.00"],
                ["2 processes (DDP, gloo), 1 thread each", f"{t2:,.0f}", f"{t2 / t1:.2f}"],
                ["1 process, 2 threads", f"{t12:,.0f}", f"{t12 / t1:.2f}"],
            ],
        )
    )
    print(f"DDP scaling efficiency (2 procs): {t2 / (2 * t1):.2f}")


if __name__ == "__main__":
    main()
