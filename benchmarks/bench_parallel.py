"""Parallel fix attempts: wall time for k independent failures when every reply takes 2 s.

Each failure is its own module with its own bug; each conversation is two replies (an edit,
then the end of the turn), each delayed 2 s by the fake Messages API. Serial, k failures
take about k * 4 s plus re-runs; with k workers the goal is k=8 within 1.5 x k=1.

    python benchmarks/bench_parallel.py [--workers N]   (default: N = k)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "tests"))

from fake_anthropic import Delay, FakeAnthropic, Request, approve, done, edit, message  # noqa: E402

REPLY_SECONDS = 2.0


def project(root: Path, k: int) -> dict[str, list[Any]]:
    (root / "pyproject.toml").write_text('[tool.pytest.ini_options]\npythonpath = ["."]\n')
    (root / "tests").mkdir()
    scripts: dict[str, list[Any]] = {}
    for i in range(k):
        (root / f"mod_{i}.py").write_text("def value():\n    return 0\n")
        (root / "tests" / f"test_{i}.py").write_text(
            f"from mod_{i} import value\n\n\ndef test_{i}():\n    assert value() == 1\n"
        )
        fix = message(edit(f"mod_{i}.py", "return 0", "return 1"))
        scripts[f"tests/test_{i}.py::test_{i}"] = [fix, done()]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "base"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    return scripts


def reply_for(scripts: dict[str, list[Any]]) -> Any:
    def reply(request: Request) -> Any:
        if any(t.get("name") == "submit_review" for t in request.body.get("tools", [])):
            return Delay(REPLY_SECONDS, approve())  # the reviewer (on by default) approves
        prompt = request.body["messages"][0]["content"][0]["text"]
        key = next(k for k in scripts if f"- {k}\n" in prompt + "\n")
        return Delay(REPLY_SECONDS, scripts[key].pop(0) if scripts[key] else done())

    return reply


def fix_run(k: int, workers: int) -> tuple[float, float, float, int]:
    """(whole pytest process s, fix loop s, test re-runs s, most requests in flight)."""
    fake = FakeAnthropic().start()
    env = {
        **os.environ,
        "ANTHROPIC_BASE_URL": fake.url,
        "ANTHROPIC_API_KEY": "bench",
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@example.com",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@example.com",
    }
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            fake.reply(*[reply_for(project(root, k))] * (3 * k))  # fix, done, review
            start = time.perf_counter()
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-q",
                    "-p",
                    "no:cacheprovider",
                    "--agent-fix",
                    "--agent-workers",
                    str(workers),
                    "--agent-report",
                    "r.json",
                ],
                cwd=root,
                env=env,
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - start
            assert proc.returncode == 0, proc.stdout[-3000:]
            seconds = json.loads((root / "r.json").read_text())["seconds"]
            times = sorted(r.received for r in fake.requests)
            held = max(
                sum(1 for t in times if first <= t < first + REPLY_SECONDS) for first in times
            )
            return wall, seconds["fix_loop"], seconds["test_reruns"], held
    finally:
        fake.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=0, help="default: k")
    parser.add_argument("--ks", default="1,2,4,8")
    args = parser.parse_args(argv)
    results = {}
    for k in (int(x) for x in args.ks.split(",")):
        workers = args.workers or k
        wall, loop, reruns, held = fix_run(k, workers)
        results[k] = loop
        print(
            f"k={k} workers={workers}: fix loop {loop:.2f} s (whole pytest {wall:.2f} s, "
            f"test re-runs {reruns:.2f} s summed over threads), up to {held} requests in flight"
        )
    if 1 in results and 8 in results:
        print(f"k=8 / k=1 fix-loop time: {results[8] / results[1]:.2f} (goal <= 1.5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
