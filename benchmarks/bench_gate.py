"""The validation gate's cost: the affected-tests re-run per attempt versus the whole suite, on a
real open-source suite with one injected failing test; and tokens per review.

    python benchmarks/bench_gate.py PROJECT_DIR CHANGED_FILE TEST_FILE [--pythonpath DIR]
        [--ignore PATH ...]

PROJECT_DIR is an unpacked sdist (e.g. `pip download --no-deps --no-binary :all: packaging`),
copied to a temporary folder first. CHANGED_FILE is the module an attempt "changes" (a comment is
appended), TEST_FILE the test module a failing test is injected into. Without arguments only the
review tokens are measured. Token counts are the fake server's estimate (bytes / 4).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "tests"))

from fake_anthropic import FakeAnthropic, approve, message, tool_use  # noqa: E402
from pytest_agentic.runner import RerunSettings, run_tests  # noqa: E402
from pytest_agentic.validate import affected_tests, compact, import_graph  # noqa: E402


def bench_rerun(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "project"
        shutil.copytree(args.project, root)
        test_file = root / args.test_file
        test_file.write_text(
            test_file.read_text() + "\n\ndef test_injected_failure():\n    assert False\n"
        )
        target = f"{args.test_file}::test_injected_failure"
        if args.pythonpath:
            os.environ["PYTHONPATH"] = str(root / args.pythonpath)
        extra = tuple(f"--ignore={p}" for p in args.ignore) + ("-p", "no:randomly")
        settings = RerunSettings(rootdir=root, extra_args=extra, timeout=3600)
        start = time.perf_counter()
        session = run_tests([], settings)  # the user's session: the whole suite
        print(f"session: {len(session.outcomes)} tests in {time.perf_counter() - start:.1f} s")
        passing = [n for n, o in session.outcomes.items() if o == "passed"]
        assert session.outcomes.get(target) == "failed", session.output[-2000:]
        changed = root / args.changed_file
        changed.write_text(changed.read_text() + "\n# an attempt's change\n")
        start = time.perf_counter()
        graph = import_graph(root)
        graph_s = time.perf_counter() - start
        start = time.perf_counter()
        affected = affected_tests(root, [args.changed_file], passing, [target])
        select_s = time.perf_counter() - start
        print(
            f"import graph: {len(graph)} files in {graph_s * 1000:.0f} ms; selection "
            f"{select_s * 1000:.0f} ms"
        )
        print(
            f"affected: {len(affected)} of {len(passing)} passing tests "
            f"({len({n.split('::')[0] for n in affected})} files)"
        )
        # As the fixer runs them: whole test files by path (the session deselected nothing).
        files = {n.split("::")[0] for n in session.outcomes}
        variants = (
            ("affected re-run", affected, compact(affected, files)),
            ("whole-suite re-run", passing, compact(passing, files)),
        )
        for name, nodeids, run_args in variants:
            times = []
            for _ in range(args.repeat):
                result = run_tests(run_args, settings)
                assert result.passed(nodeids), result.output[-3000:]
                times.append(result.seconds)
            print(
                f"{name}: {len(nodeids)} tests, median {statistics.median(times):.2f} s "
                f"over {args.repeat} (min {min(times):.2f}, max {max(times):.2f})"
            )


def bench_review_tokens() -> None:
    import anthropic

    from pytest_agentic.agent import Toolbox, Usage
    from pytest_agentic.review import review, review_message
    from pytest_agentic.scope import PathPolicy
    from pytest_agentic.workspace import Journal

    server = FakeAnthropic().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            source = (HERE / "src/pytest_agentic/tasks.py").read_text()
            (root / "tasks.py").write_text(source)
            diff = (
                "--- a/tasks.py\n+++ b/tasks.py\n@@ -1,3 +1,3 @@\n"
                "-cycle = stack[stack.index(task_id) :]\n"
                "+cycle = stack[stack.index(task_id) :] + [task_id]\n"
            )
            # What the fixer shows: the first message's context (~ a test, a failure report,
            # the module under test), the diff, the re-run output.
            context = "Fix the code so that these failing tests pass\n" + source[:12000]
            message_ = review_message(context, diff, "1 passed in 0.05s\n" * 3, [])
            toolbox = Toolbox(
                root,
                PathPolicy(root, for_agent=True),
                Journal(root, "x"),
                lambda: "",
                read_only=True,
            )
            for views in (0, 1, 3):
                server.reply(
                    *[
                        message(
                            tool_use("str_replace_based_edit_tool", command="view", path="tasks.py")
                        )
                    ]
                    * views,
                    approve("Minimal and correct."),
                )
                usage = Usage()
                with anthropic.Anthropic(
                    api_key="sk-bench", base_url=server.url, max_retries=0
                ) as client:
                    review(
                        client,
                        model="claude-sonnet-4-6",
                        message=message_,
                        toolbox=toolbox,
                        usage=usage,
                        api_error=anthropic.APIError,
                    )
                print(
                    f"review with {views} file view(s): {usage.total} tokens "
                    f"({usage.input_tokens} input, {usage.output_tokens} output, "
                    f"{usage.cache_read_input_tokens} cache read, "
                    f"{usage.cache_creation_input_tokens} cache write)"
                )
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("project", nargs="?", type=Path)
    parser.add_argument("changed_file", nargs="?")
    parser.add_argument("test_file", nargs="?")
    parser.add_argument("--pythonpath")
    parser.add_argument("--ignore", action="append", default=[])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    bench_review_tokens()
    if args.project:
        bench_rerun(args)


if __name__ == "__main__":
    main()
