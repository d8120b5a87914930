"""Static files with hashed names, compressed once at start (WhiteNoise), so a browser
fetches plotly.js (4.8 MB, 1.4 MB gzipped) once and keeps it: a hashed name never
changes content, and WhiteNoise serves those with a cache lifetime of a year.

``controlplane.stack`` runs ``collectstatic`` before it starts the server. Where nothing
was collected (a test's Django client, a checkout run without the stack) a name that is
not in the manifest is served under its own name by the finders, not refused."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticStorage(CompressedManifestStaticFilesStorage):
    manifest_strict = False

    def hashed_name(self, name: str, content: Any = None, filename: str | None = None) -> str:
        try:
            return super().hashed_name(name, content, filename)
        except ValueError:  # not collected here: the finders serve it under its own name
            return name


def _sources_digest() -> str:
    """A digest of every static source's name, size and mtime: cheap (no reads)."""
    from django.contrib.staticfiles.finders import get_finders

    digest = hashlib.sha256()
    for finder in get_finders():
        for path, storage in sorted(finder.list(["CVS", ".*", "*~"]), key=lambda x: x[0]):
            stat = os.stat(storage.path(path))
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def collect_if_changed() -> bool:
    """Run ``collectstatic`` unless the sources are what the last run collected (hashing
    and compressing takes seconds; a restart with the same files needs none of it)."""
    from django.conf import settings
    from django.core.management import call_command

    stamp = Path(settings.STATIC_ROOT) / ".sources"
    digest = _sources_digest()
    if stamp.exists() and stamp.read_text() == digest:
        return False
    call_command("collectstatic", interactive=False, verbosity=0)
    stamp.write_text(digest)
    return True
