"""The data pipeline: files, tokenizer, packed shards, deterministic rank slices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from workers.recipes import data as d
from workers.recipes import loader


def write_corpus(root: Path, n_docs: int = 40) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    words = "the quick brown fox jumps over a lazy dog while seven wise owls watch".split()
    rng = np.random.default_rng(0)
    for i in range(n_docs // 2):
        text = " ".join(rng.choice(words, size=200)) + "\n"
        (root / f"doc{i:02d}.txt").write_text(text)
    with (root / "more.jsonl").open("w") as fh:
        for _ in range(n_docs // 2):
            fh.write(json.dumps({"text": " ".join(rng.choice(words, size=200)), "id": 1}) + "\n")
    return root


def prepare(root: Path, cache: Path, **kw: object) -> d.PreparedData:
    args = {
        "paths": [str(root)],
        "text_field": "text",
        "tokenizer": None,
        "vocab_size": 300,
        "cache_dir": str(cache),
        "seq_len": 16,
        "eval_fraction": 0.1,
        "builder": True,
        "all_ok": lambda ok: ok,
    }
    args.update(kw)
    return d.prepare_data(**args)  # type: ignore[arg-type]


def test_collect_files_errors(tmp_path: Path) -> None:
    with pytest.raises(d.DataError, match="does not exist"):
        d.collect_files([str(tmp_path / "missing")])
    with pytest.raises(d.DataError, match=r"no \.txt or \.jsonl"):
        d.collect_files([str(tmp_path)])
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(d.DataError, match="neither"):
        d.collect_files([str(tmp_path / "x.csv")])


def test_bad_jsonl_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n{not json}\n')
    with pytest.raises(d.DataError, match=r"a\.jsonl:2: not valid JSON"):
        list(d.iter_pieces([tmp_path / "a.jsonl"], "text"))
    (tmp_path / "b.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(d.DataError, match="no 'text' field"):
        list(d.iter_pieces([tmp_path / "b.jsonl"], "text"))


def test_empty_corpus(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("")
    (tmp_path / "data" / "b.txt").write_text("  \n\n")
    with pytest.raises(d.DataError, match="no text"):
        prepare(tmp_path / "data", tmp_path / "cache")


def test_pack_and_cache(tmp_path: Path) -> None:
    root = write_corpus(tmp_path / "data")
    data = prepare(root, tmp_path / "cache")
    meta = data.windows.meta
    assert meta["dtype"] == "uint16"
    assert meta["documents"] == 40
    tokens = np.fromfile(data.tokens_dir / meta["shards"][0]["file"], dtype=np.uint16)
    assert len(tokens) == meta["tokens"]
    assert (tokens == data.tokenizer.eos_id).sum() == 40  # one separator per document
    # The packed stream decodes back to the documents.
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(data.tokenizer.path))
    first_doc = tokens[: int(np.argmax(tokens == data.tokenizer.eos_id))]
    assert tok.decode(first_doc.tolist()) == (root / "doc00.txt").read_text()
    # A second prepare reuses both cache entries (same files, untouched).
    stamp = (data.tokens_dir / "meta.json").stat().st_mtime_ns
    again = prepare(root, tmp_path / "cache")
    assert again.tokens_dir == data.tokens_dir
    assert (again.tokens_dir / "meta.json").stat().st_mtime_ns == stamp
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp-")]
    # Changing the data changes the key.
    (root / "doc00.txt").write_text("something else entirely " * 50)
    assert prepare(root, tmp_path / "cache").tokens_dir != data.tokens_dir


def test_windows_split_and_rank_slices(tmp_path: Path) -> None:
    data = prepare(write_corpus(tmp_path / "data"), tmp_path / "cache")
    w = data.windows
    train = {w.train_window(t) for t in range(w.n_train)}
    evals = {w.eval_window(e) for e in range(w.n_eval)}
    assert not train & evals and train | evals == set(range(w.windows))
    assert w.n_eval == w.windows // w.period > 0
    # Each window overlaps the next by exactly one token (inputs + shifted labels).
    assert w.window(0)[-1] == w.window(1)[0] and len(w.window(0)) == 17

    def taken(rank: int, world: int, mb: int, accum: int, steps: int) -> list[int]:
        it = iter(loader.RankSampler(5, rank, world, mb, accum))
        return [next(it) for _ in range(steps * mb * accum)]

    # Two ranks read disjoint slices that together cover the global batches exactly,
    # in the same per-step set as one process with twice the accumulation.
    r0, r1 = taken(0, 2, 3, 2, 4), taken(1, 2, 3, 2, 4)
    assert not set(r0) & set(r1)
    assert sorted(r0 + r1) == list(range(5, 5 + 2 * 3 * 2 * 4))
    single = taken(0, 1, 3, 4, 4)
    for step in range(4):
        g = slice(step * 12, (step + 1) * 12)
        half = slice(step * 6, (step + 1) * 6)
        assert sorted(single[g]) == sorted(r0[half] + r1[half])

    # The stream is a deterministic permutation per epoch, different across epochs.
    s1, s2 = loader.TrainStream(w, seed=7), loader.TrainStream(w, seed=7)
    n = w.n_train
    assert all(np.array_equal(s1[i].numpy(), s2[i].numpy()) for i in range(0, 2 * n, 7))
    assert sorted(s1.order(0).tolist()) == list(range(n))
    assert not np.array_equal(s1.order(0), s1.order(1))
    assert not np.array_equal(loader.TrainStream(w, seed=8).order(0), s1.order(0))


def test_uint32_for_large_vocabularies(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(70_000)}
    vocab["<|endoftext|>"] = 70_000
    vocab["[UNK]"] = 70_001
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text(" ".join(f"w{i}" for i in range(69_000, 69_990)))
    data = prepare(tmp_path / "data", tmp_path / "cache", tokenizer=str(tmp_path))
    assert data.windows.meta["dtype"] == "uint32"
    assert int(data.windows.window(0)[0]) == 69_000
