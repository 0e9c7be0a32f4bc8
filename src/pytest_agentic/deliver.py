"""Handing fixes over: a dry run's patches applied, one commit per kept fix, CI summaries.

Git is run with the user's environment, like `gitrepo.py`. A commit of a fix never includes
anything else: it is built in a temporary index from HEAD plus the fix's own patch, so the
user's other staged or unstaged changes (even in the same files) stay out of it.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_agentic.errors import AgenticError
from pytest_agentic.gitrepo import git
from pytest_agentic.report import RunReport, load_run

if TYPE_CHECKING:
    from pytest_agentic.jobs import Job

ENV_STEP_SUMMARY = "GITHUB_STEP_SUMMARY"


def _git(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`gitrepo.git` as text, never raising on git's exit status; pathspecs as git reads them
    (`git commit` runs the user's hooks, which must not inherit GIT_LITERAL_PATHSPECS)."""
    proc = git(cwd, *args, check=False, env=env, literal_pathspecs=False)
    return subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}"


@dataclass(frozen=True)
class Tree:
    """Where git commands run for a project root: the work tree's top and the root's prefix."""

    top: Path
    prefix: str  # "" when the project root is the top of the work tree
    in_git: bool = True

    def apply_args(self) -> list[str]:
        # Patches name paths relative to the project root; git apply reads them relative to
        # the top of the work tree (and ignores paths outside the folder it runs in).
        return [f"--directory={self.prefix}"] if self.prefix else []

    def paths(self, rels: Sequence[str]) -> list[str]:
        return [f"{self.prefix}/{rel}" if self.prefix else rel for rel in rels]


def tree_of(root: Path) -> Tree:
    proc = _git(root, "rev-parse", "--show-toplevel")
    if proc.returncode != 0:
        return Tree(root, "", in_git=False)
    top = Path(proc.stdout.strip())
    rel = os.path.relpath(Path(root).resolve(), top.resolve())
    return Tree(top, "" if rel == "." else Path(rel).as_posix())


# --- apply a dry run's patches ------------------------------------------------------------


def _problems(tree: Tree, patch_name: str, proc: subprocess.CompletedProcess[str]) -> list[str]:
    """One line per file git could not patch: `01-x.patch: calc.py: patch does not apply`."""
    lines = []
    for raw in proc.stderr.splitlines():
        match = re.match(r"error: (.+?): (.+)$", raw.strip())
        if match and not match.group(1).startswith("patch failed"):
            path = match.group(1)
            if tree.prefix and path.startswith(tree.prefix + "/"):
                path = path[len(tree.prefix) + 1 :]
            lines.append(f"{patch_name}: {path}: {match.group(2)}")
    return lines or [f"{patch_name}: does not apply: {_last_line(proc)}"]


def apply_run(root: Path, run_dir: Path) -> tuple[list[str], list[str]]:
    """Apply every patch of a dry run, or none: ([lines about what was applied], [problems])."""
    report = load_run(run_dir)
    name = run_dir.name
    if not report.dry_run:
        return [], [f"{name}: not a dry run; its fixes went into the tree when it ran"]
    # The report names the patches of the fixes it kept; a patch of a fix reverted in the
    # final verification stays in the folder as evidence but is not applied.
    patches = [run_dir / o.patch for o in report.outcomes if o.outcome == "fixed" and o.patch]
    missing = [p.name for p in patches if not p.is_file()]
    if missing:
        return [], [f"{name}: {m}: the patch is missing from the run folder" for m in missing]
    if not patches:
        return [], [f"{name}: no patches: the run kept no fix"]
    tree = tree_of(root)
    problems: list[str] = []
    for patch in patches:
        check = _git(tree.top, "apply", "--check", *tree.apply_args(), str(patch))
        if check.returncode == 0:
            continue
        undo = _git(tree.top, "apply", "--check", "--reverse", *tree.apply_args(), str(patch))
        if undo.returncode == 0:
            problems.append(f"{patch.name}: already applied")
        else:
            problems += _problems(tree, patch.name, check)
    if not problems and len(patches) > 1:
        # Each applies alone; together they may touch the same lines.
        both = _git(tree.top, "apply", "--check", *tree.apply_args(), *map(str, patches))
        if both.returncode != 0:
            problems += _problems(tree, "the patches together", both)
    if problems:
        return [], problems
    # One `git apply` for all: it applies every patch or none.
    done = _git(tree.top, "apply", *tree.apply_args(), *map(str, patches))
    if done.returncode != 0:
        return [], _problems(tree, "git apply", done)
    applied = []
    for patch in patches:
        files = _patched_files(patch.read_text(encoding="utf-8", errors="replace"))
        applied.append(f"applied {patch.name} ({', '.join(files)})")
    return applied, []


def _patched_files(diff: str) -> list[str]:
    files = []
    for line in diff.splitlines():
        if line.startswith("+++ ") or line.startswith("--- "):
            path = line[4:].split("\t")[0].strip()
            if path != "/dev/null":
                path = path[2:] if path.startswith(("a/", "b/")) else path
                if path not in files:
                    files.append(path)
    return files


# --- one commit per fix --------------------------------------------------------------------


def commit_refusal(root: Path) -> str | None:
    """Why `--agent-commit` cannot run here (one line), or None."""
    tree = tree_of(root)
    if not tree.in_git:
        return f"--agent-commit: {root} is not inside a git repository"
    staged = _git(tree.top, "diff", "--cached", "--name-only", "-z")
    if staged.returncode != 0:
        return f"--agent-commit: git diff --cached: {_last_line(staged)}"
    names = [n for n in staged.stdout.split("\0") if n]
    if names:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        return (
            f"--agent-commit: the index already holds staged changes ({shown}); commit or "
            "unstage them first (`git restore --staged .`), so each fix is a commit of its own"
        )
    return None


def commit_message(nodeid: str, body: str) -> str:
    return f"Fix {nodeid}\n\n{body.strip()}\n" if body.strip() else f"Fix {nodeid}\n"


def commit_fix(root: Path, nodeid: str, diff: str, files: Sequence[str], body: str) -> str:
    """Commit exactly `diff` (a fix's patch) on top of HEAD; returns the new commit's sha.

    Raises AgenticError (one line) when it cannot: the patch does not apply to HEAD (the
    user had uncommitted changes in those files), or a hook refused the commit. The user's
    index and work tree are left as they were, except that the committed files' index
    entries now match the new HEAD (they matched the old one before).
    """
    tree = tree_of(root)
    with tempfile.TemporaryDirectory(prefix="pytest-agentic-commit-") as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        has_head = _git(tree.top, "rev-parse", "--verify", "--quiet", "HEAD").returncode == 0
        read = _git(tree.top, "read-tree", *(["HEAD"] if has_head else ["--empty"]), env=env)
        if read.returncode != 0:
            raise AgenticError(f"not committed: git read-tree: {_last_line(read)}")
        patch = Path(tmp) / "fix.patch"
        patch.write_text(diff, encoding="utf-8")
        applied = _git(tree.top, "apply", "--cached", *tree.apply_args(), str(patch), env=env)
        if applied.returncode != 0:
            raise AgenticError(
                "not committed: the fix does not apply to HEAD (its files hold uncommitted "
                "changes of yours); the fix stays in your working tree"
            )
        message = Path(tmp) / "message"
        message.write_text(commit_message(nodeid, body), encoding="utf-8")
        done = _git(tree.top, "commit", "-q", "-F", str(message), env=env)
        if done.returncode != 0:
            raise AgenticError(f"not committed: git commit: {_last_line(done)}")
    sha = _git(tree.top, "rev-parse", "HEAD").stdout.strip()
    # The real index still has the old HEAD's entries for these files, so git would show
    # the commit as staged in reverse; point them at the new HEAD.
    _git(tree.top, "reset", "-q", "--", *tree.paths(files))
    return sha


def commit_kept(root: Path, job: Job, max_attempts: int, model: str) -> str | None:
    """`--agent-commit`: a kept fix becomes a commit of its own changes only (`job.commit`).
    Called after the final verification, not at integration: a fix that verification takes
    out again must not already be history. Returns why not (one line, also `job.reason`)."""
    nodeid = job.nodeids[0]
    body = [
        f"pytest-agentic kept this fix after re-running {nodeid}: it passes "
        f"(attempt {job.attempts} of {max_attempts}, model {model}).",
    ]
    if job.reason:
        body.append(job.reason)
    if len(job.nodeids) > 1:
        body.append("It also fixes:\n" + "\n".join(f"- {n}" for n in job.nodeids[1:]))
    try:
        job.commit = commit_fix(root, nodeid, job.diff, job.files, "\n\n".join(body))
    except AgenticError as exc:
        job.reason = str(exc)
        return str(exc)
    return None


# --- CI -----------------------------------------------------------------------------------


def append_step_summary(report: RunReport) -> str | None:
    """Append the markdown report to `$GITHUB_STEP_SUMMARY` when set; a problem as one line."""
    target = os.environ.get(ENV_STEP_SUMMARY)
    if not target:
        return None
    try:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(report.markdown() + "\n")
    except OSError as exc:
        return f"${ENV_STEP_SUMMARY}: cannot append to {target}: {exc.strerror or exc}"
    return None
