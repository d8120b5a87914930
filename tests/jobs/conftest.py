"""Fixtures for job tests (the host and job factories are in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def own_storage(settings, tmp_path):
    """Each test gets its own CP_STORAGE_DIR (code uploads, checkpoints)."""
    settings.STORAGE_DIR = tmp_path / "storage"
