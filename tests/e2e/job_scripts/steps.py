"""A light job for the chaos run: STEPS steps of STEP_SECONDS with a checkpoint after each
(a small JSON file through sdk.save_checkpoint: no torch to import, so hundreds of these
start quickly), resuming from the last one. ``--tag`` only names its processes, so that the
run can count how many of one job are alive at once."""

import argparse
import json
import os
import sys
import time
from pathlib import Path

from workers import sdk


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tag", required=True)
    parser.parse_args()
    steps = int(os.environ.get("STEPS", "10"))
    step_seconds = float(os.environ.get("STEP_SECONDS", "0.2"))
    sdk.install_signal_handlers()
    start = 1
    resume = sdk.latest_checkpoint()
    if resume is not None:
        start = json.loads((resume / "state.json").read_text())["step"] + 1
        print(f"resumed from {resume.name}: continuing at step {start}", flush=True)
    scratch = Path(os.environ.get("CP_WORK_DIR", ".")) / "state"
    scratch.mkdir(parents=True, exist_ok=True)
    for step in range(start, steps + 1):
        time.sleep(step_seconds)
        (scratch / "state.json").write_text(json.dumps({"step": step}))
        sdk.save_checkpoint(scratch, step)
        sdk.report(step, total=steps, loss=1.0 / step)
        print(f"step {step}", flush=True)
        if sdk.stop_requested():
            print(f"stop requested: checkpointed step {step}", flush=True)
            return 0
    print("finished all steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
