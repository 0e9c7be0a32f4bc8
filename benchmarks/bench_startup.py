"""Start-up cost of the installed plugin without --agent-fix.

pytest on a generated 2,000-test suite, with the plugin loaded vs `-p no:agentic`; runs are
interleaved and the ratio of medians is printed. Goal (issue 3): <= 1.01.

    python benchmarks/bench_startup.py [--tests 2000] [--runs 9]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_suite(root: Path, tests: int) -> None:
    (root / "pyproject.toml").write_text('[project]\nname = "bench"\n')
    per_file = 100
    for f in range(tests // per_file):
        body = "\n".join(f"def test_{i}():\n    assert {i} == {i}\n" for i in range(per_file))
        (root / f"test_m{f}.py").write_text(body)


def run(root: Path, extra: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra],
        cwd=root,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-2000:]
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tests", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_suite(root, args.tests)
        run(root, [])  # warm the file cache and bytecode
        with_plugin, without = [], []
        for _ in range(args.runs):
            with_plugin.append(run(root, []))
            without.append(run(root, ["-p", "no:agentic"]))
    a, b = statistics.median(with_plugin), statistics.median(without)
    print(f"tests: {args.tests}, runs: {args.runs} each, interleaved")
    print(f"median with plugin:        {a:.3f} s")
    print(f"median with -p no:agentic: {b:.3f} s")
    print(f"ratio: {a / b:.4f} (goal <= 1.01)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
