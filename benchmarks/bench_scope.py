"""agentic-scope on big staged changes: whole-process wall time, as pre-commit would run it.

A task with 50 globs; a staged change of 500, 5,000 and 50,000 new files (half in scope).
Prints the median of several runs per size. Goal (issue 2): 5,000 files under 0.5 s.

    python benchmarks/bench_scope.py [--sizes 500,5000,50000] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def make_repo(root: Path, files: int) -> None:
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    (root / "pyproject.toml").write_text('[project]\nname = "bench"\n')
    globs = [f"src/pkg{i}/**" for i in range(25)] + [f"lib/mod{i}_*.py" for i in range(25)]
    tasks = root / ".agentic" / "tasks"
    tasks.mkdir(parents=True)
    (tasks / "bench.toml").write_text(
        "scope = [" + ", ".join(f'"{g}"' for g in globs) + "]\n", encoding="utf-8"
    )
    git(root, "add", "-A")
    git(root, "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "init")
    (root / ".agentic" / "active").write_text("bench\n")
    for i in range(files):
        # Half the files in scope, half outside (so the hook reports and fails).
        rel = f"src/pkg{i % 25}/m{i}.py" if i % 2 else f"other/d{i % 97}/m{i}.py"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"x = {i}\n")
    git(root, "add", "-A")


def time_hook(root: Path, runs: int) -> float:
    exe = shutil.which("agentic-scope") or str(Path(sys.executable).with_name("agentic-scope"))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run([exe], cwd=root, capture_output=True)
        times.append(time.perf_counter() - start)
        assert proc.returncode == 1, proc.stderr[-500:]
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="500,5000,50000")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    env_home = tempfile.mkdtemp(prefix="bench-scope-")
    os.environ.pop("PYTEST_AGENTIC_TASK", None)
    try:
        print(f"{'files':>8} {'median s':>9} {'us/file':>8}")
        for size in (int(s) for s in args.sizes.split(",")):
            root = Path(env_home) / f"r{size}"
            make_repo(root, size)
            t = time_hook(root, args.runs)
            print(f"{size:>8} {t:>9.3f} {t / size * 1e6:>8.1f}")
    finally:
        shutil.rmtree(env_home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
