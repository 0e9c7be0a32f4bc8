"""The `agentic-scope` pre-commit hook: reject changes outside the active task's scope.

Also the body of `pytest-agentic scope check`. The hook computes its own diff
(`pass_filenames: false`): the staged changes, or the range pre-commit names in
`PRE_COMMIT_FROM_REF`/`PRE_COMMIT_TO_REF` (pre-push, `run --from-ref`), or `--base REV...HEAD`.

No self-widening: the scope comes from the task file as committed in HEAD (or in the base of
the range), not from the index, so a change cannot widen its own scope and use the widening
in one go. A task created by the change itself (absent from the base) is read from the index.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pytest_agentic import gitrepo
from pytest_agentic.config import Config, load_config
from pytest_agentic.conventions import convention_files
from pytest_agentic.errors import AgenticError, run_main
from pytest_agentic.scope import PathPolicy
from pytest_agentic.tasks import ENV_ACTIVE, Task, active_task_id, check_id, parse_task_text

STATUS_WORDS = {
    "A": "added",
    "C": "copied",
    "D": "deleted",
    "M": "modified",
    "R": "renamed",
    "T": "type changed",
    "U": "unmerged",
    "X": "changed",
}


@dataclass(frozen=True)
class Violation:
    path: str
    status: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.status}: {self.reason}"


@dataclass(frozen=True)
class Verdict:
    """What the scope check found: no task (checked nothing), or the task and its violations."""

    task: Task | None
    source: str
    violations: tuple[Violation, ...] = ()
    checked: int = 0


def _load_task_at(
    top: Path, rel: str, revs: Sequence[str | None], worktree: Path
) -> tuple[Task, str] | None:
    """The task file at the first revision that has it (None = the index), else the worktree."""
    path = PurePosixPath(rel)
    for rev in revs:
        text = gitrepo.show(top, rev, rel)
        if text is not None:
            return parse_task_text(text, Path(path)), ("the index" if rev is None else rev)
    if worktree.is_file():
        return parse_task_text(worktree.read_text(encoding="utf-8"), Path(path)), "the working tree"
    return None


def check_scope(
    cwd: Path,
    *,
    base: str | None = None,
    head: str = "HEAD",
    task_id: str | None = None,
    config: Config | None = None,
) -> Verdict:
    """Check the staged changes (base None) or `base...head` against the path policy."""
    config = config or load_config(cwd)
    top = gitrepo.toplevel(cwd)
    named_by = "--task"
    if task_id is None:
        task_id = active_task_id(config)
        named_by = f"${ENV_ACTIVE}" if os.environ.get(ENV_ACTIVE) else ".agentic/active"
    if task_id is not None:
        check_id(task_id, named_by)
    if task_id is None:
        return Verdict(task=None, source="")

    task_file = config.tasks_dir / f"{task_id}.toml"
    try:
        task_rel = task_file.resolve().relative_to(top.resolve()).as_posix()
    except ValueError:
        raise AgenticError(f"{task_file}: the tasks folder is outside the git repository") from None
    if base is None:
        old_revs: list[str | None] = ["HEAD"] if gitrepo.rev_exists(top, "HEAD") else []
        new_revs: list[str | None] = [None]
        changes = gitrepo.staged_changes(top)
    else:
        old_revs, new_revs = [base], [head]
        changes = gitrepo.range_changes(top, base, head)
    committed = _load_task_at(top, task_rel, [*old_revs, *new_revs], task_file)
    if committed is None:
        raise AgenticError(
            f"{task_rel}: no such task {task_id!r} (named by "
            f"{named_by}); create it with "
            f"`pytest-agentic task new {task_id} --scope GLOB` or stop it with "
            "`pytest-agentic task stop`"
        )
    task, source = committed
    proposed = _load_task_at(top, task_rel, new_revs, task_file)
    widened = (
        PathPolicy(config.root, task=proposed[0])
        if proposed is not None and proposed[0].scope != task.scope
        else None
    )

    policy = PathPolicy(config.root, task=task, conventions=convention_files(config))
    violations: list[Violation] = []
    checked = 0
    for change in changes:
        sides = [(change.path, STATUS_WORDS.get(change.status, "changed"))]
        if change.status == "R" and change.old_path is not None:
            sides = [(change.old_path, "renamed from"), (change.path, "renamed to")]
        for rel, word in sides:
            checked += 1
            refusal = policy.check(top / rel)
            if refusal is None:
                continue
            reason = refusal.reason
            if widened is not None and widened.check(top / rel) is None:
                reason += (
                    f" as committed in {source}; this change widens {task_rel} to include it: "
                    "commit the scope change on its own first"
                )
            violations.append(Violation(rel, word, reason))
    return Verdict(task=task, source=source, violations=tuple(violations), checked=checked)


def format_verdict(verdict: Verdict, task_rel: str) -> list[str]:
    """The lines printed for a failing verdict: one per path, then the task and the fixes."""
    assert verdict.task is not None
    lines = [str(v) for v in verdict.violations]
    lines.append(
        f"task {verdict.task.id!r} ({task_rel}, scope as of {verdict.source}) does not allow "
        f"{len(verdict.violations)} changed path{'s' if len(verdict.violations) != 1 else ''}: "
        "unstage them (`git restore --staged PATH`), or widen the scope "
        f"(`pytest-agentic task widen {verdict.task.id} GLOB` or edit the TOML) and commit "
        "that on its own first"
    )
    return lines


def run_check(
    cwd: Path, *, base: str | None, head: str = "HEAD", task_id: str | None, prog: str
) -> int:
    """Check, print, and return the exit status (0 ok, 1 violation)."""
    config = load_config(cwd)
    verdict = check_scope(cwd, base=base, head=head, task_id=task_id, config=config)
    if verdict.task is None:
        if config.require_task:
            where = config.path or "pyproject.toml"
            print(
                f"{prog}: no active task, and {where} sets require_task = true: start one "
                "with `pytest-agentic task start ID` or set PYTEST_AGENTIC_TASK",
                file=sys.stderr,
            )
            return 1
        return 0
    if not verdict.violations:
        return 0
    task_path = verdict.task.path.as_posix() if verdict.task.path else verdict.task.id
    for line in format_verdict(verdict, task_path):
        print(line, file=sys.stderr)
    return 1


def _stdio_tolerant() -> None:
    # Paths that are not valid UTF-8 come through git as surrogate escapes; print them
    # escaped rather than crash.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="agentic-scope",
        description="Reject staged changes (or a range) outside the active task's scope.",
    )
    parser.add_argument("--base", metavar="REV", help="check REV...HEAD instead of the index")
    parser.add_argument("--task", metavar="ID", help="check against this task, not the active one")
    parser.add_argument("filenames", nargs="*", help=argparse.SUPPRESS)  # the hook diffs itself
    args = parser.parse_args(argv)
    _stdio_tolerant()

    def body() -> int:
        base, head = args.base, "HEAD"
        from_ref = os.environ.get("PRE_COMMIT_FROM_REF")
        to_ref = os.environ.get("PRE_COMMIT_TO_REF")
        if base is None and from_ref and to_ref:
            base, head = from_ref, to_ref
        return run_check(Path.cwd(), base=base, head=head, task_id=args.task, prog="agentic-scope")

    return run_main(body, "agentic-scope")


if __name__ == "__main__":
    raise SystemExit(main())
