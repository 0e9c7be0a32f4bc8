"""The `agentic-scope` pre-commit hook: reject changes outside the active task's scope.

Also the body of `pytest-agentic scope check`. The hook computes its own diff
(`pass_filenames: false`): the staged changes, or the commits pre-commit names in
`PRE_COMMIT_FROM_REF`/`PRE_COMMIT_TO_REF` (pre-push, `run --from-ref`), or `--base REV`.

One verdict, no bypass (issue 14). Everything a verdict depends on is read from git objects as
of the *base* of the change, lexically, never through the working tree: the settings
(`tasks_dir`, `require_task` in pyproject.toml) and the task spec. For a staged check the base
is HEAD; for a range each commit of `base..head` is judged on its own against its first
parent, so "widen the scope in one commit, use it in the next" passes staged, at pre-push and
in CI alike, and a commit that widens and uses at once fails everywhere. A spec that is a
symlink (mode 120000), or a tasks folder reached through one, is an error. Gitlinks are always
diffed (`--ignore-submodules=none`).

Merge commits are judged by what they add: a path counts only if the merge result differs
from *every* parent there (what `git diff --cc` shows: conflict resolutions and edits made in
the merge). Changes a clean merge brings from the other side were judged as the commits that
made them (or are already on the base branch). A task created by the change itself (absent
from the base) is read from the change, as a new task has no earlier scope.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_agentic import gitrepo
from pytest_agentic.config import Config, settings_from_text
from pytest_agentic.conventions import convention_files
from pytest_agentic.errors import AgenticError, run_main
from pytest_agentic.scope import PathPolicy
from pytest_agentic.tasks import (
    ACTIVE_FILE,
    ENV_ACTIVE,
    Task,
    check_id,
    parse_task_text,
    read_active_file,
)

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


INDEX = None  # a "revision" meaning the index being committed


@dataclass(frozen=True)
class Step:
    """One unit the check judges: the changes of the index or of one commit, with the
    revision whose settings and spec bind them (`base`) and the side they create (`new`)."""

    changes: tuple[gitrepo.Change, ...]
    base: str | None  # a commit id; None: no base (the first commit of a repository)
    new: str | None  # a commit id, or INDEX
    label: str  # "" for the index, else "commit abc123def456 (subject)"
    base_name: str = ""  # how messages name the base ("HEAD" for a staged check)


def _root_rel(top: Path, cwd: Path) -> str:
    """The project folder relative to the git top level: the nearest folder from `cwd` up
    that holds a pyproject.toml (a regular file, not a symlink), lexically; "" for the top."""
    here = Path(os.path.abspath(cwd))
    top = Path(os.path.abspath(top))
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file() and not candidate.is_symlink():
            try:
                return folder.relative_to(top).as_posix().strip(".")
            except ValueError:
                return ""
        if folder == top:
            break
    return ""


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def _rev_name(rev: str | None) -> str:
    return "the index" if rev is INDEX else str(rev)


def _read_at(top: Path, rev: str | None, rel: str, name: str = "") -> bytes | None:
    """A regular file's bytes at `rev` (INDEX: the index), read lexically: a symlink or
    gitlink on the way (any leading folder or the file itself) is a user error."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    found = gitrepo.entries(top, rev, prefixes)
    shown = f"{rel} (as of {name or _rev_name(rev)})"
    for prefix in prefixes:
        entry = found.get(prefix)
        if entry is None:
            continue
        if entry.mode == gitrepo.SYMLINK_MODE:
            what = "is a symlink" if prefix == rel else f"is reached through the symlink {prefix}"
            raise AgenticError(
                f"{shown}: {what}; the scope check reads settings and task specs only from "
                "regular files, never through a link: replace the link with the file"
            )
        if entry.mode == gitrepo.GITLINK_MODE:
            raise AgenticError(f"{shown}: {prefix} is a submodule; keep task specs in this repo")
    entry = found.get(rel)
    if entry is None or entry.mode not in ("100644", "100755"):
        return None
    return gitrepo.read_blob(top, entry.oid, shown)


def _settings_at(top: Path, root_rel: str, rev: str | None, name: str = "") -> Config:
    """The settings as committed at `rev` (defaults when it has no pyproject.toml there)."""
    rel = _join(root_rel, "pyproject.toml")
    data = _read_at(top, rev, rel, name)
    root = top / root_rel if root_rel else top
    if data is None:
        return Config(root=root, path=None)
    shown = f"{rel} (as of {name or _rev_name(rev)})"
    text = data.decode("utf-8", "surrogateescape")
    return Config(root=root, path=top / rel, values=settings_from_text(text, top / rel, shown))


def _worktree_symlink(top: Path, rel: str) -> str | None:
    """The first component of `rel` that is a symlink in the working tree, or None."""
    parts = rel.split("/")
    for i in range(len(parts)):
        prefix = "/".join(parts[: i + 1])
        if (top / prefix).is_symlink():
            return prefix
    return None


def _load_task(
    top: Path, step: Step, task_rel: str, task_id: str, named_by: str, staged: bool
) -> tuple[Task, str, Task | None]:
    """The task as of the step's base (or, when the step creates it, as the step has it),
    where it was read, and the step's own version of it (None when absent)."""

    def parse(rev: str | None) -> Task | None:
        data = _read_at(top, rev, task_rel, step.base_name if rev == step.base else "")
        if data is None:
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise AgenticError(f"{task_rel}: not valid UTF-8; save it as UTF-8") from None
        return parse_task_text(text, Path(task_rel))

    base_task = parse(step.base) if step.base is not None else None
    new_task = parse(step.new)
    if staged:
        link = _worktree_symlink(top, task_rel)
        if link is not None:
            what = "is a symlink" if link == task_rel else f"is reached through the symlink {link}"
            raise AgenticError(
                f"{task_rel}: {what} in the working tree; the scope check reads task specs "
                "only from regular files: replace the link with the file"
            )
    if base_task is not None:
        return base_task, step.base_name or _rev_name(step.base), new_task
    if new_task is not None:
        return new_task, "this change" if step.new is INDEX else f"{step.new}", new_task
    raise AgenticError(
        f"{task_rel}: no such task {task_id!r} (named by "
        f"{named_by}); create it with "
        f"`pytest-agentic task new {task_id} --scope GLOB` or stop it with "
        "`pytest-agentic task stop`"
    )


def _staged_step(top: Path) -> Step:
    head = gitrepo.resolve_commit(top, "HEAD")
    name = "HEAD"
    if head is not None and gitrepo.amending():
        # `commit --amend` replaces HEAD: its parent is the base, as pre-push and CI see it.
        head, name = gitrepo.resolve_commit(top, "HEAD^"), "HEAD^ (amending HEAD)"
    changes = gitrepo.staged_changes(top, head or gitrepo.EMPTY_TREE)
    others = gitrepo.merge_heads(top) if head else []
    if others:
        changes = _merge_additions(top, changes, [gitrepo.staged_changes(top, o) for o in others])
    return Step(tuple(changes), head, INDEX, "", name)


def _merge_additions(
    top: Path, changes: list[gitrepo.Change], against_others: list[list[gitrepo.Change]]
) -> list[gitrepo.Change]:
    """The changes (relative to the first parent) at paths where the result also differs
    from every other parent: what the merge itself adds."""
    keep = []
    for other in against_others:
        touched = {p for c in other for p in (c.path, c.old_path) if p}
        changes = [c for c in changes if c.path in touched or (c.old_path or "") in touched]
        keep = changes
    return keep


def _range_steps(top: Path, base: str, head: str) -> list[Step]:
    steps = []
    for sha, parents, title in gitrepo.commits_between(top, base, head):
        first = parents[0] if parents else None
        changes = gitrepo.commit_changes(top, first, sha)
        if len(parents) > 1:
            changes = _merge_additions(
                top, changes, [gitrepo.commit_changes(top, p, sha) for p in parents[1:]]
            )
        label = f"commit {sha[:12]} ({title})"
        steps.append(Step(tuple(changes), first, sha, label))
    return steps


def check_scope(
    cwd: Path,
    *,
    base: str | None = None,
    head: str = "HEAD",
    task_id: str | None = None,
) -> list[tuple[Verdict, Step, str]]:
    """Judge the staged changes (base None) or each commit of `base..head`; one verdict per
    step that has a task, with the task file's path."""
    top = gitrepo.toplevel(cwd)
    root_rel = _root_rel(top, cwd)
    named_by = "--task"
    if task_id is None:
        named_by = f"${ENV_ACTIVE}" if os.environ.get(ENV_ACTIVE, "").strip() else ACTIVE_FILE
        task_id = os.environ.get(ENV_ACTIVE, "").strip() or read_active_file(
            top / root_rel if root_rel else top
        )
    if task_id is not None:
        check_id(task_id, named_by)
    staged = base is None
    steps = [_staged_step(top)] if staged else _range_steps(top, base or "", head)
    results: list[tuple[Verdict, Step, str]] = []
    for step in steps:
        # The settings of the base (HEAD, or the commit's parent); a repository's first
        # commit has no base, so its own settings count.
        source = (
            (step.base_name or str(step.base)) if step.base is not None else _rev_name(step.new)
        )
        rev = step.base if step.base is not None else step.new
        settings = _settings_at(top, root_rel, rev, source)
        if task_id is None:
            if settings.require_task and (step.changes or staged):
                where = f"{_join(root_rel, 'pyproject.toml')} (as of {source})"
                raise _NoTask(where, step.label)
            continue
        tasks_dir = _join(root_rel, str(settings["tasks_dir"]))
        task_rel = _join(tasks_dir, f"{task_id}.toml")
        task, task_source, proposed = _load_task(top, step, task_rel, task_id, named_by, staged)
        verdict = _judge(top, settings, step, task, task_source, proposed, tasks_dir)
        results.append((verdict, step, task_rel))
    return results


class _NoTask(Exception):
    def __init__(self, where: str, label: str) -> None:
        super().__init__(where)
        self.where = where
        self.label = label


def _judge(
    top: Path,
    settings: Config,
    step: Step,
    task: Task,
    source: str,
    proposed: Task | None,
    tasks_dir: str,
) -> Verdict:
    # Lexical: a commit records paths, never what a link in today's working tree points at.
    # Convention files the scaffold hook refreshes may be committed whatever the scope
    # (issue 12: otherwise a refresh deadlocks the commit); named as of the base too.
    conventions = convention_files(settings)
    policy = PathPolicy(settings.root, task=task, lexical=True, conventions=conventions)
    widened = (
        PathPolicy(settings.root, task=proposed, lexical=True, conventions=conventions)
        if proposed is not None and proposed.scope != task.scope
        else None
    )
    violations: list[Violation] = []
    checked = 0
    for change in step.changes:
        sides = [(change.path, STATUS_WORDS.get(change.status, "changed"))]
        if change.status == "R" and change.old_path is not None:
            sides = [(change.old_path, "renamed from"), (change.path, "renamed to")]
        for rel, word in sides:
            checked += 1
            if _is_task_spec(rel, tasks_dir):
                continue  # widening a scope is allowed; it binds only later commits
            refusal = policy.check(top / rel)
            if refusal is None:
                continue
            reason = refusal.reason
            if widened is not None and widened.check(top / rel) is None:
                where = "this commit" if step.label else "this change"
                spec = task.path.as_posix() if task.path else task.id
                reason += (
                    f" as committed in {source}; {where} widens {spec} to include it: "
                    "commit the scope change on its own first"
                )
            violations.append(Violation(rel, word, reason))
    return Verdict(task=task, source=source, violations=tuple(violations), checked=checked)


def _is_task_spec(rel: str, tasks_dir: str) -> bool:
    """A task spec in the tasks folder as of the base: bookkeeping, like `.agentic/`."""
    return (
        rel.startswith(tasks_dir + "/")
        and rel.endswith(".toml")
        and "/" not in rel[len(tasks_dir) + 1 :]
    )


def format_verdict(verdict: Verdict, task_rel: str, label: str = "") -> list[str]:
    """The lines printed for a failing verdict: one per path, then the task and the fixes."""
    assert verdict.task is not None
    lines = [str(v) for v in verdict.violations]
    count = len(verdict.violations)
    paths = f"{count} changed path{'s' if count != 1 else ''}"
    head = f"task {verdict.task.id!r} ({task_rel}, scope as of {verdict.source}) does not allow"
    widen = f"`pytest-agentic task widen {verdict.task.id} GLOB` or edit the TOML"
    if label:
        lines.append(
            f"{head} {paths} in {label}: move them to a later commit, after one that widens "
            f"the scope ({widen}), or revert them"
        )
    else:
        lines.append(
            f"{head} {paths}: unstage them (`git restore --staged PATH`), or widen the scope "
            f"({widen}) and commit that on its own first"
        )
    return lines


def run_check(
    cwd: Path, *, base: str | None, head: str = "HEAD", task_id: str | None, prog: str
) -> int:
    """Check, print, and return the exit status (0 ok, 1 violation)."""
    try:
        results = check_scope(cwd, base=base, head=head, task_id=task_id)
    except _NoTask as exc:
        within = f" (judging {exc.label})" if exc.label else ""
        print(
            f"{prog}: no active task, and {exc.where} sets require_task = true{within}: start "
            "one with `pytest-agentic task start ID` or set PYTEST_AGENTIC_TASK",
            file=sys.stderr,
        )
        return 1
    failed = False
    for verdict, step, task_rel in results:
        if verdict.violations:
            failed = True
            for line in format_verdict(verdict, task_rel, step.label):
                print(line, file=sys.stderr)
    return 1 if failed else 0


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
