"""What `make venv` installs keeps every interpreter of the venv quick to start: jobs,
ranks and replicas all run on it."""

from __future__ import annotations

import subprocess
import sys


def test_the_venvs_interpreter_starts_without_an_editable_finder():
    # The default editable install of `cpctl` adds a .pth that imports a path finder at
    # every start (16 ms each); the Makefile installs it in strict mode instead.
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import cpctl"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "__editable__" not in done.stderr and "_finder" not in done.stderr, [
        line for line in done.stderr.splitlines() if "editable" in line
    ]
