"""Preemption (SIGTERM), a crash in the middle of a checkpoint, and bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from workers.recipes.checkpoint import latest_checkpoint, list_checkpoints
from workers.recipes.config import parse_config

from .conftest import REPO, SMALL, base_env, check, events, recipe_cmd, run_recipe, train_losses

LONG = [*SMALL, "--max-steps", "100000", "--eval-every", "0", "--checkpoint-every", "0"]


def wait_for_step(ev: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if ev.exists() and max(train_losses(ev), default=0) >= step:
            return
        time.sleep(0.1)
    raise AssertionError(f"no step {step} within {timeout}s")


def test_sigterm_checkpoints_and_exits_zero(tmp_path: Path, cache_dir: Path) -> None:
    ev, out = tmp_path / "events.jsonl", tmp_path / "out"
    args = [*LONG, "--num-workers", "1", "--cache-dir", str(cache_dir), "--output-dir", str(out)]
    proc = subprocess.Popen(
        recipe_cmd(args), cwd=REPO, env=base_env(CP_EVENTS_FILE=str(ev)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    wait_for_step(ev, 3, proc)
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert time.monotonic() - sent < 20
    ckpt = latest_checkpoint(out / "checkpoints")
    assert ckpt is not None
    state = json.loads((ckpt / "trainer_state.json").read_text())
    last_step = max(train_losses(ev))
    assert state["reason"] == "preempted" and state["step"] == last_step >= 3
    assert [e["step"] for e in events(ev) if e["type"] == "checkpoint"] == [last_step]
    assert not (out / "final").exists()  # an interrupted run is not exported
    # And it resumes from there with --resume auto.
    ev2 = tmp_path / "events2.jsonl"
    check(
        run_recipe(
            [
                *SMALL,
                "--max-steps",
                str(last_step + 2),
                "--eval-every",
                "0",
                "--no-export",
                "--resume",
                "auto",
                "--cache-dir",
                str(cache_dir),
                "--output-dir",
                str(out),
            ],
            CP_EVENTS_FILE=str(ev2),
        )
    )
    assert sorted(train_losses(ev2)) == [last_step + 1, last_step + 2]


def test_sigterm_to_one_rank_stops_both(tmp_path: Path, cache_dir: Path) -> None:
    """Ranks agree on stopping (the flag is all-reduced), so a signal that reaches only
    one rank still gives one checkpoint at one step and a clean exit everywhere."""
    ev, out = tmp_path / "events.jsonl", tmp_path / "out"
    args = [*LONG, "--cache-dir", str(cache_dir), "--output-dir", str(out)]
    proc = subprocess.Popen(
        recipe_cmd(args, nproc=2), cwd=REPO, env=base_env(CP_EVENTS_FILE=str(ev)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for_step(ev, 3, proc)
        ranks = {
            int(p.environ().get("RANK", "-1")): p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if "workers.recipes.causal_lm" in " ".join(p.cmdline())
        }
        assert sorted(ranks) == [0, 1]
        ranks[1].send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    ((_step, ckpt),) = list_checkpoints(out / "checkpoints")
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["reason"] == "preempted" and state["world_size"] == 2
    assert len(list((ckpt / "rng").iterdir())) == 2


CRASH = """
import os, signal, sys
from workers.recipes import causal_lm, checkpoint
real = checkpoint.write_tensors
def write_then_die(path, tensors):
    real(path, tensors)
    if ".tmp-step_00000008" in str(path) and path.name == "optimizer.safetensors":
        os.kill(os.getpid(), signal.SIGKILL)  # the machine dies mid-checkpoint
checkpoint.write_tensors = write_then_die
sys.exit(causal_lm.main(sys.argv[1:]))
"""


def test_crash_mid_checkpoint_keeps_previous(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "out"
    args = [*SMALL, "--max-steps", "12", "--eval-every", "0", "--checkpoint-every", "4",
            "--cache-dir", str(cache_dir), "--output-dir", str(out)]  # fmt: skip
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH, *args], cwd=REPO, env=base_env(),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    root = out / "checkpoints"
    half = root / ".tmp-step_00000008"
    assert (half / "model.safetensors").exists() and not (half / "trainer_state.json").exists()
    assert [s for s, _ in list_checkpoints(root)] == [4]  # the half one is never "latest"
    assert latest_checkpoint(root) == root / "step_00000004"
    ev = tmp_path / "events.jsonl"
    check(run_recipe([*args, "--resume", "auto", "--no-export"], CP_EVENTS_FILE=str(ev)))
    system = [e for e in events(ev) if e["type"] == "metrics" and e["kind"] == "system"]
    assert system[0]["values"]["resumed_from_step"] == 4
    assert [s for s, _ in list_checkpoints(root)] == [4, 8, 12]
    assert not half.exists()  # the stale temp directory was swept


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "huge"], "invalid choice: 'huge'"),
        (["--seq-len", "4096"], "longer than the model allows"),
        (["--hidden", "100", "--heads", "3"], "not divisible by --heads"),
        (["--heads", "4", "--kv-heads", "3"], "not divisible by --kv-heads"),
        (["--precision", "fp8"], "invalid choice: 'fp8'"),
        (["--max-steps", "0"], "must be a positive integer"),
        (["--global-batch-tokens", "1000", "--seq-len", "64"], "not a multiple"),
    ],
)
def test_bad_flags(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_config(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_input_is_a_message_not_a_traceback(tmp_path: Path, cache_dir: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("")
    cases = [
        (["--data", str(tmp_path / "missing")], "does not exist"),
        (["--data", str(tmp_path / "empty")], "no text"),
    ]
    for argv, message in cases:
        proc = run_recipe([*argv, "--cache-dir", str(cache_dir)], timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout
