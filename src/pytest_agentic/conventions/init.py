"""`pytest-agentic init`: convention files, .gitignore lines and our pre-commit hooks.

`plan_init` decides everything and writes nothing (so `--dry-run` and tests see the exact
result); `apply_changes` writes it atomically.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from pytest_agentic.atomic import write_atomic
from pytest_agentic.config import Config, load_config
from pytest_agentic.conventions.introspect import introspect
from pytest_agentic.conventions.render import FileChange, plan_scaffold
from pytest_agentic.errors import AgenticError, run_main

GITIGNORE_LINES = (".agentic/runs/", ".agentic/active")
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


def plan_gitignore(old: str | None) -> str:
    lines = (old or "").splitlines()
    present = {line.strip() for line in lines}
    missing = [line for line in GITIGNORE_LINES if line not in present]
    if not missing:
        return old or ""
    text = old or ""
    if text and not text.endswith("\n"):
        text += "\n"
    return text + "\n".join(missing) + "\n"


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


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise AgenticError(f"{path}: cannot read: {exc}") from None


def plan_init(config: Config) -> list[FileChange]:
    """Every file `init` would write, with old and new text; only the ones that change."""
    precommit = ".pre-commit-config.yaml"
    old_precommit = _read(config.root / precommit)
    new_precommit = plan_precommit_config(old_precommit, precommit)
    changes = plan_scaffold(config, introspect(config.root, precommit_config=new_precommit))
    old_ignore = _read(config.root / ".gitignore")
    for rel, old, new in (
        (".gitignore", old_ignore, plan_gitignore(old_ignore)),
        (precommit, old_precommit, new_precommit),
    ):
        if new != old:
            changes.append(FileChange(rel, old, new))
    return changes


def apply_changes(root: Path, changes: Sequence[FileChange]) -> None:
    for change in changes:
        write_atomic(root / change.path, change.new)


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
    """`pytest-agentic init [--dry-run]`: exit 0 done (or nothing to do), 2 misconfigured."""
    parser = argparse.ArgumentParser(
        prog="pytest-agentic init",
        description="Write AGENTS.md, knowledge files, pointer files, .gitignore lines and "
        "the agentic pre-commit hooks, from what the repository contains.",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the diff; write nothing")
    args = parser.parse_args(argv)

    def body() -> int:
        config = load_config()
        changes = plan_init(config)
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
