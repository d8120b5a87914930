"""Jobs: the Job / Attempt / Checkpoint models, the scheduler and the jobs API."""
