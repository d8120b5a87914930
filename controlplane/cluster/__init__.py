"""Cluster inventory: worker hosts and their GPUs, registration and heartbeat."""
