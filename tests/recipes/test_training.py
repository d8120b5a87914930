"""The recipe as real processes: DDP/FSDP over gloo, exact resume, export, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from workers.recipes.checkpoint import latest_checkpoint, list_checkpoints

from .conftest import SMALL, check, events, run_recipe, train_losses


def digest_of(model_file: Path, tied: bool = True) -> str:
    """The recipe's parameter digest (sha256 over sorted names + fp32 bytes) of a file."""
    sd = load_file(str(model_file))
    h = hashlib.sha256()
    for name in sorted(sd):
        h.update(name.encode())
        h.update(sd[name].float().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_ddp_two_processes_learns_and_replicas_agree(tmp_path: Path, cache_dir: Path) -> None:
    out, ev = tmp_path / "run", tmp_path / "events.jsonl"
    proc = run_recipe(
        ["--preset", "tiny", "--seq-len", "64", "--micro-batch", "4", "--warmup-steps", "5",
         "--max-steps", "30", "--log-every", "1",
         "--eval-every", "0", "--checkpoint-every", "0", "--no-export", "--num-workers", "1",
         "--eval-batches", "2", "--cache-dir", str(cache_dir), "--output-dir", str(out)],
        nproc=2, CP_EVENTS_FILE=str(ev),
    )  # fmt: skip
    check(proc)
    losses = train_losses(ev)
    assert sorted(losses) == list(range(1, 31))
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (28, 29, 30)) / 3
    assert last < first - 1.0, losses
    system = [e for e in events(ev) if e["type"] == "metrics" and e["kind"] == "system"]
    assert system[0]["values"]["world_size"] == 2
    assert system[-1]["values"]["replicas_in_sync"] == 1.0
    final = latest_checkpoint(out / "checkpoints")
    assert final is not None and final.name == "step_00000030"
    state = json.loads((final / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["samples_consumed"] == 30 * 2 * 4
    r0, r1 = state["replica_sha256"]
    assert r0 == r1  # rank 1's parameters hash the same as rank 0's ...
    assert r0 == digest_of(final / "model.safetensors")  # ... which are the saved ones
    assert sorted(p.name for p in (final / "rng").iterdir()) == [
        "rank_00000.safetensors",
        "rank_00001.safetensors",
    ]


def test_fsdp_two_processes_matches_one_process_and_reloads(
    tmp_path: Path, cache_dir: Path
) -> None:
    """2 FSDP2 ranks x micro-batch 4 see the same samples per step as 1 process with
    accumulation 2, so the losses agree; the checkpoint loads into a plain model."""
    common = [*SMALL, "--max-steps", "12", "--eval-every", "0", "--checkpoint-every", "6",
              "--cache-dir", str(cache_dir)]  # fmt: skip
    fsdp_ev, one_ev = tmp_path / "fsdp.jsonl", tmp_path / "one.jsonl"
    check(
        run_recipe(
            [*common, "--strategy", "fsdp", "--output-dir", str(tmp_path / "fsdp")],
            nproc=2,
            CP_EVENTS_FILE=str(fsdp_ev),
        )
    )
    check(
        run_recipe(
            [*common, "--grad-accum", "2", "--no-export", "--output-dir", str(tmp_path / "one")],
            CP_EVENTS_FILE=str(one_ev),
        )
    )
    fsdp, one = train_losses(fsdp_ev), train_losses(one_ev)
    assert sorted(fsdp) == list(range(1, 13))
    for step in fsdp:
        assert fsdp[step] == pytest.approx(one[step], rel=1e-4, abs=1e-4), step

    from transformers import AutoModelForCausalLM

    ckpt = latest_checkpoint(tmp_path / "fsdp" / "checkpoints")
    assert ckpt is not None and ckpt.name == "step_00000012"
    model, info = AutoModelForCausalLM.from_pretrained(ckpt, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    saved = load_file(str(ckpt / "model.safetensors"))
    for name, tensor in model.state_dict().items():
        if name in saved:
            assert torch.equal(tensor, saved[name]), name
    one_final = load_file(
        str(tmp_path / "one" / "checkpoints" / "step_00000012" / "model.safetensors")
    )
    for name, tensor in saved.items():  # the sharded run trained the same weights
        assert torch.allclose(tensor, one_final[name], atol=1e-4), name


def thirty_steps(cache_dir: Path, out: Path) -> list[str]:
    """The recipe's argv for the 30-step run (eval and checkpoint every 10, keep 2)."""
    return [
        *SMALL,
        *("--max-steps", "30", "--eval-every", "10", "--checkpoint-every", "10"),
        *("--keep-checkpoints", "2", "--cache-dir", str(cache_dir), "--output-dir", str(out)),
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict[str, Path]:
    """An uninterrupted 30-step run under a simulated control plane (events, CP dirs)."""
    root = tmp_path_factory.mktemp("reference")
    ev, ckpts = root / "events.jsonl", root / "cp-checkpoints"
    check(
        run_recipe(
            thirty_steps(cache_dir, root / "out"),
            CP_ATTEMPT_ID="1",
            CP_EVENTS_FILE=str(ev),
            CP_CHECKPOINT_DIR=str(ckpts),
        )
    )
    return {"root": root, "events": ev, "checkpoints": ckpts, "final": root / "out" / "final"}


def test_checkpoints_events_and_keep_last_k(reference: dict[str, Path]) -> None:
    ckpts = reference["checkpoints"]
    # CP_CHECKPOINT_DIR wins over --output-dir; keep-last-2 pruned step 10.
    assert [s for s, _ in list_checkpoints(ckpts)] == [20, 30]
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_00000020", "step_00000030"]
    assert not (reference["root"] / "out" / "checkpoints").exists()
    evs = events(reference["events"])
    assert all(e["v"] == 1 and isinstance(e["time"], float) for e in evs)
    reported = [e for e in evs if e["type"] == "checkpoint"]
    assert [e["step"] for e in reported] == [10, 20, 30]
    assert reported[-1]["path"] == str((ckpts / "step_00000030").resolve())
    evals = [e for e in evs if e["type"] == "metrics" and e["kind"] == "eval"]
    assert [e["step"] for e in evals] == [10, 20, 30]
    assert evals[-1]["values"]["eval_loss"] < evals[0]["values"]["eval_loss"]
    train = [e for e in evs if e["type"] == "metrics" and e["kind"] == "train"]
    for key in ("loss", "lr", "tokens_per_s", "samples_per_s", "step_time_s", "peak_memory_mb"):
        assert train[-1]["values"][key] > 0, key
    state = json.loads((ckpts / "step_00000020" / "trainer_state.json").read_text())
    assert state["step"] == 20 and state["samples_consumed"] == 20 * 4
    assert state["scheduler"]["last_epoch"] == 20 and state["reason"] == "periodic"
    opt = load_file(str(ckpts / "step_00000020" / "optimizer.safetensors"))
    assert float(opt["model.embed_tokens.weight/step"]) == 20.0
    assert not list(ckpts.rglob("*.pt")) and not list(ckpts.rglob("*.bin"))


def test_exact_resume(reference: dict[str, Path], tmp_path: Path, cache_dir: Path) -> None:
    """Stopped at step 20 and resumed (CP_RESUME_FROM): steps 21-30 match the
    uninterrupted run to floating-point tolerance (CPU, fp32)."""
    ev = tmp_path / "events.jsonl"
    check(
        run_recipe(
            thirty_steps(cache_dir, tmp_path / "out"),
            CP_ATTEMPT_ID="2",
            CP_EVENTS_FILE=str(ev),
            CP_CHECKPOINT_DIR=str(tmp_path / "ckpts"),
            CP_RESUME_FROM=str(reference["checkpoints"] / "step_00000020"),
        )
    )
    system = [e for e in events(ev) if e["type"] == "metrics" and e["kind"] == "system"]
    assert system[0]["values"]["resumed_from_step"] == 20
    ref, resumed = train_losses(reference["events"]), train_losses(ev)
    assert sorted(resumed) == list(range(21, 31))
    for step in range(21, 31):
        assert resumed[step] == pytest.approx(ref[step], rel=1e-6, abs=1e-7), step
    a = load_file(str(reference["checkpoints"] / "step_00000030" / "model.safetensors"))
    b = load_file(str(tmp_path / "ckpts" / "step_00000030" / "model.safetensors"))
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-5, atol=1e-6), name


def test_export_loads_and_generates(reference: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = reference["final"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {
        p.name for p in final.iterdir()
    }
    tok = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final)
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 2
    ids = tok("To be, or not to be", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    text = tok.decode(out[0])
    assert text.startswith("To be, or not to be") and len(text) > len("To be, or not to be")
    card = (final / "README.md").read_text()
    evals = [e for e in events(reference["events"]) if e.get("kind") == "eval"]
    assert "| training steps | 30 |" in card
    assert f"{evals[-1]['values']['eval_loss']:.4f}" in card
    assert "hamlet.txt" in card  # the data is named
    same = load_file(str(reference["checkpoints"] / "step_00000030" / "model.safetensors"))
    exported = load_file(str(final / "model.safetensors"))
    assert same.keys() == exported.keys()
    assert all(torch.equal(same[k], exported[k]) for k in same)


def test_fp16_grad_scaler_state_resumes(tmp_path: Path, cache_dir: Path) -> None:
    """fp16 autocast with a grad scaler: the scale is reported, checkpointed and restored
    (the resumed steps match the uninterrupted run)."""
    common = [*SMALL, "--precision", "fp16", "--max-steps", "6", "--eval-every", "0",
              "--checkpoint-every", "3", "--no-export", "--cache-dir", str(cache_dir)]  # fmt: skip
    ev_a, ev_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    check(run_recipe([*common, "--output-dir", str(tmp_path / "a")], CP_EVENTS_FILE=str(ev_a)))
    state = json.loads(
        (tmp_path / "a" / "checkpoints" / "step_00000003" / "trainer_state.json").read_text()
    )
    assert state["scaler"]["scale"] > 0 and "_growth_tracker" in state["scaler"]
    scales = {
        e["step"]: e["values"]["loss_scale"]
        for e in events(ev_a)
        if e["type"] == "metrics" and e["kind"] == "train"
    }
    assert scales[3] == state["scaler"]["scale"]
    check(
        run_recipe(
            [
                *common,
                "--output-dir",
                str(tmp_path / "b"),
                "--resume",
                str(tmp_path / "a" / "checkpoints" / "step_00000003"),
            ],
            CP_EVENTS_FILE=str(ev_b),
        )
    )
    a, b = train_losses(ev_a), train_losses(ev_b)
    assert sorted(b) == [4, 5, 6]
    for step in b:
        assert b[step] == pytest.approx(a[step], rel=1e-5), step
