"""GPU check for a lent machine: bf16 / int8 / int4 serving of a ~125M Llama, one table.

For each mode the device can run it loads the engine on `cuda:0` and measures: load
time, GPU memory per replica (weights + KV cache, peak allocated), time to first token
of a lone request, and generated tokens/s at full batch (256 requests of 128-token
prompts, 128 new tokens, greedy). bf16 through transformers `generate` at batch 64 is the
baseline measured in the same run. int8/int4 need torchao; a mode that cannot run is
reported as skipped with the reason. No network is needed: the model is random-init and
its tokenizer is trained locally.

`python bench/serving_gpu_check.py [--out DIR]` (prints a table; `--json` to save it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving.engine import EngineConfig, SamplingParams, load_engine, warm_up
from serving.engine.engine import CollectingSink
from serving.engine.quant import QuantizationError, resolve_device, validate
from serving.engine.tiny import build_tiny_llama

SHAPE = dict(  # ~125M parameters (GPT-2-small sized Llama)
    hidden_size=768,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_key_value_heads=12,
    vocab_size=32000,
    max_position_embeddings=2048,
)


def hf_baseline(model_dir: Path, prompts: list[list[int]], batch: int, new: int) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, use_safetensors=True, dtype=torch.bfloat16
    ).to("cuda:0")
    model.eval()
    x = torch.tensor(prompts[:batch], device="cuda:0")
    with torch.inference_mode():
        model.generate(x[:2], max_new_tokens=4, do_sample=False)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(x, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        torch.cuda.synchronize()
    del model
    torch.cuda.empty_cache()
    return (out.shape[1] - x.shape[1]) * out.shape[0] / (time.perf_counter() - t0)


def measure(model_dir: Path, mode: str, prompts: list[list[int]], batch: int, new: int) -> dict:
    try:
        validate(mode, resolve_device("cuda:0"))
    except QuantizationError as exc:
        return {"mode": mode, "skipped": str(exc)}
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    engine, report = load_engine(
        EngineConfig(
            model=str(model_dir),
            device="cuda:0",
            quantization=mode,
            max_batch_size=batch,
            max_model_len=512,
            max_num_batched_tokens=2048,
        )
    )
    engine.start()
    warm_up(engine, report)
    greedy = SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True)
    ttfts = []
    for p in prompts[:5]:
        got = []

        class Sink:
            loop = None

            def put(self, out, got=got):
                if not got:
                    got.append(time.perf_counter())
                if out.finished:
                    got.append(None)

        t0 = time.perf_counter()
        engine.submit(p, SamplingParams(max_tokens=1, temperature=0.0), Sink())
        while len(got) < 2:
            time.sleep(0.0005)
        ttfts.append(got[0] - t0)
    t0 = time.perf_counter()
    outs = engine.generate(prompts, greedy)
    tps = sum(o.completion_tokens for o in outs) / (time.perf_counter() - t0)
    sink = CollectingSink()
    engine.submit(prompts[0], greedy, sink)
    sink.result()
    row = {
        "mode": mode,
        "runner": report.runner,
        "load_s": report.load_seconds,
        "gpu_mem_MB": (torch.cuda.max_memory_allocated() - before) // 2**20,
        "weights_MB": report.weight_bytes // 2**20,
        "kv_cache_MB": report.kv_cache_bytes // 2**20,
        "ttft_ms": round(1000 * sorted(ttfts)[len(ttfts) // 2], 2),
        "tok_s": round(tps, 1),
    }
    engine.shutdown(timeout=30)
    del engine
    torch.cuda.empty_cache()
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="var/serving-bench/gpu-125m")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--json")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU visible: this check runs on a lent GPU machine")
        sys.exit(1)
    model_dir = Path(args.out)
    if not (model_dir / "model.safetensors").exists():
        build_tiny_llama(model_dir, "reference", corpus_chars=400_000, **SHAPE)
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(10, vocab, (args.requests, 128), generator=g).tolist()
    print(f"device {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    base = hf_baseline(model_dir, prompts, args.batch, args.new_tokens)
    print(f"baseline HF generate bf16 batch {args.batch}: {base:.0f} tok/s", flush=True)
    rows = []
    for mode in ("bf16", "int8", "int4", "none"):
        row = measure(model_dir, mode, prompts, args.batch, args.new_tokens)
        if "tok_s" in row:
            row["x_hf_bf16"] = round(row["tok_s"] / base, 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    cols = ["mode", "tok_s", "x_hf_bf16", "ttft_ms", "gpu_mem_MB", "weights_MB", "kv_cache_MB"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r.get(c, r.get("skipped", ""))) for c in cols))
    if args.json:
        Path(args.json).write_text(json.dumps({"baseline": base, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
