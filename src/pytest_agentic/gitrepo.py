"""The git CLI, as the scope check needs it: changes staged or in a range, files at a revision.

Paths are always exchanged NUL-separated (`-z`), so spaces and non-ASCII names come through
unquoted. The environment is inherited on purpose: inside a pre-commit hook git sets
`GIT_INDEX_FILE` (for `git commit -a` or a partial commit) and that index is the one being
committed.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from pytest_agentic.errors import AgenticError

EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


@dataclass(frozen=True)
class Change:
    """One changed path: git's status letter (A C D M R T U X) and, for R/C, the old path."""

    status: str
    path: str
    old_path: str | None = None


def git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False)
    except FileNotFoundError:
        raise AgenticError("git: not found on PATH; install git") from None
    if check and proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = err[-1] if err else f"exit status {proc.returncode}"
        raise AgenticError(f"git {' '.join(args[:2])}: {detail}")
    return proc


def toplevel(cwd: Path) -> Path:
    proc = git(cwd, "rev-parse", "--show-toplevel", check=False)
    if proc.returncode != 0:
        raise AgenticError(f"{cwd}: not inside a git repository; run `git init` or cd into one")
    return Path(proc.stdout.decode("utf-8").strip())


def rev_exists(cwd: Path, rev: str) -> bool:
    return (
        git(cwd, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False).returncode
        == 0
    )


def parse_name_status(raw: bytes) -> list[Change]:
    """Parse `git diff --name-status -z` output."""
    fields = raw.decode("utf-8", "surrogateescape").split("\0")
    if fields and fields[-1] == "":
        fields.pop()
    changes: list[Change] = []
    i = 0
    while i < len(fields):
        status = fields[i][:1]
        if status in ("R", "C"):
            changes.append(Change(status, fields[i + 2], fields[i + 1]))
            i += 3
        else:
            changes.append(Change(status, fields[i + 1]))
            i += 2
    return changes


_DIFF = ("diff", "--name-status", "-z", "--no-ext-diff", "--no-textconv", "-M", "-C")


def staged_changes(cwd: Path) -> list[Change]:
    """What the index changes relative to HEAD (everything, in a repo with no commits)."""
    base = "HEAD" if rev_exists(cwd, "HEAD") else EMPTY_TREE
    return parse_name_status(git(cwd, *_DIFF, "--cached", base, "--").stdout)


def range_changes(cwd: Path, base: str, head: str = "HEAD") -> list[Change]:
    """What `head` changes since its merge base with `base` (`git diff base...head`)."""
    for rev in (base, head):
        if not rev_exists(cwd, rev):
            raise AgenticError(f"git: unknown revision {rev!r}; fetch it or name another")
    return parse_name_status(git(cwd, *_DIFF, f"{base}...{head}", "--").stdout)


def show(cwd: Path, rev: str | None, path: str) -> str | None:
    """`path` (top-level relative) as stored at `rev`, or in the index when rev is None;
    None when it is not there."""
    spec = f":{path}" if rev is None else f"{rev}:{path}"
    proc = git(cwd, "show", spec, check=False)
    if proc.returncode != 0:
        return None
    return proc.stdout.decode("utf-8", "replace")


def tracked_files(cwd: Path) -> list[str]:
    """Tracked files, top-level relative."""
    raw = git(cwd, "ls-files", "-z", "--full-name").stdout.decode("utf-8", "surrogateescape")
    return [p for p in raw.split("\0") if p]
