"""Peak memory with and without activation checkpointing (same model, batch, steps).

On CPU the figure is the process's peak RSS (what the recipe reports as
``peak_memory_mb``); on a GPU it is ``torch.cuda.max_memory_allocated``. The model is
deep and narrow-vocabulary by default so that activations, not logits or weights,
dominate; the throughput cost of recomputation is shown too.

    .venv/bin/python bench/recipe_memory.py
"""

from __future__ import annotations

import argparse

from recipe_common import machine_line, run_recipe, table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--seq-len", default="1024")
    p.add_argument("--micro-batch", default="8")
    p.add_argument("--vocab-size", default="2048")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more recipe flags")
    a = p.parse_args()
    flags = ["--preset", a.preset, "--seq-len", a.seq_len, "--micro-batch", a.micro_batch,
             "--vocab-size", a.vocab_size, "--max-steps", str(a.steps), "--log-every", "1",
             "--warmup-steps", "1", *a.extra]  # fmt: skip
    off = run_recipe(flags, a.warmup)
    print(f"without: {off['peak_memory_mb']:.0f} MB", flush=True)
    on = run_recipe([*flags, "--activation-checkpointing"], a.warmup)
    print(f"with: {on['peak_memory_mb']:.0f} MB", flush=True)
    print()
    print(machine_line())
    print(f"flags: {' '.join(flags)}")
    print(
        table(
            ["activation checkpointing", "peak memory MB", "tokens/s", "params"],
            [
                [
                    "off",
                    f"{off['peak_memory_mb']:.0f}",
                    f"{off['tokens_per_s']:,.0f}",
                    f"{off['parameters']:,.0f}",
                ],
                [
                    "on",
                    f"{on['peak_memory_mb']:.0f}",
                    f"{on['tokens_per_s']:,.0f}",
                    f"{on['parameters']:,.0f}",
                ],
            ],
        )
    )
    saved = off["peak_memory_mb"] - on["peak_memory_mb"]
    print(
        f"checkpointing saves {saved:.0f} MB ({saved / off['peak_memory_mb']:.0%} of the peak) "
        f"at {on['tokens_per_s'] / off['tokens_per_s']:.2f}x the throughput"
    )


if __name__ == "__main__":
    main()
