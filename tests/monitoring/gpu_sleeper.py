"""A job for the telemetry end-to-end tests: holds its GPU until told to stop."""

import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("holding the GPU", flush=True)
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    time.sleep(0.2)
