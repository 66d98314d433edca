"""Time of the grading harness on the shipped checkpoints and data/, per part, against its targets
(hw_run.sh <= 10 min and the scorer <= 5 min on 2 CPU cores). Runs the real commands as a grader would:

    python benchmarks/grading_speed.py --data data --out /tmp/grading_bench
    python benchmarks/grading_speed.py --threads 1        # OMP_NUM_THREADS=1 for both commands

Each command's wall time is measured here; the per-part times come from manifest.json and score.json. The first
scorer run on a machine also fills the reference-feature cache of the held-out faces; --warm scores a second time
to show the cached case.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"hw_run": 600.0, "score": 300.0}  # seconds: hw_run.sh <= 10 min, the scorer <= 5 min


def timed(command: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, done.returncode, done.stdout or done.stderr  # the summary is on stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("DLCV_DATA", str(ROOT / "data")))
    parser.add_argument("--out", default="/tmp/grading_bench", help="replaced if it exists")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for both commands (0: default)")
    parser.add_argument("--skip-run", action="store_true", help="score an existing --out without re-running hw_run")
    parser.add_argument("--warm", action="store_true", help="score twice; the table shows the second run")
    args = parser.parse_args()
    env = {**os.environ, "PYTHON": sys.executable}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    out = Path(args.out)
    walls = {}
    if not args.skip_run:
        shutil.rmtree(out, ignore_errors=True)
        walls["hw_run"], code, log = timed(["bash", "grading/hw_run.sh", str(out), args.data], env)
        print(log.strip().splitlines()[-1], f"(exit {code})", flush=True)
    scorer = [sys.executable, "-m", "grading.score", str(out), "--data", args.data]
    for label in ("score (first run)", "score (warm cache)")[:2 if args.warm else 1]:
        walls[label], _, log = timed(scorer, env)
        print(log.strip().splitlines()[-1], flush=True)
    seconds = json.loads((out / "score.json").read_text())["seconds"]
    manifest = json.loads((out / "manifest.json").read_text())

    print(f"\nOMP_NUM_THREADS: {env.get('OMP_NUM_THREADS', 'unset')}, cores: {os.cpu_count()}\n")
    print("| part | hw_run.sh (s) | status | scorer (s) |")
    print("| --- | ---: | --- | ---: |")
    for name in ("faces", "digits", "adaptation"):
        part = manifest["parts"].get(name, {})
        print(f"| {name} | {part.get('seconds', 0):.1f} | {part.get('status', '-')} | {seconds.get(name, 0):.1f} |")
    print("\n| command | wall (s) | target (s) |\n| --- | ---: | ---: |")
    for name, seconds in walls.items():
        target = TARGETS["score" if name.startswith("score") else "hw_run"]
        print(f"| {name} | {seconds:.1f} | {target:.0f}{'' if seconds <= target else ' (missed)'} |")
    for entry in (e for p in manifest["parts"].values() for e in p["entries"]):
        print(f"  {entry['output']:<44} {entry['status']:<8} {entry['seconds']:7.1f} s")


if __name__ == "__main__":
    main()
