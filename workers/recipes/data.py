"""Data pipeline of the causal LM recipe: text -> tokenizer -> packed token shards -> batches.

1. Text comes from files or directories: ``.txt`` (a file is one document) and ``.jsonl``
   (one JSON object per line, its text under ``--text-field``).
2. A byte-level BPE tokenizer is trained on the text with ``tokenizers`` (or a given
   ``tokenizer.json`` is used), cached under a key of the data's content hash.
3. The token stream (documents separated by the end-of-text token) is packed once into
   memory-mapped ``uint16``/``uint32`` shards, cached under a key of data + tokenizer hash.
   Every cache entry is written to a temporary directory and renamed into place, so a
   crash never leaves a half-written entry that a later run would trust.
4. Shards are cut into windows of ``seq_len + 1`` tokens (stride ``seq_len``). Every
   ``round(1 / eval_fraction)``-th window is held out for evaluation.
5. Training order (see :mod:`.loader`) is a seeded permutation per epoch over an
   endless stream of samples; sample ``n`` is the same on every run, so the data position
   in a checkpoint is one integer and each rank reads its own deterministic slice of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PIPELINE_VERSION = 1
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")
SHARD_TOKENS = 1 << 27  # 128M tokens: 256 MB as uint16
TEXT_BLOCK_BYTES = 1 << 20  # .txt files are read and encoded in ~1 MB pieces
TOKENIZER_TRAIN_BYTES = 512 << 20  # train the BPE on at most this much text


class DataError(Exception):
    """A problem with the user's data or tokenizer, reported as a message, not a trace."""


# ----------------------------------------------------------------------------- reading


def collect_files(paths: list[str]) -> list[Path]:
    """The .txt/.jsonl files under ``paths``, in a deterministic order."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise DataError(f"data path {raw!r} does not exist")
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".jsonl")
            )
            if not found:
                raise DataError(f"data directory {raw!r} has no .txt or .jsonl files")
            files.extend(found)
        elif path.suffix in (".txt", ".jsonl"):
            files.append(path)
        else:
            raise DataError(f"data file {raw!r} is neither .txt nor .jsonl")
    return files


def iter_pieces(files: list[Path], text_field: str) -> Iterator[tuple[str, bool]]:
    """Yield (text, ends_document) pieces; a long .txt file comes in ~1 MB pieces."""
    for path in files:
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8", errors="replace") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                    if not isinstance(record, dict) or text_field not in record:
                        raise DataError(f"{path}:{lineno}: no {text_field!r} field")
                    text = record[text_field]
                    if not isinstance(text, str):
                        raise DataError(f"{path}:{lineno}: {text_field!r} is not a string")
                    if text:
                        yield text, True
        else:
            with path.open(encoding="utf-8", errors="replace", newline="") as fh:
                block: list[str] = []
                size = 0
                has_text = False
                for line in fh:
                    block.append(line)
                    size += len(line)
                    has_text = has_text or not line.isspace()
                    if size >= TEXT_BLOCK_BYTES:
                        yield "".join(block), False
                        block, size = [], 0
                if has_text:  # an empty or blank file is no document
                    yield "".join(block), True


def fingerprint(files: list[Path], text_field: str) -> str:
    """A hash of the data's content and order (not its location)."""
    h = hashlib.sha256(f"v{PIPELINE_VERSION}|{text_field}|".encode())
    for path in files:
        fh = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                fh.update(chunk)
        h.update(f"{path.suffix}|{path.stat().st_size}|{fh.hexdigest()}\n".encode())
    return h.hexdigest()


# ------------------------------------------------------------------------ cache helpers


def _publish(tmp: Path, final: Path) -> None:
    """Rename a finished temp directory into place (another process may have won)."""
    for child in tmp.iterdir():
        fd = os.open(child, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / "meta.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _tmp_dir(cache: Path, name: str) -> Path:
    tmp = cache / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    return tmp


# --------------------------------------------------------------------------- tokenizer


@dataclass
class TokenizerInfo:
    path: Path  # the tokenizer.json
    sha256: str
    vocab_size: int
    eos_token: str
    eos_id: int


def _find_eos(tok: object, source: str) -> tuple[str, int]:
    for name in EOS_CANDIDATES:
        tid = tok.token_to_id(name)  # type: ignore[attr-defined]
        if tid is not None:
            return name, int(tid)
    raise DataError(
        f"tokenizer {source} has no end-of-text token (one of {', '.join(EOS_CANDIDATES)})"
    )


def train_tokenizer(files: list[Path], text_field: str, vocab_size: int, out: Path) -> None:
    """Train a byte-level BPE on the files and save it as ``out`` (tokenizer.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_CANDIDATES[0]],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def texts() -> Iterator[str]:
        seen = 0
        for text, _ in iter_pieces(files, text_field):
            yield text
            seen += len(text)
            if seen >= TOKENIZER_TRAIN_BYTES:
                return

    tok.train_from_iterator(texts(), trainer)
    tok.save(str(out))


def prepare_tokenizer(
    files: list[Path],
    text_field: str,
    data_hash: str,
    given: str | None,
    vocab_size: int,
    cache: Path,
    builder: bool,
) -> TokenizerInfo | None:
    """Load the given tokenizer, or the cached/trained one (trained only by the builder).

    Returns None on a non-builder rank when the trained tokenizer is not cached yet.
    """
    from tokenizers import Tokenizer

    if given is not None:
        path = Path(given)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise DataError(f"tokenizer {given!r}: no tokenizer.json there")
    else:
        entry = cache / f"tokenizer-{data_hash[:20]}-v{vocab_size}"
        path = entry / "tokenizer.json"
        if not path.is_file():
            if not builder:
                return None
            tmp = _tmp_dir(cache, entry.name)
            train_tokenizer(files, text_field, vocab_size, tmp / "tokenizer.json")
            (tmp / "meta.json").write_text(json.dumps({"data": data_hash, "vocab": vocab_size}))
            _publish(tmp, entry)
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on a bad file
        raise DataError(f"cannot read tokenizer {str(path)!r}: {exc}") from None
    eos_token, eos_id = _find_eos(tok, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return TokenizerInfo(path, digest, tok.get_vocab_size(), eos_token, eos_id)


# ----------------------------------------------------------------------------- packing


def pack_tokens(files: list[Path], text_field: str, info: TokenizerInfo, out_dir: Path) -> None:
    """Tokenize every document and write the stream as uint16/uint32 shards + meta.json."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(info.path))
    dtype = np.uint16 if info.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    shards: list[dict[str, int | str]] = []
    buf: list[np.ndarray] = []
    buffered = 0
    documents = 0

    def flush() -> None:
        nonlocal buf, buffered
        if not buffered:
            return
        name = f"shard_{len(shards):05d}.bin"
        np.concatenate(buf).astype(dtype).tofile(out_dir / name)
        shards.append({"file": name, "tokens": buffered})
        buf, buffered = [], 0

    batch: list[tuple[str, bool]] = []

    def encode_batch() -> None:
        nonlocal buffered, documents
        encodings = tok.encode_batch([t for t, _ in batch], add_special_tokens=False)
        for enc, (_, ends) in zip(encodings, batch, strict=True):
            ids = np.asarray(enc.ids, dtype=np.int64)
            if ends:
                ids = np.append(ids, info.eos_id)
                documents += 1
            buf.append(ids)
            buffered += len(ids)
            if buffered >= SHARD_TOKENS:
                flush()
        batch.clear()

    for piece in iter_pieces(files, text_field):
        batch.append(piece)
        if len(batch) >= 64:
            encode_batch()
    if batch:
        encode_batch()
    flush()
    total = sum(int(s["tokens"]) for s in shards)
    if total <= documents:  # nothing but end-of-text tokens
        raise DataError("the data holds no text (every file is empty)")
    meta = {
        "version": PIPELINE_VERSION,
        "dtype": np.dtype(dtype).name,
        "tokens": total,
        "documents": documents,
        "shards": shards,
        "tokenizer_sha256": info.sha256,
        "eos_id": info.eos_id,
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1))


# ------------------------------------------------------------------------ token windows


class TokenWindows:
    """Memory-mapped shards cut into (seq_len + 1)-token windows, split train/eval."""

    def __init__(self, directory: Path, seq_len: int, eval_fraction: float) -> None:
        self.directory = directory
        self.meta = json.loads((directory / "meta.json").read_text())
        self.seq_len = seq_len
        self.dtype = np.dtype(self.meta["dtype"])
        counts = [max(0, (int(s["tokens"]) - 1) // seq_len) for s in self.meta["shards"]]
        self.shard_starts = np.cumsum([0, *counts])
        self.windows = int(self.shard_starts[-1])
        self.period = max(2, round(1.0 / eval_fraction))
        self.n_eval = self.windows // self.period
        self.n_train = self.windows - self.n_eval
        self._maps: list[np.memmap] | None = None

    def _shards(self) -> list[np.memmap]:
        if self._maps is None:  # opened lazily: once per DataLoader worker process
            self._maps = [
                np.memmap(self.directory / s["file"], dtype=self.dtype, mode="r")
                for s in self.meta["shards"]
            ]
        return self._maps

    def window(self, w: int) -> np.ndarray:
        shard = int(np.searchsorted(self.shard_starts, w, side="right")) - 1
        start = (w - int(self.shard_starts[shard])) * self.seq_len
        return np.asarray(self._shards()[shard][start : start + self.seq_len + 1], np.int64)

    def train_window(self, t: int) -> int:
        p = self.period - 1
        return (t // p) * self.period + t % p

    def eval_window(self, e: int) -> int:
        return e * self.period + self.period - 1

    def __getstate__(self) -> dict[str, object]:  # memmaps are reopened, not copied
        return {**self.__dict__, "_maps": None}


# ------------------------------------------------------------------------- entry point


@dataclass
class PreparedData:
    files: list[Path]
    data_hash: str
    tokenizer: TokenizerInfo
    tokens_dir: Path
    windows: TokenWindows


def _tokens_dir(cache: Path, data_hash: str, info: TokenizerInfo) -> Path:
    key = hashlib.sha256(f"{data_hash}|{info.sha256}|{info.eos_id}".encode()).hexdigest()
    return cache / f"tokens-{key[:20]}"


def prepare_data(
    paths: list[str],
    text_field: str,
    tokenizer: str | None,
    vocab_size: int,
    cache_dir: str,
    seq_len: int,
    eval_fraction: float,
    builder: bool,
    all_ok: Callable[[bool], bool],
) -> PreparedData:
    """Build (once, on the builder rank) or load the tokenizer and packed shards.

    Every rank calls this. ``all_ok(ok)`` is a barrier that also tells whether every rank
    got through its part; it separates the builder's writes from the others' reads, and
    lets the other ranks fail cleanly when the builder hit a DataError.
    """
    files = collect_files(paths)
    if not any(f.stat().st_size for f in files):
        raise DataError("the data holds no text (every file is empty)")
    data_hash = fingerprint(files, text_field)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    error: DataError | None = None
    if builder:
        try:
            info = prepare_tokenizer(
                files, text_field, data_hash, tokenizer, vocab_size, cache, True
            )
            assert info is not None
            tokens_dir = _tokens_dir(cache, data_hash, info)
            if not (tokens_dir / "meta.json").exists():
                tmp = _tmp_dir(cache, tokens_dir.name)
                try:
                    pack_tokens(files, text_field, info, tmp)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                _publish(tmp, tokens_dir)
        except DataError as exc:
            error = exc
    if not all_ok(error is None):
        raise error or DataError("data preparation failed on another rank (see its log)")
    info = prepare_tokenizer(files, text_field, data_hash, tokenizer, vocab_size, cache, False)
    assert info is not None
    tokens_dir = _tokens_dir(cache, data_hash, info)
    windows = TokenWindows(tokens_dir, seq_len, eval_fraction)
    if windows.n_eval == 0 or windows.n_train == 0:
        raise DataError(
            f"the data is too small: {windows.meta['tokens']} tokens make "
            f"{windows.windows} sequences of {seq_len}; need at least {windows.period} "
            "(add text, lower --seq-len or raise --eval-fraction)"
        )
    return PreparedData(files, data_hash, info, tokens_dir, windows)
