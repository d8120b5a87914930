"""Recipe overhead: the recipe's tokens/s vs a minimal hand-written loop, same run.

Both train the same model (same flags, same vocabulary), batch and precision, each in its
own process, alternated A/B for ``--rounds`` rounds; the table reports the median of each
and their ratio (target >= 0.95: the recipe's data pipeline, metrics, stop checks and
bookkeeping must not cost speed).

    .venv/bin/python bench/recipe_throughput.py                       # CPU, tiny preset
    .venv/bin/python bench/recipe_throughput.py --preset 125m --precision bf16   # a GPU
"""

from __future__ import annotations

import argparse

from recipe_common import machine_line, median, run_baseline, run_recipe, table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--seq-len", default="256")
    p.add_argument("--micro-batch", default="8")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--threads",
        default="1",
        help="OMP_NUM_THREADS for both (1: a shared 2-core box punishes 2 threads badly)",
    )
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more recipe flags")
    a = p.parse_args()
    flags = ["--preset", a.preset, "--precision", a.precision, "--seq-len", a.seq_len,
             "--micro-batch", a.micro_batch, "--max-steps", str(a.steps), "--log-every", "5",
             *a.extra]  # fmt: skip
    recipe, base = [], []
    env = {"OMP_NUM_THREADS": a.threads} if a.threads != "auto" else {}
    for r in range(a.rounds):  # A/B then B/A, so slow drifts of the machine cancel out
        if r % 2 == 0:
            base.append(run_baseline(flags, a.steps, a.warmup, **env))
            recipe.append(run_recipe(flags, a.warmup, **env))
        else:
            recipe.append(run_recipe(flags, a.warmup, **env))
            base.append(run_baseline(flags, a.steps, a.warmup, **env))
        print(
            f"round {r + 1}: baseline {base[-1]['tokens_per_s']:,.0f} tok/s, "
            f"recipe {recipe[-1]['tokens_per_s']:,.0f} tok/s",
            flush=True,
        )
    b = median([x["tokens_per_s"] for x in base])
    rc = median([x["tokens_per_s"] for x in recipe])
    paired = median(
        [r["tokens_per_s"] / x["tokens_per_s"] for r, x in zip(recipe, base, strict=True)]
    )
    print()
    print(machine_line())
    print(
        f"flags: {' '.join(flags)}; {a.warmup} warm-up steps excluded; {a.rounds} rounds; "
        f"OMP_NUM_THREADS={a.threads}"
    )
    print(
        table(
            ["loop", "tokens/s (median)", "peak mem MB", "params"],
            [
                [
                    "hand-written",
                    f"{b:,.0f}",
                    f"{median([x['peak_memory_mb'] for x in base]):.0f}",
                    f"{base[0]['parameters']:,.0f}",
                ],
                [
                    "recipe",
                    f"{rc:,.0f}",
                    f"{median([x['peak_memory_mb'] for x in recipe]):.0f}",
                    f"{recipe[0]['parameters']:,.0f}",
                ],
            ],
        )
    )
    print(f"ratio of medians recipe / hand-written: {rc / b:.3f} (target >= 0.95)")
    print(f"median of per-round ratios (runs back to back): {paired:.3f}")


if __name__ == "__main__":
    main()
