"""Time `pytest-agentic init` on a generated repository of 2,000 modules (target: < 2 s).

Run: python benchmarks/bench_init.py [--modules N]. Prints numbers; never fails a test run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODULE = '''"""Module {i}: does thing number {i} for the benchmark."""

from __future__ import annotations

import os

CONSTANT_{i} = {i}


def function_{i}(value: int) -> int:
    """Return value plus {i}."""
    return value + CONSTANT_{i}


class Thing{i}:
    """A thing."""

    def method(self) -> int:
        return function_{i}(1)


def _private_{i}() -> None:
    os.getcwd()
'''


def make_repo(root: Path, modules: int, packages: int = 20) -> None:
    (root / "pyproject.toml").write_text(
        '[project]\nname = "big"\nversion = "1.0"\nrequires-python = ">=3.10"\n'
        '[tool.ruff]\nline-length = 100\n[tool.pytest.ini_options]\ntestpaths = ["tests"]\n'
    )
    per = modules // packages
    for p in range(packages):
        pkg = root / "src" / f"pkg{p:02d}"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(f'"""Package {p}."""\n')
        for m in range(per - 1):
            (pkg / f"mod{m:03d}.py").write_text(MODULE.format(i=m))
    (root / "tests").mkdir()
    (root / "tests" / "test_big.py").write_text("def test_ok():\n    pass\n")
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "b",
        "GIT_AUTHOR_EMAIL": "b@x",
        "GIT_COMMITTER_NAME": "b",
        "GIT_COMMITTER_EMAIL": "b@x",
    }
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "big"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=env)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--modules", type=int, default=2000)
    args = parser.parse_args()
    from pytest_agentic.config import load_config
    from pytest_agentic.conventions.init import apply_changes, plan_init

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_repo(root, args.modules)
        count = len(list(root.rglob("*.py")))
        start = time.perf_counter()
        apply_changes(root, plan_init(load_config(root)))
        first = time.perf_counter() - start
        start = time.perf_counter()
        again = plan_init(load_config(root))
        second = time.perf_counter() - start
        print(f"init, {count} modules: first run {first:.3f} s (target < 2 s)")
        print(f"init, {count} modules: second run {second:.3f} s, {len(again)} changes")
        scaffold = Path(sys.executable).with_name("agentic-scaffold")
        if scaffold.exists():
            start = time.perf_counter()
            proc = subprocess.run([str(scaffold)], cwd=root, capture_output=True)
            took = time.perf_counter() - start
            print(
                f"agentic-scaffold process, {count} modules, unchanged: {took:.3f} s "
                f"(exit {proc.returncode})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
