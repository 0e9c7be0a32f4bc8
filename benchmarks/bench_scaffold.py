"""Time the `agentic-scaffold` console script, whole process, on an unchanged repository
(target: < 0.3 s). By default the repository is this checkout after its own scaffold run.

Run: python benchmarks/bench_scaffold.py [REPO] [--runs N]. Prints numbers; never fails.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("repo", nargs="?", default=str(Path(__file__).resolve().parent.parent))
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    script = Path(sys.executable).with_name("agentic-scaffold")
    command = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-m", "pytest_agentic.hooks.scaffold"]
    )
    subprocess.run(command, cwd=args.repo, capture_output=True)  # settle: files current
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        proc = subprocess.run(command, cwd=args.repo, capture_output=True)
        times.append(time.perf_counter() - start)
    print(
        f"agentic-scaffold on {args.repo} (unchanged, exit {proc.returncode}): "
        f"median {statistics.median(times):.3f} s, min {min(times):.3f} s, "
        f"max {max(times):.3f} s over {args.runs} runs (target < 0.3 s)"
    )
    interpreter = []
    for _ in range(args.runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], capture_output=True)
        interpreter.append(time.perf_counter() - start)
    bare = statistics.median(interpreter)
    print(f"bare interpreter start-up for comparison: median {bare:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
