"""Replica processes with special flags: auth, backpressure, timeouts, disconnects, drain."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from tests.serving.conftest import ROOT

LONG = {"max_tokens": 1800, "ignore_eos": True, "temperature": 0}


def _name(rep) -> str:
    return next(e["model"] for e in rep.events if e["event"] in ("ready", "listening"))


def _metric(url: str, prefix: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


def test_api_key(spawn):
    rep = spawn("--api-key", "s3cret", "--served-model-name", "tiny")
    good = openai.OpenAI(base_url=f"{rep.url}/v1", api_key="s3cret", max_retries=0)
    out = good.completions.create(model="tiny", prompt="def", max_tokens=4)
    assert out.usage.completion_tokens >= 1
    assert [m.id for m in good.models.list()] == ["tiny"]
    bad = openai.OpenAI(base_url=f"{rep.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.completions.create(model="tiny", prompt="def", max_tokens=4)
    assert err.value.status_code == 401
    assert err.value.body["code"] == "invalid_api_key"
    r = httpx.post(f"{rep.url}/v1/completions", json={"model": "tiny", "prompt": "x"})
    assert r.status_code == 401
    assert httpx.get(f"{rep.url}/health").status_code == 200  # probes need no key


def _stream_until_first_chunk(url: str, body: dict, started: threading.Event, out: dict):
    with httpx.Client(timeout=60) as c, c.stream("POST", f"{url}/v1/completions", json=body) as r:
        out["status"] = r.status_code
        chunks = 0
        for line in r.iter_lines():
            if line.startswith("data: "):
                chunks += 1
                started.set()
            out["chunks"] = chunks
            if out.get("close"):
                break
        out["done"] = True


def test_queue_full_is_429_and_disconnect_frees_the_slot(spawn):
    rep = spawn("--max-batch-size", "1", "--max-queue", "1")
    name = _name(rep)
    started, holder = threading.Event(), {}
    body = {"model": name, "prompt": "while", "stream": True, **LONG}
    t = threading.Thread(target=_stream_until_first_chunk, args=(rep.url, body, started, holder))
    t.start()
    assert started.wait(30), "the long request never started"
    queued = {}

    def queued_request():
        queued["r"] = httpx.post(
            f"{rep.url}/v1/completions",
            json={"model": name, "prompt": "x", "max_tokens": 2},
            timeout=60,
        )

    q = threading.Thread(target=queued_request)
    q.start()
    deadline = time.monotonic() + 10
    while _metric(rep.url, "cp_serving_queue_depth") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    r = httpx.post(f"{rep.url}/v1/completions", json={"model": name, "prompt": "x"})
    assert r.status_code == 429, r.text
    assert int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    # The client of the long stream goes away: its slot must free up at once,
    # long before its 1800 tokens would have been generated.
    t0 = time.monotonic()
    holder["close"] = True
    t.join(10)
    q.join(30)
    assert queued["r"].status_code == 200
    assert time.monotonic() - t0 < 10
    assert holder["chunks"] < 1800
    deadline = time.monotonic() + 5
    while _metric(rep.url, "cp_serving_running_sequences") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _metric(rep.url, "cp_serving_running_sequences") == 0
    assert _metric(rep.url, 'cp_serving_aborted_requests_total{reason="client_disconnect"}') == 1


def test_timeout_is_504(spawn):
    rep = spawn("--request-timeout", "0.3")
    name = _name(rep)
    body = {"model": name, "prompt": "while", **LONG}
    r = httpx.post(f"{rep.url}/v1/completions", json=body, timeout=30)
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "timeout"
    with httpx.stream("POST", f"{rep.url}/v1/completions", json={**body, "stream": True}) as s:
        assert s.status_code == 200  # headers go out with the first token
        text = "".join(s.iter_text())
    assert '"code":"timeout"' in text.replace(" ", "")
    assert "[DONE]" not in text
    # Cancelled, not left running: a short request is served right away.
    ok = httpx.post(
        f"{rep.url}/v1/completions", json={"model": name, "prompt": "x", "max_tokens": 2}
    )
    assert ok.status_code == 200
    assert _metric(rep.url, 'cp_serving_aborted_requests_total{reason="timeout"}') == 2


def test_sigterm_drains_in_flight_requests(spawn):
    rep = spawn("--max-batch-size", "4")
    name = _name(rep)
    results: list = []

    def one():
        body = {"model": name, "prompt": "class", "max_tokens": 1500, "ignore_eos": True}
        results.append(httpx.post(f"{rep.url}/v1/completions", json=body, timeout=60))

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while _metric(rep.url, "cp_serving_running_sequences") < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    rep.proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    assert httpx.get(f"{rep.url}/health").status_code == 503
    late = httpx.post(f"{rep.url}/v1/completions", json={"model": name, "prompt": "x"})
    assert late.status_code == 503
    for t in threads:
        t.join(60)
    assert [r.status_code for r in results] == [200, 200, 200]
    assert all(r.json()["usage"]["completion_tokens"] == 1500 for r in results)
    assert rep.proc.wait(30) == 0
    events = rep.read_events()
    assert events[-1] == {"event": "stopped", "exit_code": 0}


def test_health_is_503_until_ready(spawn):
    rep = spawn(wait_ready=False)
    r = httpx.get(f"{rep.url}/health")
    assert r.status_code == 503 and r.json()["status"] == "loading"
    events = rep.read_events(timeout=60, until="ready")
    assert events[-1]["event"] == "ready"
    assert httpx.get(f"{rep.url}/health").status_code == 200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--quantization", "fp16", "--device", "cpu"], "fp16 needs a GPU"),
        (["--quantization", "int4", "--device", "cpu"], "int4 is GPU-only"),
        (["--device", "cuda:3"], "--device"),
        (["--max-model-len", "999999"], "max_position_embeddings"),
        (["--stream-interval", "0"], "--stream-interval must be positive"),
    ],
)
def test_bad_flags_exit_with_a_message(model_dir, args, message):
    proc = subprocess.run(
        [sys.executable, "-m", "serving.replica", "--model", str(model_dir), "--port", "0", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode in (1, 2)
    assert message in proc.stdout + proc.stderr


def test_missing_model_dir(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "serving.replica", "--model", str(tmp_path / "nope")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "not a directory" in proc.stderr
