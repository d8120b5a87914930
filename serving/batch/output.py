"""The shard files of a batch job and their merge (torch-free: the API reads them)."""

from __future__ import annotations

import heapq
import json
import re
from collections.abc import Iterator
from pathlib import Path

SHARD_NAME = re.compile(r"^shard-(\d{3})-of-(\d{3})\.jsonl$")
SUBDIR = "batch"


def shard_path(root: Path, rank: int, nodes: int) -> Path:
    return root / SUBDIR / f"shard-{rank:03d}-of-{nodes:03d}.jsonl"


def complete_rows(path: Path) -> Iterator[dict]:
    """The whole rows of a shard file (a torn last line, from a killed run, is skipped)."""
    if not path.exists():
        return
    with open(path, "rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                return
            try:
                yield json.loads(line)
            except ValueError:
                return


def shards(root: Path, nodes: int) -> list[Path]:
    return [shard_path(root, rank, nodes) for rank in range(nodes)]


def rows_done(root: Path, nodes: int) -> int:
    total = 0
    for path in shards(root, nodes):
        if path.exists():
            with open(path, "rb") as handle:
                total += sum(1 for line in handle if line.endswith(b"\n"))
    return total


def merged(root: Path, nodes: int) -> Iterator[bytes]:
    """Every written row, in input order, as JSONL lines. Each shard is written in
    completion order, so each is sorted first (rows are small: a shard fits in memory)."""
    streams = [sorted(complete_rows(p), key=lambda r: r["index"]) for p in shards(root, nodes)]
    for row in heapq.merge(*streams, key=lambda r: r["index"]):
        yield (json.dumps(row, ensure_ascii=False) + "\n").encode()
