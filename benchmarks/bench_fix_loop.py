"""One fix against the fake Messages API (zero latency): the loop's own overhead per attempt.

Overhead = wall time of the fix loop minus the time spent re-running tests (the model answers
instantly here). Also prints the input tokens the first request of an attempt carries on a
realistic repository: a copy of this project with a bug planted in `tasks.py`. Token counts are
the fake server's estimate (bytes / 4), not a tokenizer's.

    python benchmarks/bench_fix_loop.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "tests"))

from fake_anthropic import FakeAnthropic, done, edit, message  # noqa: E402

BUG = ("cycle = stack[stack.index(task_id) :] + [task_id]", "cycle = stack[stack.index(task_id) :]")


def realistic_repo(root: Path) -> None:
    for name in ("src", "tests", "templates", "AGENTS.md", "docs"):
        source = HERE / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy(source, root / name)
    (root / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\npythonpath = ["src", "tests"]\naddopts = ["-p", "pytester"]\n'
    )
    tasks = root / "src/pytest_agentic/tasks.py"
    tasks.write_text(tasks.read_text().replace(*BUG))


def fix_run(attempts: int) -> tuple[dict, FakeAnthropic, float]:
    """A fix that lands on attempt `attempts` (the earlier ones change the wrong line)."""
    fake = FakeAnthropic().start()
    env = {**os.environ, "ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_API_KEY": "bench"}
    wrong = edit("src/pytest_agentic/tasks.py", "ACTIVE_FILE = ", "ACTIVE_FILE: str = ")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            realistic_repo(root)
            for _ in range(attempts - 1):
                fake.reply(message(wrong), done())
            fake.reply(message(edit("src/pytest_agentic/tasks.py", BUG[1], BUG[0])), done())
            start = time.perf_counter()
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-q",
                    "-p",
                    "no:cacheprovider",
                    "tests/test_tasks.py",
                    "--agent-fix",
                    "--agent-report",
                    "r.json",
                    "--agent-max-attempts",
                    str(attempts),
                ],
                cwd=root,
                env=env,
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - start
            assert proc.returncode == 0, proc.stdout[-3000:]
            return json.loads((root / "r.json").read_text()), fake, wall
    finally:
        fake.stop()


def main() -> int:
    one, fake, wall = fix_run(1)
    three, _, _ = fix_run(3)
    first = fake.requests[0].body
    prompt_chars = sum(len(json.dumps(b)) for b in first["messages"][0]["content"])
    s1, s3 = one["seconds"], three["seconds"]
    o1 = s1["fix_loop"] - s1["test_reruns"]
    o3 = s3["fix_loop"] - s3["test_reruns"]
    print(
        f"1 attempt: whole pytest process {wall:.2f} s; fix loop {s1['fix_loop']:.2f} s, "
        f"test re-runs {s1['test_reruns']:.2f} s, loop overhead {o1:.3f} s "
        "(includes importing the SDK once)"
    )
    print(
        f"3 attempts: fix loop {s3['fix_loop']:.2f} s, test re-runs {s3['test_reruns']:.2f} s, "
        f"loop overhead {o3:.3f} s"
    )
    print(f"loop overhead per additional attempt: {(o3 - o1) / 2 * 1000:.1f} ms")
    print(f"first message: {prompt_chars} chars (~{prompt_chars // 4} tokens)")
    for label, report in (("1 attempt", one), ("3 attempts", three)):
        u = report["usage"]
        attempts = sum(f["attempts"] for f in report["failures"])
        total_in = (
            u["input_tokens"] + u["cache_read_input_tokens"] + u["cache_creation_input_tokens"]
        )
        print(
            f"{label}: input tokens per attempt {total_in // attempts} "
            f"(uncached {u['input_tokens']}, cache read {u['cache_read_input_tokens']}, "
            f"cache write {u['cache_creation_input_tokens']} in all)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
