"""A typical script: takes its output directory as an argument, writes there, and also
writes a results file where an environment variable says."""

import argparse
import os
import pathlib

parser = argparse.ArgumentParser()
parser.add_argument("--output_dir", required=True)
parser.add_argument("--cache_dir", required=True)
args = parser.parse_args()

print(f"output_dir={args.output_dir} cache_dir={args.cache_dir}", flush=True)
out = pathlib.Path(args.output_dir)
(out / "sub").mkdir(parents=True, exist_ok=True)
(out / "model.txt").write_text("weights")
(out / "sub" / "notes.txt").write_text("n" * 1000)
os.symlink("/etc/hostname", out / "hostname-link")
pathlib.Path(os.environ["RESULTS_FILE"]).write_text('{"accuracy": 0.5}')
print("wrote", sorted(p.name for p in out.rglob("*")), flush=True)
