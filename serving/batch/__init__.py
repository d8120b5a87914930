"""Batch inference: a job that runs a registered model version over a JSONL of prompts.

``services`` (control plane) checks the input and creates the job, sharded over
``nodes`` nodes; ``runner`` (``python -m serving.batch``, in the job's sandbox) runs its
shard through the engine and appends one JSONL row per prompt to its shard file in the
job's checkpoint directory, which survives attempts: a restarted shard skips the rows it
already wrote. ``output`` merges the shards in input order for download.
"""
