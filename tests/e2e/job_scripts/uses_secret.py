"""Reads a project secret from its environment; prints only a digest of it."""

import hashlib
import os

value = os.environ["HF_TOKEN"]
print(f"secret digest {hashlib.sha256(value.encode()).hexdigest()}", flush=True)
