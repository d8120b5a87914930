"""cpctl: the command-line client of the GPU control plane (REST API only; no Django)."""

__version__ = "0.1.0"
