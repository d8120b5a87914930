"""A two-process gloo job that holds its rendezvous store and gloo sockets open until it is
cancelled (SIGTERM): for checking where they listen."""

import signal
import sys
import time

import torch.distributed as dist

stop = False


def on_term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
dist.init_process_group("gloo")
rank = dist.get_rank()
print(f"rank {rank} listening", flush=True)
deadline = time.monotonic() + 60
while not stop and time.monotonic() < deadline:
    time.sleep(0.1)
print(f"rank {rank} stopping", flush=True)
sys.exit(0)
