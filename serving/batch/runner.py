"""``python -m serving.batch --model DIR --input FILE [...]``: one shard of a batch job.

Rows ``i`` with ``i % CP_NODES == CP_NODE_RANK`` are this node's. Each result is appended
to ``$CP_CHECKPOINT_DIR/batch/shard-RRR-of-NNN.jsonl`` as soon as it is done (flushed),
so a shard killed half-way and started again (a crash, a preemption, a lost host) keeps
what it wrote, cuts a torn last line, and runs only the rows still missing: no row is
skipped or written twice. Node 0 reports progress (rows done over all shards / total).

An input row: ``{"prompt": "..."}`` or ``{"messages": [...]}``, optionally ``"id"`` (kept
in the output) and ``"max_tokens"`` (at most the job's). An output row: ``{"index", "id",
"text", "finish_reason", "prompt_tokens", "completion_tokens"}`` (or ``"error"``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from serving.batch.output import complete_rows, rows_done, shard_path

PROGRESS_EVERY = 1.0  # seconds


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m serving.batch", description=__doc__)
    p.add_argument("--model", required=True, help="Hugging Face model directory")
    p.add_argument("--input", required=True, help="JSONL of prompts")
    p.add_argument("--output-dir", default=os.environ.get("CP_CHECKPOINT_DIR", "."))
    p.add_argument("--device", default="auto")
    p.add_argument("--quantization", default="none")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    return p.parse_args(argv)


def _event(event: dict[str, Any]) -> None:
    """An SDK event for the worker (progress), from node 0 only."""
    path = os.environ.get("CP_EVENTS_FILE")
    if not path or os.environ.get("CP_NODE_RANK", "0") != "0":
        return
    with open(path, "a") as handle:
        handle.write(json.dumps({"v": 1, "time": time.time(), **event}) + "\n")


def _resume(path: Path) -> set[int]:
    """Indices already written; the file is cut after its last whole row."""
    done: set[int] = set()
    if not path.exists():
        return done
    keep = 0
    with open(path, "rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                break
            keep += len(line)
    with open(path, "r+b") as handle:
        handle.truncate(keep)
    done = {row["index"] for row in complete_rows(path)}
    return done


def _prompt_ids(tokenizer: Any, row: dict) -> list[int]:
    if "messages" in row:
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(
                row["messages"], tokenize=False, add_generation_prompt=True
            )
        else:
            lines = [f"{m['role']}: {m['content']}" for m in row["messages"]]
            text = "\n".join([*lines, "assistant:"])
        return tokenizer(text, add_special_tokens=False).input_ids
    return tokenizer(row["prompt"]).input_ids


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank = int(os.environ.get("CP_NODE_RANK", "0"))
    nodes = int(os.environ.get("CP_NODES", "1"))
    root = Path(args.output_dir)
    out_path = shard_path(root, rank, nodes)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = _resume(out_path)
    with open(args.input, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    total = len(rows)
    mine = [i for i in range(rank, total, nodes) if i not in done]
    print(
        f"shard {rank + 1} of {nodes}: {len(mine)} row(s) to run"
        + (f", resuming after {len(done)} already written" if done else ""),
        flush=True,
    )

    from serving.engine import CollectingSink, EngineConfig, SamplingParams, load_engine

    engine, _ = load_engine(
        EngineConfig(
            model=args.model,
            device=args.device,
            quantization=args.quantization,
            max_batch_size=args.max_batch_size,
            max_queue=args.max_batch_size * 4,
            threads=args.threads,
            seed=args.seed,
        )
    )
    engine.start()
    tokenizer = engine.tokenizer
    window: deque[tuple[int, Any]] = deque()
    started, last_report, written = time.monotonic(), 0.0, 0

    def write(index: int, result: dict) -> None:
        row = rows[index]
        line = {"index": index, "id": row.get("id"), **result}
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
        out.flush()

    with open(out_path, "a", encoding="utf-8") as out:
        pending = iter(mine)
        while True:
            while len(window) < args.max_batch_size * 2:
                index = next(pending, None)
                if index is None:
                    break
                row = rows[index]
                params = SamplingParams(
                    max_tokens=min(int(row.get("max_tokens") or args.max_tokens), args.max_tokens),
                    temperature=args.temperature,
                    seed=args.seed + index if args.temperature > 0 else None,
                )
                sink = CollectingSink()
                try:
                    engine.submit(_prompt_ids(tokenizer, row), params, sink)
                except Exception as exc:  # a prompt too long, say: that row's error
                    write(index, {"error": str(exc)[:300]})
                    written += 1
                    continue
                window.append((index, sink))
            if not window:
                break
            index, sink = window.popleft()
            result = sink.result()
            if result.error:
                write(index, {"error": result.error[:300]})
            else:
                write(index, {
                    "text": result.text,
                    "finish_reason": result.finish_reason,
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                })  # fmt: skip
            written += 1
            now = time.monotonic()
            if now - last_report >= PROGRESS_EVERY:
                last_report = now
                all_done = rows_done(root, nodes)
                rate = written / max(now - started, 1e-9)
                print(f"rows {all_done}/{total} ({rate:.1f} rows/s on this shard)", flush=True)
                _event({"type": "metrics", "kind": "batch", "step": all_done, "total": total,
                        "values": {"rows_per_s": rate, "rows": all_done}})  # fmt: skip
    engine.shutdown(timeout=10)
    all_done = rows_done(root, nodes)
    while rank == 0 and all_done < total:  # node 0 reports until every shard is done
        time.sleep(PROGRESS_EVERY)
        all_done = rows_done(root, nodes)
        _event({"type": "metrics", "kind": "batch", "step": all_done, "total": total,
                "values": {"rows": all_done}})  # fmt: skip
    _event(
        {
            "type": "metrics",
            "kind": "batch",
            "step": all_done,
            "total": total,
            "values": {"rows": all_done},
        }
    )
    print(f"shard {rank + 1} of {nodes} done: rows {all_done}/{total}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
