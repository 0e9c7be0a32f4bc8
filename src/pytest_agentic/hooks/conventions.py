"""The agentic-conventions pre-commit hook: AGENTS.md and knowledge files name only paths
and commands that exist, keep their sections, and fit the size budgets.

Exit 0 when clean, 1 with one `file:line: message` per problem, 2 on a configuration error.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pytest_agentic.errors import run_main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="agentic-conventions",
        description="Check AGENTS.md, knowledge and pointer files: stale paths and commands, "
        "missing sections, size budgets.",
    )
    # Ignored on purpose: a staged run and --all-files must give the same verdict, so the
    # whole set of convention files is checked whatever pre-commit passes.
    parser.add_argument("filenames", nargs="*", help="ignored")
    parser.parse_args(argv)

    def body() -> int:
        from pytest_agentic.config import load_config
        from pytest_agentic.conventions.lint import lint

        problems = lint(load_config())
        for problem in problems:
            print(problem)
        return 1 if problems else 0

    return run_main(body, "agentic-conventions")


if __name__ == "__main__":
    raise SystemExit(main())
