"""What live progress and the reports cost: per event, and for a large run's markdown.

Prints numbers; never fails. `python benchmarks/bench_progress.py`
"""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path

from pytest_agentic.progress import LiveProgress
from pytest_agentic.report import Outcome, Refused, RunReport

EVENTS = 100_000


def per_event(width: int | None) -> float:
    out = io.StringIO()
    progress = LiveProgress(out.write, width=width, spent=lambda: (123_456, 0.4321))
    fields = {
        "nodeid": "tests/test_calc.py::test_add",
        "index": 3,
        "total": 29,
        "name": "str_replace_based_edit_tool",
        "input": {"command": "str_replace", "path": "src/calc.py"},
        "result": "Edited src/calc.py.",
        "is_error": False,
    }
    start = time.perf_counter()
    for _ in range(EVENTS):
        progress("tool", **fields)
    return (time.perf_counter() - start) / EVENTS * 1e6


def markdown_seconds(failures: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        outcomes = []
        for i in range(failures):
            patch = f"{i:02d}-t.patch"
            (run / patch).write_text(
                "--- a/calc.py\n+++ b/calc.py\n@@ -1,1 +1,1 @@\n-x = 1\n+x = 2\n" * 20
            )
            outcomes.append(
                Outcome(
                    f"tests/test_m.py::test_{i}",
                    "fixed" if i % 3 else "not_fixed",
                    1,
                    ("calc.py",),
                    "" if i % 3 else "the test still fails",
                    refusals=(Refused("tests/test_m.py", "protected"),),
                    usage={"input_tokens": 100, "output_tokens": 50},
                    patch=patch,
                )
            )
        report = RunReport(outcomes=outcomes, model="claude-sonnet-4-6", run_dir=run, exit_status=1)
        start = time.perf_counter()
        body = report.markdown()
        return time.perf_counter() - start, len(body)


def main() -> None:
    print(f"progress event, plain lines:      {per_event(None):6.2f} µs")
    print(f"progress event, terminal rewrite: {per_event(100):6.2f} µs")
    for n in (29, 1000):
        seconds, size = markdown_seconds(n)
        print(f"markdown report, {n:4} failures:   {seconds * 1000:6.1f} ms, {size:,} characters")


if __name__ == "__main__":
    main()
