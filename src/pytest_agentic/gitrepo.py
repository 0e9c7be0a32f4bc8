"""The git CLI, as the scope check needs it: changes staged or in a range, files at a revision.

Paths are always exchanged NUL-separated (`-z`), so spaces and non-ASCII names come through
unquoted. The environment is inherited on purpose: inside a pre-commit hook git sets
`GIT_INDEX_FILE` (for `git commit -a` or a partial commit) and that index is the one being
committed.

Everything the scope check reads comes from git objects (issue 14): revisions are resolved to
commit ids before use (so `--base=-x` cannot inject an option), paths are literal pathspecs,
files are read by blob id with a size cap, and a tree entry's mode says whether it is a
symlink (120000) or a gitlink (160000) — the working tree is never consulted. Diffs pass
`--ignore-submodules=none` so a committed `.gitmodules` with `ignore = all` cannot hide a
gitlink bump, and `--no-relative` so a `diff.relative` setting cannot hide paths.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pytest_agentic.errors import AgenticError

EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
SYMLINK_MODE = "120000"
GITLINK_MODE = "160000"
#: The most the scope check reads of one committed file (a task spec, a pyproject.toml).
MAX_BLOB_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Entry:
    """One path in a tree or the index: its mode, object id and size (None for the index)."""

    mode: str
    oid: str


@dataclass(frozen=True)
class Change:
    """One changed path: git's status letter (A C D M R T U X) and, for R/C, the old path."""

    status: str
    path: str
    old_path: str | None = None


def git(
    cwd: Path,
    *args: str,
    check: bool = True,
    env: dict[str, str] | None = None,
    literal_pathspecs: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Git in the user's repository. `literal_pathspecs`: paths are never globs (git passes
    the setting on to hooks as GIT_LITERAL_PATHSPECS, so a commit that runs the user's hooks
    turns it off)."""
    literal = ["--literal-pathspecs"] if literal_pathspecs else []
    try:
        proc = subprocess.run(
            ["git", *literal, *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
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
    return resolve_commit(cwd, rev) is not None


def resolve_commit(cwd: Path, rev: str) -> str | None:
    """The commit id `rev` names, or None. `--end-of-options`: a rev is never an option."""
    proc = git(
        cwd,
        "rev-parse",
        "--verify",
        "--quiet",
        "--end-of-options",
        f"{rev}^{{commit}}",
        check=False,
    )
    if proc.returncode != 0:
        return None
    return proc.stdout.decode("ascii", "replace").strip() or None


def commits_between(cwd: Path, base: str, head: str) -> list[tuple[str, tuple[str, ...], str]]:
    """Commits reachable from `head` but not `base` (`base..head`), oldest first, each with
    its parents (first parent first) and its subject line."""
    ids = []
    for rev in (base, head):
        sha = resolve_commit(cwd, rev)
        if sha is None:
            raise AgenticError(f"git: unknown revision {rev!r}; fetch it or name another")
        ids.append(sha)
    out = git(
        cwd,
        "rev-list",
        "--reverse",
        "--topo-order",
        "--parents",
        "--format=%s",
        f"^{ids[0]}",
        ids[1],
    )
    commits = []
    lines = out.stdout.decode("utf-8", "replace").split("\n")
    for index, line in enumerate(lines):
        if line.startswith("commit "):
            sha, *parents = line[len("commit ") :].split()
            title = lines[index + 1] if index + 1 < len(lines) else ""
            commits.append((sha, tuple(parents), title.strip()))
    return commits


def merge_heads(cwd: Path) -> list[str]:
    """The other parents of the commit being made when a merge is in progress."""
    proc = git(cwd, "rev-parse", "--git-path", "MERGE_HEAD", check=False)
    if proc.returncode != 0:
        return []
    path = cwd / proc.stdout.decode("utf-8", "surrogateescape").strip()  # cwd-relative
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return []
    return [sha for line in text.splitlines() if (sha := resolve_commit(cwd, line.strip()))]


def amending() -> bool:
    """Whether this process runs under `git commit --amend` (best effort, Linux /proc).

    A pre-commit hook is not told that the commit replaces HEAD; without this, widening a
    scope in one commit and `--amend`ing the use into it would be judged against the widened
    HEAD. Pre-push and CI judge the amended commit against its real parent either way.
    """
    pid = os.getppid()
    for _ in range(12):  # git -> hook script -> pre-commit -> hook: a few levels up
        if pid <= 1:
            return False
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            return False
        words = [a.decode("utf-8", "replace") for a in args if a]
        if words and os.path.basename(words[0]) == "git" and "commit" in words[1:]:
            tail = words[words.index("commit") + 1 :]
            return "--amend" in tail or any(w.startswith("--fixup=amend:") for w in tail)
        # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces or parentheses.
        pid = int(status.rsplit(")", 1)[1].split()[1])
    return False


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


_DIFF = (
    "diff",
    "--name-status",
    "-z",
    "--no-ext-diff",
    "--no-textconv",
    "--ignore-submodules=none",
    "--no-relative",
    "-M",
    "-C",
)


def staged_changes(cwd: Path, base: str | None = None) -> list[Change]:
    """What the index changes relative to `base` (default HEAD; everything, in a repo with no
    commits)."""
    if base is None:
        base = resolve_commit(cwd, "HEAD") or EMPTY_TREE
    return parse_name_status(git(cwd, *_DIFF, "--cached", base, "--").stdout)


def commit_changes(cwd: Path, parent: str | None, commit: str) -> list[Change]:
    """What `commit` changes relative to `parent` (everything, for a root commit)."""
    return parse_name_status(git(cwd, *_DIFF, parent or EMPTY_TREE, commit, "--").stdout)


def entries(cwd: Path, rev: str | None, paths: list[str]) -> dict[str, Entry]:
    """Tree entries (files, symlinks, gitlinks, folders) at exactly `paths` in `rev`, or in
    the index when `rev` is None (which lists no folders)."""
    if not paths:
        return {}
    key = (str(cwd), rev, tuple(paths))
    if rev is not None and key in _ENTRIES:  # a commit is the new side, then the next base
        return _ENTRIES[key]
    if rev is None:
        raw = git(cwd, "ls-files", "-s", "-z", "--full-name", "--", *paths).stdout
    else:
        raw = git(cwd, "ls-tree", "-z", "--full-tree", rev, "--", *paths).stdout
    found: dict[str, Entry] = {}
    wanted = set(paths)
    for record in raw.decode("utf-8", "surrogateescape").split("\0"):
        if not record:
            continue
        meta, _, path = record.partition("\t")
        fields = meta.split()
        if path in wanted and len(fields) >= 3:
            # ls-files: mode oid stage; ls-tree: mode type oid
            oid = fields[1] if rev is None else fields[2]
            if rev is None and fields[2] != "0":
                continue  # an unmerged entry: git refuses the commit anyway
            found[path] = Entry(fields[0], oid)
    if rev is not None and len(_ENTRIES) < 1024:
        _ENTRIES[key] = found
    return found


_BLOBS: dict[tuple[str, str], bytes] = {}
_ENTRIES: dict[tuple[str, str | None, tuple[str, ...]], dict[str, Entry]] = {}


def read_blob(cwd: Path, oid: str, where: str, limit: int = MAX_BLOB_BYTES) -> bytes:
    """A blob's bytes; larger than `limit` is a user error naming `where`. Cached by object
    id: a range of many commits mostly shares one spec and one pyproject.toml blob."""
    key = (str(cwd), oid)
    if key in _BLOBS:
        return _BLOBS[key]
    data = _read_blob(cwd, oid, where, limit)
    if len(_BLOBS) < 256:
        _BLOBS[key] = data
    return data


def _read_blob(cwd: Path, oid: str, where: str, limit: int) -> bytes:
    size = git(cwd, "cat-file", "-s", oid).stdout.decode("ascii", "replace").strip()
    if not size.isdigit() or int(size) > limit:
        raise AgenticError(f"{where}: larger than {limit:,} bytes; not read")
    return git(cwd, "cat-file", "blob", oid).stdout


def tracked_files(cwd: Path) -> list[str]:
    """Tracked files, top-level relative."""
    raw = git(cwd, "ls-files", "-z", "--full-name").stdout.decode("utf-8", "surrogateescape")
    return [p for p in raw.split("\0") if p]
