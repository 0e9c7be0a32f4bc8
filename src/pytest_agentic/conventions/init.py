"""`pytest-agentic init`: convention files, the bookkeeping ignore file and our pre-commit hooks.

`plan_init` decides everything and writes nothing (so `--dry-run` and tests see the exact
result); `apply_changes` writes it atomically.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pytest_agentic.config import Config, load_config
from pytest_agentic.conventions.introspect import introspect
from pytest_agentic.conventions.render import FileChange, plan_scaffold
from pytest_agentic.errors import AgenticError, run_main
from pytest_agentic.safeio import (
    MAX_TEXT_BYTES,
    escape,
    is_symlink,
    read_bytes_bounded,
    write_project_files,
)
from pytest_agentic.scope import BOOKKEEPING
from pytest_agentic.workspace import BOOKKEEPING_IGNORE

HOOK_IDS = ("agentic-scope", "agentic-scaffold", "agentic-conventions")

# `repo: local` with `language: system`: the hooks run the pytest-agentic the project
# already installed (init itself runs from it), so no hook repository URL or rev to pin.
HOOKS_BLOCK = """\
- repo: local
  hooks:
  - id: agentic-scope
    name: agentic-scope (changes stay inside the active task's scope)
    entry: agentic-scope
    language: system
    pass_filenames: false
    always_run: true
    stages: [pre-commit, pre-push]
  - id: agentic-scaffold
    name: agentic-scaffold (refresh AGENTS.md and knowledge files)
    entry: agentic-scaffold
    language: system
    pass_filenames: false
    always_run: true
  - id: agentic-conventions
    name: agentic-conventions (check AGENTS.md and knowledge files)
    entry: agentic-conventions
    language: system
    pass_filenames: false
    always_run: true
"""


def _indent(block: str, prefix: str) -> str:
    return "".join(prefix + line if line.strip() else line for line in block.splitlines(True))


def plan_precommit_config(old: str | None, where: str = ".pre-commit-config.yaml") -> str:
    """Our two hooks added to `.pre-commit-config.yaml` as text, so the user's comments,
    order and formatting stay exactly as they were; the result is parsed to prove it."""
    import yaml

    if old is None or not old.strip():
        return "repos:\n" + HOOKS_BLOCK
    try:
        data = yaml.safe_load(old)
    except RecursionError:
        raise AgenticError(f"{where}: not valid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        raise AgenticError(f"{where}: not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise AgenticError(f"{where}: expected a mapping with a `repos:` list")
    present = {
        hook.get("id")
        for repo in data.get("repos") or []
        if isinstance(repo, dict)
        for hook in repo.get("hooks") or []
        if isinstance(hook, dict)
    }
    if all(hook_id in present for hook_id in HOOK_IDS):
        return old
    lines = old.splitlines(True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    repos_at = next(
        (i for i, line in enumerate(lines) if re.match(r"^repos:\s*(#.*)?$", line)), None
    )
    if repos_at is None:
        if "repos" in data:  # `repos: []` or a flow list: too odd to edit as text
            raise AgenticError(
                f"{where}: cannot add the agentic hooks to this `repos:`; add them by hand "
                "(see the README)"
            )
        new = "".join(lines) + "repos:\n" + HOOKS_BLOCK
    else:
        # The list ends at the next top-level key; items keep the indentation they use.
        end = len(lines)
        indent = ""
        for i in range(repos_at + 1, len(lines)):
            line = lines[i]
            if line.strip() and not line.startswith((" ", "-", "#", "\t")):
                end = i
                break
            item = re.match(r"^(\s*)- ", line)
            if item and not indent and "repo" in line:
                indent = item.group(1)
        while end > repos_at + 1 and not lines[end - 1].strip():
            end -= 1
        new = "".join(lines[:end]) + _indent(HOOKS_BLOCK, indent) + "".join(lines[end:])
    try:
        parsed = yaml.safe_load(new)
        ids = {h["id"] for r in parsed["repos"] for h in r.get("hooks", [])}
    except (yaml.YAMLError, KeyError, TypeError):
        ids = set()
    if not set(HOOK_IDS) <= ids:
        raise AgenticError(
            f"{where}: cannot add the agentic hooks without disturbing this file; add them "
            "by hand (see the README)"
        )
    return new


# `python -m unittest` with no arguments is discovery from the current folder; this loads
# the same tests without running them, and fails on import errors or an empty suite.
UNITTEST_COLLECT = (
    "import sys, unittest; sys.dont_write_bytecode = True; "
    "loader = unittest.TestLoader(); suite = loader.discover('.'); "
    "sys.exit(1 if loader.errors or not suite.countTestCases() else 0)"
)
VERIFY_TIMEOUT = 120


def verify_command(root: Path, command: str) -> str | None:
    """Why `command` does not work here, or None. Cheap: the test command only collects
    (`--collect-only -q`, or unittest discovery without running), `make` only dry-runs
    (`make -n`). Install and lint commands name files already found, so they pass."""
    import shutil
    import subprocess

    if command == "python -m pytest":
        argv = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
        ok: tuple[int, ...] = (
            0,
            5,
        )  # 5: nothing collected yet; the command itself is still the right one
    elif command == "python -m unittest":
        argv, ok = [sys.executable, "-c", UNITTEST_COLLECT], (0,)
    elif command.startswith("make "):
        make = shutil.which("make")
        if make is None:
            return "make is not installed"
        argv, ok = [make, "-n", *command.split()[1:]], (0,)
    else:
        return None
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        proc = subprocess.run(
            argv,
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=VERIFY_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"no answer within {VERIFY_TIMEOUT} s"
    except OSError as exc:
        return str(exc)
    if proc.returncode in ok:
        return None
    shown = " ".join(argv[1:] if argv[0] == sys.executable else argv)
    return f"`{shown}` exited {proc.returncode}"


def command_checker(root: Path, report: list[str]) -> Callable[[str], bool]:
    """A `works(command)` for plan_scaffold that remembers answers and notes each refusal."""
    answers: dict[str, bool] = {}

    def works(command: str) -> bool:
        if command not in answers:
            why = verify_command(root, command)
            answers[command] = why is None
            if why is not None:
                report.append(f"left out `{command}`: {why} (--no-verify keeps it)")
        return answers[command]

    return works


def _read(path: Path) -> str | None:
    problem = escape(path.parent, path.name)
    if problem:  # `.gitignore -> /etc/passwd`: never read (nor written, see plan_init)
        raise AgenticError(f"{path}: {problem}; not read")
    try:
        data = read_bytes_bounded(path, MAX_TEXT_BYTES, str(path))  # never a FIFO or device
    except FileNotFoundError:
        return None
    try:
        return data.decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError as exc:
        raise AgenticError(f"{path}: cannot read: {exc}") from None


def plan_init(config: Config, works: Callable[[str], bool] | None = None) -> list[FileChange]:
    """Every file `init` would write, with old and new text; only the ones that change.
    `works` verifies each command AGENTS.md would name (see `command_checker`)."""
    precommit = ".pre-commit-config.yaml"
    old_precommit = _read(config.root / precommit)
    new_precommit = plan_precommit_config(old_precommit, precommit)
    facts = introspect(config.root, precommit_config=new_precommit)
    changes = plan_scaffold(config, facts, works)
    if new_precommit != old_precommit and not is_symlink(config.root / precommit):
        # a symlinked config is the user's: left alone
        changes.append(FileChange(precommit, old_precommit, new_precommit))
    # Runs, journals and the active task are ignored in one place, `.agentic/.gitignore`
    # (never the top-level .gitignore); an existing one is left as it is.
    ignore = f"{BOOKKEEPING}/.gitignore"
    if not os.path.lexists(config.root / ignore):
        changes.append(FileChange(ignore, None, BOOKKEEPING_IGNORE))
    return changes


def apply_changes(root: Path, changes: Sequence[FileChange]) -> None:
    # All checked first (inside the root, no symlink, writable), then written atomically.
    write_project_files(root, [(change.path, change.new) for change in changes])


def diff(changes: Sequence[FileChange]) -> str:
    out: list[str] = []
    for change in changes:
        out += difflib.unified_diff(
            (change.old or "").splitlines(True),
            change.new.splitlines(True),
            fromfile="/dev/null" if change.old is None else f"a/{change.path}",
            tofile=f"b/{change.path}",
        )
    return "".join(out)


def init_main(argv: Sequence[str] | None = None) -> int:
    """`pytest-agentic init [--dry-run] [--no-verify]`: exit 0 done (or nothing to do), 2
    misconfigured."""
    parser = argparse.ArgumentParser(
        prog="pytest-agentic init",
        description="Write AGENTS.md, knowledge files, pointer files, .gitignore lines and "
        "the agentic pre-commit hooks, from what the repository contains.",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the diff; write nothing")
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="write the commands found without checking them (no collection, no make -n)",
    )
    args = parser.parse_args(argv)

    def body() -> int:
        config = load_config()
        left_out: list[str] = []
        works = None if args.no_verify else command_checker(config.root, left_out)
        changes = plan_init(config, works)
        for line in left_out:
            print(f"pytest-agentic init: {line}", file=sys.stderr)
        if args.dry_run:
            sys.stdout.write(diff(changes))
            return 0
        apply_changes(config.root, changes)
        for change in changes:
            print(f"{'created' if change.old is None else 'updated'} {change.path}")
        if not changes:
            print("nothing to do: convention files are current")
        # Proposed, not written: pyproject.toml is the user's, and checks gate every fix.
        from pytest_agentic.validate import proposed_checks

        proposal = proposed_checks(config.root)
        if proposal and not config["checks"]:
            listed = ", ".join(f'"{c}"' for c in proposal)
            print(
                f"suggested for [tool.pytest-agentic] (the fix loop's project checks): "
                f"checks = [{listed}]"
            )
        return 0

    return run_main(body, "pytest-agentic init")


if __name__ == "__main__":
    raise SystemExit(init_main())
