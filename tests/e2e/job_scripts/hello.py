import os

print(f"hello from job {os.environ['CP_JOB_ID']}", flush=True)
