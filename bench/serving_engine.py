"""Engine benchmarks in-process: the physical limit the replica is measured against.

On the reference model (see serving_common.py), one run measures, side by side:

* baseline: transformers `model.generate` fp32 at batch 1 and 16 (as in ANCHORS.md);
* the engine at full batch for each quantization mode the CPU can run (tokens/s);
* scheduling: continuous batching vs one request at a time vs static batching (wait
  for a full batch, run it to its end), on equal and on mixed output lengths;
* quality: perplexity, top-1 agreement and KL of each mode against fp32 on held-out
  text, on the reference model and on a briefly trained small model;
* load time and resident memory per mode;
* the peer, CTranslate2 (its own venv, var/bench-venvs/ctranslate2, see docs/serving.md):
  `generate_batch` on the same prompt ids in static batches of 16 and 64, fp32 and int8,
  2 threads, against our engine's static batches of the same sizes (`--peers ''` skips).

Every figure is printed with its ratio to the baseline measured in the same run.
`python bench/serving_engine.py [--modes none,bf16,int8] [--peers ctranslate2] [--json OUT]`.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.serving_common import (
    GEN_TOKENS,
    ROOT,
    VAR,
    CpuMeter,
    in_thread,
    machine_load,
    make_prompts,
    print_table,
    reference_model,
    wait_quiet,
)
from serving.engine import EngineConfig, SamplingParams, load_engine, quant, warm_up
from serving.engine.engine import CollectingSink
from serving.engine.quality import compare
from serving.engine.tiny import build_tiny_llama, corpus_text


def hf_generate_baseline(model_dir: Path, prompts: list[str], batch: int) -> float:
    """tok/s of transformers generate, fp32, greedy, 64 new tokens, `batch` at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True).eval()
    tokens = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(prompts), batch):
            enc = tok(prompts[i : i + batch], return_tensors="pt", padding=True)
            out = model.generate(
                **enc,
                max_new_tokens=GEN_TOKENS,
                min_new_tokens=GEN_TOKENS,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
            tokens += (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
    return tokens / (time.perf_counter() - t0)


def _engine(model_dir: Path, mode: str, batch: int, threads: int | None):
    engine, report = load_engine(
        EngineConfig(
            model=str(model_dir),
            device="cpu",
            quantization=mode,
            max_batch_size=batch,
            max_model_len=256,
            max_num_batched_tokens=max(256, batch),
            threads=threads,
        )
    )
    engine.start()
    warm_up(engine, report)
    return engine, report


def run_all_at_once(engine, ids: list[list[int]], lengths: list[int]) -> float:
    """Continuous batching: submit everything, the engine keeps its batch full."""
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in lengths]
    t0 = time.perf_counter()
    outs = engine.generate(ids, params)
    return sum(o.completion_tokens for o in outs) / (time.perf_counter() - t0)


def run_static(engine, ids: list[list[int]], lengths: list[int], batch: int) -> float:
    """Static batching: a batch starts only when the previous one has fully finished."""
    t0 = time.perf_counter()
    tokens = 0
    for i in range(0, len(ids), batch):
        params = [
            SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
            for n in lengths[i : i + batch]
        ]
        tokens += sum(o.completion_tokens for o in engine.generate(ids[i : i + batch], params))
    return tokens / (time.perf_counter() - t0)


def run_one_at_a_time(engine, ids: list[list[int]], lengths: list[int]) -> float:
    t0 = time.perf_counter()
    tokens = 0
    for i, n in zip(ids, lengths, strict=True):
        sink = CollectingSink()
        engine.submit(i, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True), sink)
        tokens += sink.result().completion_tokens
    return tokens / (time.perf_counter() - t0)


CT2_PYTHON = ROOT / "var" / "bench-venvs" / "ctranslate2" / "bin" / "python"
CT2_TYPES = {"none": "float32", "int8": "int8"}  # our mode -> CTranslate2's compute type
PEER_BATCHES = (16, 64)


def ctranslate2_peer(model_dir: Path, ids: list[list[int]], modes: list[str], threads: int,
                     quiet: float) -> dict[tuple[str, int], float]:  # fmt: skip
    """tok/s of CTranslate2 per (our mode, batch), from bench/peers/ct2_generate.py."""
    if not CT2_PYTHON.exists():
        raise RuntimeError(f"{CT2_PYTHON} is missing: create the venv (see docs/serving.md)")
    ids_file = VAR / "engine-peer-ids.json"
    ids_file.write_text(json.dumps(ids))
    out: dict[tuple[str, int], float] = {}
    for mode in (m for m in modes if m in CT2_TYPES):
        if quiet:
            wait_quiet(quiet, timeout=300)
        cmd = [
            str(CT2_PYTHON), str(ROOT / "bench" / "peers" / "ct2_generate.py"), str(model_dir),
            str(ids_file), "--compute-type", CT2_TYPES[mode], "--threads", str(threads),
            "--new-tokens", str(GEN_TOKENS), "--batches", ",".join(map(str, PEER_BATCHES)),
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=True)
        for line in done.stdout.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                out[(mode, row["batch"])] = row["tok_s"]
                print(f"ctranslate2 {mode} batch {row['batch']}: {row['tok_s']} tok/s", flush=True)
    return out


def quality(reference_dir: Path, modes: list[str], tokens: int = 512) -> list[dict]:
    """Each mode vs fp32 on held-out text: perplexity, top-1 agreement, KL."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(reference_dir)
    ids = tok(corpus_text(40_000, skip_chars=3_000_000)).input_ids[:tokens]
    base, _ = load_engine(
        EngineConfig(model=str(reference_dir), device="cpu", max_batch_size=1, max_model_len=tokens)
    )
    rows = []
    for mode in modes:
        if mode == "none":
            continue
        other, _ = load_engine(
            EngineConfig(
                model=str(reference_dir),
                device="cpu",
                max_batch_size=1,
                max_model_len=tokens,
                quantization=mode,
            )
        )
        r = compare(base.runner, other.runner, ids)
        rows.append(
            {
                "model": reference_dir.name,
                "mode": mode,
                "ppl_fp32": round(r["ppl_reference"], 2),
                "ppl_mode": round(r["ppl_other"], 2),
                "ppl_change_%": round(100 * (r["ppl_other"] / r["ppl_reference"] - 1), 3),
                "top1_agree_%": round(100 * r["top1_agreement"], 1),
                "kl": f"{r['kl']:.2e}",
            }
        )
        del other
        gc.collect()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", default="")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--threads", type=int)
    p.add_argument("--skip-schedules", action="store_true")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--peers", default="ctranslate2", help="'ctranslate2', or '' for none")
    p.add_argument("--quiet", type=float, default=0.9, help="wait for this idle CPU fraction")
    p.add_argument("--json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = args.modes.split(",") if args.modes else ["none", "int8"]
    if not args.modes and quant.cpu_has_bf16():
        modes.insert(1, "bf16")
    model_dir = reference_model()
    prompts = make_prompts(model_dir, args.requests)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = [tok(p).input_ids for p in prompts]
    result: dict = {"load_before": machine_load(), "threads": torch.get_num_threads()}
    print(f"load {result['load_before']}  torch threads {result['threads']}", flush=True)
    result["baseline_load"] = wait_quiet(args.quiet, timeout=300) if args.quiet else machine_load()
    base16 = in_thread(hf_generate_baseline, model_dir, prompts[:64], 16)
    base1 = in_thread(hf_generate_baseline, model_dir, prompts[:4], 1)
    result["baseline"] = {"hf_generate_b1": round(base1, 1), "hf_generate_b16": round(base16, 1)}
    print(f"baseline HF generate fp32: batch 1 {base1:.0f} tok/s, batch 16 {base16:.0f} tok/s")
    rows = []
    equal = [GEN_TOKENS] * len(ids)
    rng = random.Random(0)
    mixed = [rng.choice([8, 16, 32, 64, 128]) for _ in ids]
    for mode in modes:
        gc.collect()
        engine, report = _engine(model_dir, mode, args.batch, args.threads)
        row = {
            "mode": mode,
            "runner": report.runner,
            "load_s": report.load_seconds,
            "rss_MB": report.rss_bytes // 2**20,
            "weights_MB": report.weight_bytes // 2**20,
        }
        row.update(wait_quiet(args.quiet, timeout=300) if args.quiet else machine_load())
        with CpuMeter([]) as meter:
            tps = run_all_at_once(engine, ids, equal)
        row["others_cores"] = meter.others_cores
        row["continuous_tok_s"] = round(tps, 1)
        row["x_hf_b16"] = round(tps / base16, 2)
        if not args.skip_schedules:
            row["static_tok_s"] = round(run_static(engine, ids, equal, args.batch), 1)
            row["mixed_continuous_tok_s"] = round(run_all_at_once(engine, ids, mixed), 1)
            row["mixed_static_tok_s"] = round(run_static(engine, ids, mixed, args.batch), 1)
            row["one_at_a_time_tok_s"] = round(run_one_at_a_time(engine, ids[:6], equal[:6]), 1)
            row["continuous_x_one"] = round(tps / row["one_at_a_time_tok_s"], 1)
        if args.peers and mode in CT2_TYPES:
            for b in PEER_BATCHES:
                row[f"static{b}_tok_s"] = round(run_static(engine, ids, equal, b), 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
        engine.shutdown(timeout=30)
        del engine
    result["engine"] = rows
    result["compute_bound_limit_tok_s"] = 3600
    print()
    print_table(rows, list(rows[0].keys()))
    if args.peers:
        threads = args.threads or torch.get_num_threads()
        ct2 = ctranslate2_peer(model_dir, ids, modes, threads, args.quiet)
        peer = [
            {"mode": m, "batch": b, "ours_static_tok_s": r[f"static{b}_tok_s"],
             "ctranslate2_tok_s": ct2[(m, b)],
             "x_ctranslate2": round(r[f"static{b}_tok_s"] / ct2[(m, b)], 2)}
            for r in rows for m in [r["mode"]] if m in CT2_TYPES for b in PEER_BATCHES
        ]  # fmt: skip
        result["peer_ctranslate2"] = peer
        print()
        print_table(peer, list(peer[0].keys()))
    if not args.skip_quality:
        small = VAR / "small-trained"
        if not (small / "model.safetensors").exists():
            build_tiny_llama(small, "test", train_steps=300)
        q = in_thread(quality, model_dir, modes) + in_thread(quality, small, modes, 384)
        result["quality"] = q
        print()
        print_table(q, list(q[0].keys()))
    result["load_after"] = machine_load()
    print(f"load after {result['load_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
