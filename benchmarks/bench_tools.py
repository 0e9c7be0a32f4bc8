"""The agent's read tools on a project-sized tree: what a view, a listing and a search cost.

A tree of N Python modules (200 lines each) plus a 50 MB file; prints the median wall time of
`view` (capped), a folder listing (every entry asks the read policy) and `search` (the child
process that can be killed at the time limit included), and the size of what would go back to
the model. Issue #10: a 50 MB view must cost one capped result, a search well under a second.

    python benchmarks/bench_tools.py [--modules 2000] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pytest_agentic.agent import Toolbox
from pytest_agentic.config import DEFAULT_PROTECTED
from pytest_agentic.scope import PathPolicy
from pytest_agentic.workspace import Journal


def make_tree(root: Path, modules: int) -> None:
    body = "".join(f"def f{n}(x):\n    return x + {n}\n\n" for n in range(66))
    for i in range(modules):
        folder = root / "src" / f"pkg{i % 40}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"mod{i}.py").write_text(body)
    line = "x = 'fifty megabytes of generated data, line after line'\n"
    (root / "big.py").write_text(line * (50_000_000 // len(line)))
    (root / ".env").write_text("SECRET=1\n")


def timed(runs: int, call: Callable[[], tuple[str, bool]]) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        text, is_error = call()
        times.append(time.perf_counter() - start)
        assert not is_error, text
        size = len(text)
    return statistics.median(times), size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--modules", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_tree(root, args.modules)
        policy = PathPolicy(root, protected=DEFAULT_PROTECTED, for_agent=True)
        tools = Toolbox(root, policy, Journal(root, "bench"), lambda: "")
        editor = "str_replace_based_edit_tool"
        cases: dict[str, Callable[[], tuple[str, bool]]] = {
            "view big.py (50 MB)": lambda: tools.call(
                editor, {"command": "view", "path": "big.py"}
            ),
            "view listing of src/": lambda: tools.call(editor, {"command": "view", "path": "src"}),
            "search r'return x \\+ 65$' (all files)": lambda: tools.call(
                "search", {"pattern": r"return x \+ 65$"}
            ),
            "search 'def f3\\b' in src/pkg1/": lambda: tools.call(
                "search", {"pattern": r"def f3\b", "path": "src/pkg1/"}
            ),
        }
        print(f"{args.modules} modules of 200 lines, plus a 50 MB file; median of {args.runs}")
        for name, call in cases.items():
            seconds, size = timed(args.runs, call)
            print(f"{name:45} {seconds * 1000:8.1f} ms  {size:7d} chars back to the model")


if __name__ == "__main__":
    main()
