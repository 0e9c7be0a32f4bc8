"""Start-up cost of the installed plugin without --agent-fix.

pytest on a generated 2,000-test suite, with the plugin loaded (A) vs `-p no:agentic` (B). Each
pair runs A and B back to back, alternating which goes first, and the ratio A/B is taken per
pair: on a shared, noisy machine the load drifts between pairs far more than within one, so
the median of per-pair ratios can check the goal where a ratio of medians cannot (issue 13
measured 1.03-1.10 that way for a plugin whose paired ratio is 1.000-1.003). Both wall time and
CPU time (user + system of the pytest process) are paired; the goal is checked on CPU time,
which other processes competing for the cores hardly move (under a load of 13 on 2 cores the
wall-time ratios of single pairs spread from 0.87 to 1.34). The ratio of the fastest runs is
printed too: noise only ever adds time, so on a busy machine it is the steadier estimate.
Goal: <= 1.01.

    python benchmarks/bench_startup.py [--tests 2000] [--pairs 15]
"""

from __future__ import annotations

import argparse
import resource
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


def run(root: Path, extra: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one pytest run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra],
        cwd=root,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0, proc.stdout[-2000:]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def paired(label: str, a: list[float], b: list[float]) -> float:
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    q1, q2, q3 = statistics.quantiles(ratios, n=4)
    print(
        f"{label}: median with plugin {statistics.median(a):.3f} s, with -p no:agentic "
        f"{statistics.median(b):.3f} s; per-pair ratio median {q2:.4f} "
        f"(quartiles {q1:.4f}-{q3:.4f}); ratio of minima {min(a) / min(b):.4f}"
    )
    return statistics.median(ratios)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tests", type=int, default=2000)
    parser.add_argument("--pairs", type=int, default=15)
    args = parser.parse_args()
    with_plugin: list[tuple[float, float]] = []
    without: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_suite(root, args.tests)
        run(root, [])  # warm the file cache and bytecode
        run(root, ["-p", "no:agentic"])
        for pair in range(args.pairs):
            if pair % 2:
                b = run(root, ["-p", "no:agentic"])
                a = run(root, [])
            else:
                a = run(root, [])
                b = run(root, ["-p", "no:agentic"])
            with_plugin.append(a)
            without.append(b)
    print(f"tests: {args.tests}, pairs: {args.pairs} (A/B back to back, order alternating)")
    paired("wall time", [a[0] for a in with_plugin], [b[0] for b in without])
    ratio = paired("CPU time ", [a[1] for a in with_plugin], [b[1] for b in without])
    verdict = "met" if ratio <= 1.01 else "NOT met"
    print(f"median per-pair CPU-time ratio: {ratio:.4f} (goal <= 1.01: {verdict})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
