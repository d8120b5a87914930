"""Serving: model registry, deployments, the inference engine and the replica server."""
