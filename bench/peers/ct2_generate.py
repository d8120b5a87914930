"""CTranslate2 as the engine peer: static batches of `generate_batch`, greedy, N new tokens.

Runs inside its own virtualenv (var/bench-venvs/ctranslate2/, see docs/serving.md), so it
imports nothing of ours. Converts the Hugging Face checkpoint once per precision with
CTranslate2's own converter (what `ct2-transformers-converter --quantization X` does),
then, for each batch size asked, generates every prompt in static batches and prints one
JSON line per batch size: {"compute_type", "batch", "tok_s", "tokens", "seconds"}.

    python bench/peers/ct2_generate.py MODEL_DIR IDS_JSON --compute-type int8 \
        --batches 16,64 --threads 2 --new-tokens 64

IDS_JSON holds the prompts as token id lists (the same ids our engine gets), so both
sides prefill exactly the same tokens.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ctranslate2
from transformers import AutoTokenizer


def converted(model_dir: Path, compute_type: str) -> Path:
    """The model in CTranslate2's format, weights stored at `compute_type` (cached)."""
    out = model_dir.parent / f"{model_dir.name}-ct2-{compute_type}"
    if not (out / "model.bin").exists():
        converter = ctranslate2.converters.TransformersConverter(str(model_dir))
        converter.convert(str(out), quantization=compute_type, force=True)
    return out


def generate(generator: ctranslate2.Generator, prompts: list[list[str]], batch: int,
             new_tokens: int) -> tuple[int, float]:  # fmt: skip
    tokens = 0
    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch):
        results = generator.generate_batch(
            prompts[i : i + batch],
            max_batch_size=batch,
            max_length=new_tokens,
            min_length=new_tokens,
            sampling_topk=1,
            include_prompt_in_result=False,
        )
        tokens += sum(len(r.sequences_ids[0]) for r in results)
    return tokens, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("ids_json", type=Path)
    p.add_argument("--compute-type", default="float32")
    p.add_argument("--batches", default="16,64")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=64)
    args = p.parse_args()
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    ids = json.loads(args.ids_json.read_text())
    prompts = [tok.convert_ids_to_tokens(row) for row in ids]
    path = converted(args.model_dir, args.compute_type)
    generator = ctranslate2.Generator(
        str(path), device="cpu", compute_type=args.compute_type, intra_threads=args.threads,
        inter_threads=1,
    )  # fmt: skip
    for batch in (int(b) for b in args.batches.split(",")):
        generate(generator, prompts[:batch], batch, 8)  # warm-up at this shape
        tokens, seconds = generate(generator, prompts, batch, args.new_tokens)
        row = {"compute_type": args.compute_type, "batch": batch, "tokens": tokens,
               "seconds": round(seconds, 3), "tok_s": round(tokens / seconds, 1)}  # fmt: skip
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
