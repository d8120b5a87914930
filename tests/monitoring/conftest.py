"""Fixtures of the telemetry tests: the fake NVML library with a chosen set of GPUs."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from monitoring.nvml import Nvml

FAKE_NVML_DIR = str(Path(__file__).resolve().parent.parent / "fake_nvml")


@pytest.fixture
def fake_gpus(monkeypatch) -> Callable[[list | int | None], Nvml]:
    """``fake_gpus(spec)``: a started NVML gateway over the FAKE pynvml with ``spec``'s GPUs
    (None: the library is missing)."""

    def start(spec: list | int | None) -> Nvml:
        monkeypatch.syspath_prepend(FAKE_NVML_DIR)
        monkeypatch.delitem(sys.modules, "pynvml", raising=False)
        if spec is None:
            monkeypatch.delenv("FAKE_NVML_GPUS", raising=False)
        else:
            monkeypatch.setenv("FAKE_NVML_GPUS", json.dumps(spec))
        gateway = Nvml()
        gateway.start()
        import pynvml

        assert getattr(pynvml, "FAKE", False), "the tests must run against the fake library"
        return gateway

    return start
