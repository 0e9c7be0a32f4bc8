"""The agentic-scaffold pre-commit hook: create missing convention files, refresh stale
generated sections; exit 1 when it changed a file (as formatters do), 0 when all is current."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pytest_agentic.errors import run_main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="agentic-scaffold",
        description="Create missing AGENTS.md, knowledge and pointer files; refresh their "
        "generated sections. Exit 1 when a file changed, 0 when all are current, 2 on a "
        "configuration error.",
    )
    # pre-commit may pass file names; the verdict is about the repository as a whole.
    parser.add_argument("filenames", nargs="*", help="ignored")
    parser.add_argument(
        "--no-verify", action="store_true", help="do not check the commands AGENTS.md names"
    )
    args = parser.parse_args(argv)

    def body() -> int:
        # Imported here so `--help` and argument errors stay instant.
        from pytest_agentic.config import load_config
        from pytest_agentic.conventions.init import apply_changes, command_checker
        from pytest_agentic.conventions.introspect import introspect
        from pytest_agentic.conventions.render import plan_scaffold

        config = load_config()
        # The same verification as init, or a refresh would put back what init left out.
        left_out: list[str] = []
        works = None if args.no_verify else command_checker(config.root, left_out)
        changes = plan_scaffold(config, introspect(config.root), works)
        for line in left_out:
            print(f"agentic-scaffold: {line}")
        apply_changes(config.root, changes)
        for change in changes:
            verb = "created" if change.old is None else "refreshed"
            print(f"agentic-scaffold: {verb} {change.path}")
        return 1 if changes else 0

    return run_main(body, "agentic-scaffold")


if __name__ == "__main__":
    raise SystemExit(main())
