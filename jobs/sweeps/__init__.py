"""Hyperparameter sweeps: a base job spec and a search space; each trial is an ordinary
job of the sweep (same scheduler, quotas and priorities), judged by ASHA when asked."""
