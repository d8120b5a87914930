"""Environments built with uv: one build for many simultaneous askers, layering on the
worker's packages, least-recently-used collection that spares environments in use, and
requests read from a requirements file."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from workers.runtime import environments

PACKAGE = "tomli-w==1.2.0"


@pytest.fixture
def cache(settings, tmp_path):
    settings.ENV_CACHE_DIR = tmp_path / "envs"
    settings.ENV_UV_CACHE_DIR = Path.home() / ".cache" / "cp-tests" / "uv"
    return settings.ENV_CACHE_DIR


def test_ten_jobs_asking_at_once_build_it_once_and_share_it(cache):
    request = environments.Request(packages=[PACKAGE])
    lines: list[str] = []
    results: list[environments.Environment] = []
    builders = [environments.Builder(lines.append, lambda: True) for _ in range(10)]
    threads = [
        threading.Thread(target=lambda b=b: results.append(b.ensure(request))) for b in builders
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert len(results) == 10
    assert sum("[environment] building" in line for line in lines) == 1
    assert len({r.key for r in results}) == 1 and sum(not r.cached for r in results) == 1
    env = results[0]
    assert env.packages == [PACKAGE]  # only what the worker's environment lacks
    # Layered: its Python imports the new package and the worker's torch.
    out = subprocess.run(
        [str(env.bin / "python"), "-c", "import tomli_w, torch; print(torch.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(env.path) not in out.stdout  # torch came from the worker's environment
    for builder in builders:
        builder.release()


def _fake_env(root: Path, key: str, size: int, used: float) -> None:
    (root / key).mkdir(parents=True)
    (root / key / environments.META).write_text(json.dumps({"size_bytes": size}))
    lock = root / f"{key}.lock"
    lock.touch()
    os.utime(lock, (used, used))


def test_least_recently_used_environments_go_first_but_not_those_in_use(cache, settings):
    now = time.time()
    cache.mkdir(parents=True)
    _fake_env(cache, "old-in-use", 400, now - 300)
    _fake_env(cache, "old", 400, now - 200)
    _fake_env(cache, "middle", 400, now - 100)
    _fake_env(cache, "new", 400, now)
    settings.ENV_CACHE_MAX_BYTES = 1000
    held = os.open(cache / "old-in-use.lock", os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_SH)  # a running job holds it
    try:
        removed = environments.Builder(print, lambda: True).collect_garbage()
    finally:
        os.close(held)
    assert removed == ["old", "middle"]
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == ["new", "old-in-use"]


def test_a_requirements_file_is_read_from_the_code_and_checked(tmp_path):
    (tmp_path / "requirements.txt").write_text("# pinned\ndatasets>=2  # data\n\naccelerate\n")
    request = environments.request_from_spec({"requirements": "requirements.txt"}, tmp_path)
    assert request is not None and request.packages == ["datasets>=2", "accelerate"]
    (tmp_path / "bad.txt").write_text("numpy\n--index-url https://example.invalid/simple\n")
    with pytest.raises(environments.BuildError, match=r"bad.txt, line 2: .*pip options"):
        environments.request_from_spec({"requirements": "bad.txt"}, tmp_path)
    with pytest.raises(environments.BuildError, match="not in the job's code"):
        environments.request_from_spec({"requirements": "../x.txt"}, tmp_path)
    assert environments.request_from_spec({}, tmp_path) is None
    assert environments.request_from_spec({"image": "x"}, tmp_path) is None


def test_another_python_cannot_be_layered_on_the_workers(cache):
    request = environments.Request(packages=[PACKAGE], python="3.9", inherit=True)
    lines: list[str] = []
    with pytest.raises(environments.BuildError, match="needs inherit: false"):
        environments.Builder(lines.append, lambda: True).ensure(request)


def test_a_stopped_attempt_stops_its_build(cache):
    request = environments.Request(packages=["cowsay==6.1"], inherit=False)
    with pytest.raises(environments.Stopped):
        environments.Builder(lambda _l: None, lambda: False).ensure(request)
    assert not (cache / request.key() / environments.META).exists()
