"""Needs a package the worker's environment does not have (installed by environment.pip)."""

import sys

import tomli_w
import torch  # from the worker's environment, underneath

print(f"tomli_w {tomli_w.dumps({'ok': True}).strip()} torch {torch.__version__}", flush=True)
print(f"prefix {sys.prefix}", flush=True)
