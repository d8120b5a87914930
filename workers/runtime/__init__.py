"""The workload runtime: every job node (and, later, replica and batch shard) runs through
it. ``environments`` builds or reuses the node's Python environment (uv), ``containers``
runs it in an image (podman or docker), ``sandbox`` wraps it in bubblewrap under an
unprivileged uid."""
