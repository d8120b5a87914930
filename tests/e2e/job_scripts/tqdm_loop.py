"""A loop with a tqdm bar and nothing else: no SDK, no metrics."""

import sys
import time

from tqdm import tqdm

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 40
print("starting", flush=True)
for _ in tqdm(range(steps), mininterval=0.05):
    time.sleep(0.1)
print("finished", flush=True)
