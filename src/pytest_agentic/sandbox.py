"""Attempt workspaces, the bubblewrap sandbox around re-runs, and the one-run-per-project lock.

API (the fixer codes against it):

- ``lock = acquire_lock(root)`` once per run: plugin.py does it first thing in
  ``resolve_settings`` (a busy lock is a one-line usage error, exit 4), stores it in
  ``config.stash[plugin.RUN_LOCK]`` and registers ``config.add_cleanup(lock.release)``.
  ``lock.root`` is THE project root (nearest pyproject.toml from the invocation folder, else
  the git top level): use it, not ``config.rootpath``, for the base, the path policy and
  ``.agentic/`` (``--agent-report /abs/path`` can move pytest's rootdir to a parent folder;
  ``RerunSettings.rootdir`` keeps pytest's rootdir so node ids match). ``lock.scratch`` is the
  run's private folder under the temp folder; everything below lives there, and
  ``lock.release()`` (idempotent, also at interpreter exit) removes it. After a ``kill -9``,
  ``pytest-agentic restore`` calls ``clean_leftovers(root)``.
- ``base = snapshot_base(root, lock.scratch)`` once when the run begins: a copy of the project
  (tracked files with the user's uncommitted changes, untracked non-ignored files; see
  `_IMPORT_SUFFIXES` for the ignored ones also copied) with its own throwaway ``.git`` holding
  one baseline commit. ``base.fingerprints[rel]`` is the user's file as it was (see
  `fingerprint`); ``base.user_changed(rel)`` tells whether the user changed ``rel`` in their
  tree since. ``base.derive(patch)`` is a new base with a patch applied (a retry against the
  integrated state).
- ``ws = base.workspace()`` (any thread): ``ws.path`` (the copy; the path policy root of the
  attempt), ``ws.note_edit(rel)`` after every editor write (records the bytes written),
  ``ws.changed_files()``, ``ws.diff(paths)`` (a ``git apply``-able binary patch of those files
  against the base, paths relative to the project root), ``ws.foreign_changes()`` (files changed
  by anything but the editor: a non-empty list rejects the attempt), ``ws.remove()``.
- Re-runs: ``run_tests(nodeids, rerun_settings, workspace=ws)`` (runner.py). How they are
  isolated is decided once: ``mode = sandbox_mode(setting)`` (``"bwrap"`` or ``"off"``; raises
  ``AgenticError`` for ``"required"`` without a working bubblewrap), stored in
  ``RerunSettings.sandbox``; ``describe(mode, network)`` is the line for the run summary.

Threat model: the code under test is the model's and may be hostile. With bubblewrap the whole
file system is read-only, the workspace is mounted writable *at the user's project path* (so
editable installs, ``pythonpath``, absolute paths and the rootdir all lead to the copy and the
user's tree is invisible), its ``.git`` read-only, a private temp folder writable, no network.
Without bubblewrap a re-run runs in the workspace folder but with the user's rights: editable
installs of the project still point at the user's tree, and nothing stops a write elsewhere;
the integrity check still sees every change inside the workspace.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path

from pytest_agentic.errors import AgenticError

LOCK_FILE = ".agentic/lock"
SCRATCH_PREFIX = "pytest-agentic-run-"
_SCRATCH_MARK = ".pytest-agentic-scratch"
#: Folders whose contents are never a change: bytecode and pytest/hypothesis caches.
#: `prepare` removes `__pycache__` before each re-run, so a forged `.pyc` is never loaded.
CACHE_DIRS = frozenset({"__pycache__", ".pytest_cache", ".hypothesis"})
#: Ignored files that are copied all the same: generated modules (`_version.py` from
#: setuptools-scm) and extensions built in place; without them the copy would not import.
#: Other ignored files (`.env`, build output, virtual environments) stay out of the copy.
_IMPORT_SUFFIXES = (".py", ".pyi", ".so", ".pyd")
#: Bookkeeping of pytest-agentic in the user's tree; never copied.
_BOOKKEEPING_SKIP = (".agentic/journal/", ".agentic/runs/", ".agentic/lock")
# Raw bytes in the throwaway repository: no eol conversion, no filters, whatever the project's
# .gitattributes or the user's git config say.
_ATTRIBUTES = "* -text -filter -ident -eol -working-tree-encoding\n"
_GIT_ENV_DROP = ("GIT_DIR", "GIT_INDEX_FILE", "GIT_WORK_TREE", "GIT_OBJECT_DIRECTORY")


# --- fingerprints ---------------------------------------------------------------------------


def _blob_id(data: bytes) -> str:
    # git's own object id of these bytes, so the base's manifest comes from `git ls-files -s`
    # without reading 5,000 files again in Python.
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def fingerprint_bytes(data: bytes, executable: bool = False) -> str:
    return ("x:" if executable else "f:") + _blob_id(data)


def fingerprint(path: Path) -> str | None:
    """What a path holds: `f:<blob id>` for a file (`x:` when executable), `l:<blob id of the
    target>` for a symlink, None if absent (a folder counts as absent: only files compare)."""
    try:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            return "l:" + _blob_id(os.fsencode(os.readlink(path)))
        if not stat.S_ISREG(st.st_mode):
            return None
        return fingerprint_bytes(path.read_bytes(), bool(st.st_mode & stat.S_IXUSR))
    except OSError:
        return None


# --- git in the throwaway repository --------------------------------------------------------


def _git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_GIT_ENV_DROP)}
    # The user's global config may name filters, hooks or a signing key; none apply here.
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_AUTHOR_NAME="pytest-agentic",
        GIT_AUTHOR_EMAIL="pytest-agentic@localhost",
        GIT_COMMITTER_NAME="pytest-agentic",
        GIT_COMMITTER_EMAIL="pytest-agentic@localhost",
        GIT_AUTHOR_DATE="2000-01-01T00:00:00Z",
        GIT_COMMITTER_DATE="2000-01-01T00:00:00Z",
    )
    env.update(extra or {})
    return env


def _git(
    cwd: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=_git_env(env),
            input=stdin,
            capture_output=True,
            check=False,
        )
    except FileNotFoundError:
        raise AgenticError("git: not found on PATH; install git") from None
    if check and proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = err[-1] if err else f"exit status {proc.returncode}"
        raise AgenticError(f"git {' '.join(args[:2])} in {cwd}: {detail}")
    return proc


def _split_z(raw: bytes) -> list[str]:
    return [p for p in raw.decode("utf-8", "surrogateescape").split("\0") if p]


def _user_files(root: Path) -> list[str]:
    """The project's files as the user sees them, relative to `root`.

    Tracked files that exist (a deletion is an uncommitted change too), untracked files git
    does not ignore, and ignored importable files (see `_IMPORT_SUFFIXES`) outside ignored
    folders. Without git: every file but caches, `.git` and virtual environments.
    """
    probe = _git(root, "rev-parse", "--is-inside-work-tree", check=False, env=_user_git_env())
    if probe.returncode != 0:
        return _walk_files(root)
    env = _user_git_env()
    listed = _split_z(_git(root, "ls-files", "-z", "-co", "--exclude-standard", env=env).stdout)
    ignored = _split_z(
        _git(
            root, "ls-files", "-z", "-o", "-i", "--exclude-standard", "--directory", env=env
        ).stdout
    )
    listed += [p for p in ignored if p.endswith(_IMPORT_SUFFIXES)]
    files = []
    for rel in dict.fromkeys(listed):
        if rel.startswith(_BOOKKEEPING_SKIP) or _in_cache(rel):
            continue
        path = root / rel
        if path.is_symlink() or path.is_file():
            files.append(rel)
        elif path.is_dir():  # a submodule: its files, without its `.git` (which leads back)
            files += [f"{rel}/{sub}" for sub in _walk_files(path)]
    return files


def _user_git_env() -> dict[str, str]:
    # The user's repository with the user's config (excludes files), never a hook's GIT_DIR.
    return {k: v for k, v in os.environ.items() if not k.startswith(_GIT_ENV_DROP)}


def _in_cache(rel: str) -> bool:
    return any(part in CACHE_DIRS for part in rel.split("/")[:-1])


_WALK_SKIP = frozenset({".git", ".venv", "venv", ".tox", ".nox", "node_modules"}) | CACHE_DIRS


def _walk_files(top: Path) -> list[str]:
    found: list[str] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(top / rel if rel else top) as entries:
            for entry in entries:
                name = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    if entry.name not in _WALK_SKIP and not name.startswith(".agentic"):
                        stack.append(name)
                else:
                    found.append(name)
    return found


# --- stat snapshots, for the integrity check -------------------------------------------------

Stat = tuple[int, int, int, int, int]  # ino, size, mtime_ns, ctime_ns, mode


def _stat_tree(top: Path, skip_git: bool) -> dict[str, Stat]:
    """Every file and symlink below `top` (caches left out) with its stat identity.

    ctime is in it on purpose: a process cannot set it back, so a file rewritten with the same
    size and a forged mtime still shows (git's own racy-clean reasoning).
    """
    out: dict[str, Stat] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            it = os.scandir(top / rel if rel else top)
        except OSError:
            continue
        with it:
            for entry in it:
                name = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    if entry.name in CACHE_DIRS or (skip_git and name == ".git"):
                        continue
                    stack.append(name)
                    continue
                st = entry.stat(follow_symlinks=False)
                out[name] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)
    return out


# --- the baseline ---------------------------------------------------------------------------

_counter = itertools.count(1)


@dataclass(frozen=True)
class Base:
    """The project as the run began (or as integrated so far), in a throwaway git repository.

    `path` holds the files and a `.git` of its own with one commit; nothing in it names the
    user's repository. `manifest` is every file of `path` (its `.git` included) with its
    fingerprint; `fingerprints` are the user's files as they were when the run began.
    """

    root: Path
    path: Path
    scratch: Path
    manifest: Mapping[str, str]
    fingerprints: Mapping[str, str]
    staged: bytes = b""
    """`git ls-files -s -z` of the base: what its index records, stat data aside."""

    @cached_property
    def folders(self) -> frozenset[str]:
        """Every folder that holds a file of the base (`a`, `a/b` for `a/b/c.py`)."""
        out: set[str] = set()
        for rel in self.manifest:
            parts = rel.split("/")[:-1]
            out.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        return frozenset(out)

    def user_changed(self, rel: str) -> bool:
        """Whether the user's `rel` differs from what it was when the run began."""
        return fingerprint(self.root / rel) != self.fingerprints.get(rel)

    def workspace(self) -> Workspace:
        """A fresh copy of this base for one attempt."""
        dest = self.scratch / f"ws-{next(_counter)}"
        _check_out(self.path, dest)
        git_files = {
            f".git/{rel}": fp
            for rel in _stat_tree(dest / ".git", skip_git=False)
            if (fp := fingerprint(dest / ".git" / rel)) is not None
        }
        return Workspace(self, dest, _stat_tree(dest, skip_git=False), git_files)

    def derive(self, patch: str) -> Base:
        """A new base: this one with `patch` applied (retries against the integrated state)."""
        dest = self.scratch / f"base-{next(_counter)}"
        _check_out(self.path, dest)
        if patch.strip():
            proc = _git(dest, "apply", "--binary", "-", stdin=patch.encode("utf-8"), check=False)
            if proc.returncode != 0:
                shutil.rmtree(dest, ignore_errors=True)
                err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
                raise AgenticError(f"patch does not apply to the base: {err[-1] if err else ''}")
        _commit_base(dest)
        manifest, staged = _manifest(dest)
        return Base(self.root, dest, self.scratch, manifest, self.fingerprints, staged)


def _check_out(base: Path, dest: Path) -> None:
    """A copy of a committed base: its small `.git` (one pack) copied, the files written by
    `git checkout-index` from it, in one process (a `git worktree add` would leave a `.git`
    file naming the base, and `cp -a` copies file by file; see benchmarks/bench_workspace.py).
    The copied index gets the new files' stat data (`-u`)."""
    dest.mkdir()
    shutil.copytree(base / ".git", dest / ".git", symlinks=True)
    _git(dest, "checkout-index", "-a", "-f", "-u")


def _manifest(top: Path) -> tuple[dict[str, str], bytes]:
    """Every file of a committed base with its fingerprint: the work tree from git's index
    (object ids git computed when committing), the few files of `.git` hashed here."""
    out: dict[str, str] = {}
    staged = _git(top, "ls-files", "-s", "-z").stdout
    for entry in staged.decode("utf-8", "surrogateescape").split("\0"):
        if not entry:
            continue
        meta, rel = entry.split("\t", 1)
        mode, blob = meta.split()[:2]
        kind = {"120000": "l:", "100755": "x:"}.get(mode, "f:")
        out[rel] = kind + blob
    for rel in _stat_tree(top / ".git", skip_git=False):
        fp = fingerprint(top / ".git" / rel)
        if fp is not None:
            out[".git/" + rel] = fp
    return out, staged


def _commit_base(top: Path) -> None:
    _git(top, "add", "-A", "-f")
    _git(top, "commit", "-q", "--no-verify", "--allow-empty", "-m", "pytest-agentic base")
    # One pack instead of thousands of loose objects: every workspace copies this `.git`.
    _git(top, "repack", "-a", "-d", "-q")
    _git(top, "prune-packed", "-q")
    # Git updates the index's stat data lazily; settle it now, so nothing we run later writes.
    _git(top, "update-index", "-q", "--refresh", check=False)


def snapshot_base(root: Path, scratch: Path) -> Base:
    """Record the project at `root` as it is now in a throwaway repository in `scratch`.

    The files are never copied one by one: `git update-index` reads them from the user's
    tree straight into the throwaway repository's objects (with raw bytes: no eol conversion,
    no filters), one commit, one pack. Workspaces are checked out of it. The base folder
    itself holds that `.git` and the `.gitignore` files (the ignore rules as the run began).
    """
    root = Path(os.path.abspath(root))
    dest = scratch / "base"
    dest.mkdir(parents=True)
    _git(dest, "init", "-q", "-b", "base")
    info = dest / ".git" / "info"
    info.mkdir(exist_ok=True)
    (info / "attributes").write_text(_ATTRIBUTES, encoding="utf-8")
    (info / "exclude").write_text(_user_excludes(root), encoding="utf-8")
    shutil.rmtree(dest / ".git" / "hooks", ignore_errors=True)  # nothing runs, nothing to compare
    files = _user_files(root)
    listing = _nul(files)
    # --remove: a file that vanished since it was listed is simply not part of the base.
    env = {"GIT_WORK_TREE": str(root), "GIT_DIR": str(dest / ".git")}
    _git(dest, "update-index", "--add", "--remove", "-z", "--stdin", env=env, stdin=listing)
    tree = _git(dest, "write-tree").stdout.decode().strip()
    commit = _git(dest, "commit-tree", tree, "-m", "pytest-agentic base").stdout.decode().strip()
    _git(dest, "update-ref", "HEAD", commit)
    # One pack instead of thousands of loose objects: every workspace copies this `.git`.
    _git(dest, "repack", "-a", "-d", "-q")
    _git(dest, "prune-packed", "-q")
    ignores = [rel for rel in files if rel == ".gitignore" or rel.endswith("/.gitignore")]
    if ignores:
        _git(dest, "checkout-index", "-f", "-z", "--stdin", stdin=_nul(ignores))
    manifest, staged = _manifest(dest)
    # The base's bytes are the user's as the run began.
    fingerprints = {rel: fp for rel, fp in manifest.items() if not _in_git_dir(rel)}
    return Base(root, dest, scratch, manifest, fingerprints, staged)


def _nul(rels: Iterable[str]) -> bytes:
    return b"".join(os.fsencode(rel) + b"\0" for rel in rels)


def _user_excludes(root: Path) -> str:
    """The user's ignore rules that do not live in the tree: `.git/info/exclude` and
    `core.excludesFile`, so a file ignored for the user is ignored in the copy too.

    Their patterns are relative to the git top level; for a project in a subfolder of its
    repository an anchored pattern (`/build`) may then match differently (a known limit).
    """
    parts = [f"{name}/\n" for name in sorted(CACHE_DIRS)]
    env = _user_git_env()
    names: list[Path] = []
    proc = _git(root, "rev-parse", "--git-path", "info/exclude", check=False, env=env)
    if proc.returncode == 0 and proc.stdout.strip():
        names.append(root / proc.stdout.decode("utf-8", "replace").strip())
    proc = _git(root, "config", "--path", "core.excludesFile", check=False, env=env)
    if proc.returncode == 0 and proc.stdout.strip():
        names.append(root / proc.stdout.decode("utf-8", "replace").strip())
    else:  # git's default when core.excludesFile is unset
        xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
        names.append(Path(xdg) / "git" / "ignore")
    for name in names:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            parts.append(name.read_text(encoding="utf-8") + "\n")
    return "".join(parts)


# --- a workspace ----------------------------------------------------------------------------


@dataclass
class Workspace:
    """One attempt's copy of a base. Not shared between threads."""

    base: Base
    path: Path
    stats: dict[str, Stat]
    git_files: dict[str, str]
    """The workspace's own `.git` as created (the base's, index refreshed)."""
    edits: dict[str, str | None] = field(default_factory=dict)

    def note_edit(self, rel: str) -> None:
        """Record what the editor tool just left at `rel` (call after every editor write)."""
        self.edits[rel] = fingerprint(self.path / rel)

    def _scan(self) -> tuple[dict[str, str | None], list[str]]:
        """Files that differ from the base: rel -> fingerprint now (None: deleted), and the
        new files git ignores (per the base's rules, not rules the attempt may have added)."""
        now = _stat_tree(self.path, skip_git=False)
        changed: dict[str, str | None] = {}
        new: list[str] = []
        for rel, st in now.items():
            old = self.stats.get(rel)
            if old is not None and old == st:
                continue
            fp = fingerprint(self.path / rel)
            if _in_git_dir(rel):
                if fp != self.git_files.get(rel):
                    changed[rel] = fp
            elif rel in self.base.manifest:
                if fp != self.base.manifest[rel]:
                    changed[rel] = fp
            else:
                new.append(rel)
        for rel in itertools.chain(self.base.fingerprints, self.git_files):
            if rel not in now:
                changed[rel] = None
        if ".git/index" in changed and self._index_only_restatted(changed):
            del changed[".git/index"]
        ignored = set(_ignored(self.base.path, new))
        for rel in new:
            if rel not in ignored:
                changed[rel] = fingerprint(self.path / rel)
        return changed, sorted(ignored)

    def _index_only_restatted(self, changed: Mapping[str, str | None]) -> bool:
        """Whether `.git/index`, the only change under `.git`, still records the base's
        content: a `git status` by the tests refreshes stat data (git smudges racily clean
        entries, so a later status rewrites the index). Asked only when nothing else in
        `.git` changed, so the git run here reads the workspace's config as we wrote it."""
        if any(_in_git_dir(rel) for rel in changed if rel != ".git/index"):
            return False
        env = {"GIT_DIR": str(self.path / ".git"), "GIT_INDEX_FILE": str(self.path / ".git/index")}
        proc = _git(self.base.path, "ls-files", "-s", "-z", env=env, check=False)
        return proc.returncode == 0 and proc.stdout == self.base.staged

    def changed_files(self) -> set[str]:
        """Files (outside `.git`) that differ from the base, by whatever means; ignored new
        files and caches left out."""
        changed, _ = self._scan()
        return {rel for rel in changed if not _in_git_dir(rel)}

    def foreign_changes(self, editor_writes: Mapping[str, str | None] | None = None) -> list[str]:
        """Files changed, created or deleted by anything but the editor tool, sorted.

        `editor_writes` (default: what `note_edit` recorded) maps a path to the fingerprint
        the editor left there (None: the editor removed it). A file the editor wrote whose
        bytes no longer match counts as foreign; so does any change under `.git`.
        """
        writes = self.edits if editor_writes is None else editor_writes
        changed, _ = self._scan()
        foreign = []
        for rel, now in changed.items():
            if rel in writes and writes[rel] == now and not _in_git_dir(rel):
                continue
            foreign.append(rel)
        for rel, wrote in writes.items():
            # The editor's bytes replaced or undone behind its back (ignored files included).
            if rel not in changed and fingerprint(self.path / rel) != wrote:
                foreign.append(rel)
        return sorted(set(foreign))

    def diff(self, paths: Iterable[str]) -> str:
        """A git patch (binary-safe, `git apply`-able) of `paths` against the base.

        Runs against the base's `.git` with a private index and object folder, so neither
        the base nor the workspace's `.git` is written.
        """
        wanted = sorted({p for p in paths if not _in_git_dir(p)})
        present = [p for p in wanted if (self.path / p).is_file() or (self.path / p).is_symlink()]
        present += [p for p in wanted if p in self.base.manifest and p not in present]
        if not present:
            return ""
        with tempfile.TemporaryDirectory(dir=self.base.scratch, prefix="diff-") as tmp:
            objects = Path(tmp) / "objects"
            objects.mkdir()
            env = {
                "GIT_DIR": str(self.base.path / ".git"),
                "GIT_WORK_TREE": str(self.path),
                "GIT_INDEX_FILE": str(Path(tmp) / "index"),
                "GIT_OBJECT_DIRECTORY": str(objects),
                "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(self.base.path / ".git" / "objects"),
            }
            _git(self.path, "read-tree", "HEAD", env=env)
            _git(self.path, "add", "-A", "-f", "--", *present, env=env)
            proc = _git(
                self.path,
                "diff",
                "--cached",
                "--binary",
                "--no-ext-diff",
                "--no-textconv",
                "--no-renames",
                "--no-color",
                "HEAD",
                "--",
                *present,
                env=env,
            )
        return proc.stdout.decode("utf-8", "surrogateescape")

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _in_git_dir(rel: str) -> bool:
    return rel == ".git" or rel.startswith(".git/")


def _ignored(repo: Path, rels: Sequence[str]) -> list[str]:
    candidates = [r for r in rels if not _in_git_dir(r)]
    if not candidates:
        return []
    stdin = "\0".join(candidates).encode("utf-8", "surrogateescape") + b"\0"
    proc = _git(repo, "check-ignore", "-z", "--stdin", "--no-index", stdin=stdin, check=False)
    return _split_z(proc.stdout)


# --- bubblewrap -----------------------------------------------------------------------------

SANDBOX_CHOICES = ("auto", "required", "off")


@cache
def bwrap_works(bwrap: str | None) -> bool:
    """Whether bubblewrap can make a sandbox here (user namespaces may be off)."""
    if bwrap is None:
        return False
    try:
        proc = subprocess.run(
            [bwrap, *_bwrap_base_args(network=False), "true"],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def sandbox_mode(setting: str) -> str:
    """`"bwrap"` or `"off"` for the `sandbox` setting; `required` without bwrap is an error."""
    if setting not in SANDBOX_CHOICES:
        raise AgenticError(f"sandbox must be one of {', '.join(SANDBOX_CHOICES)}, not {setting!r}")
    if setting == "off":
        return "off"
    if sys.platform.startswith("linux") and bwrap_works(shutil.which("bwrap")):
        return "bwrap"
    if setting == "required":
        raise AgenticError(
            'sandbox = "required" but bubblewrap (bwrap) is not installed or cannot create a '
            'sandbox here; install the `bubblewrap` package or set sandbox = "auto"'
        )
    return "off"


def describe(mode: str, network: bool) -> str:
    if mode == "bwrap":
        net = "network allowed" if network else "no network"
        return f"sandbox: bubblewrap (read-only system, {net})"
    return "sandbox: off (re-runs run with your rights in a copy of the project)"


def _bwrap_base_args(network: bool) -> list[str]:
    args = [
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--proc", "/proc",
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        "--unshare-ipc",
    ]  # fmt: skip
    if not network:
        args.append("--unshare-net")
    return args


@dataclass(frozen=True)
class Prepared:
    """A re-run command made to run in a workspace: what to exec, where, with which env."""

    cmd: list[str]
    cwd: Path
    env: dict[str, str]
    nodeids: list[str]
    outcome_keys: dict[str, str]  # node id as reported in the workspace -> the session's


def prepare(
    cmd: Sequence[str],
    nodeids: Sequence[str],
    env: Mapping[str, str],
    *,
    workspace: Workspace,
    rootdir: Path,
    inifile: Path | None,
    private_tmp: Path,
    mode: str,
    network: bool,
) -> Prepared:
    """Wrap a pytest command line (`cmd` ends before the node ids) to run in `workspace`."""
    user_root = workspace.base.root
    env = dict(env)
    # Caches are not changes, so an earlier re-run of the attempt may have left a `.pyc` whose
    # header matches the real source but whose code is a weakened test: remove them all. (With
    # bubblewrap nothing else it can reach outlives the re-run; a private PYTHONPYCACHEPREFIX
    # would do as well but recompiles pytest and the standard library every time.)
    purge_caches(workspace.path)
    for name in ("TMPDIR", "TEMP", "TMP"):
        env[name] = str(private_tmp)
    if mode == "bwrap":
        bwrap = shutil.which("bwrap") or "bwrap"
        args = [bwrap, *_bwrap_base_args(network)]
        args += ["--bind", str(workspace.path), str(user_root)]
        if (workspace.path / ".git").exists():
            args += ["--ro-bind", str(workspace.path / ".git"), str(user_root / ".git")]
        # The interpreter and its site-packages may live in an ignored folder of the project
        # (`.venv`): the copy does not have it, so show the user's, read-only.
        for folder in _needed_from_user_tree(user_root, workspace.base):
            args += ["--ro-bind", str(user_root / folder), str(user_root / folder)]
        args += ["--bind", str(private_tmp), str(private_tmp)]
        args += ["--chdir", str(rootdir)]
        return Prepared(
            [*args, "--", *cmd, *nodeids], rootdir, env, list(nodeids), {n: n for n in nodeids}
        )
    # No sandbox: run in the copy by path. Paths under the project root map into it.
    mapped_root = _map(rootdir, user_root, workspace.path)
    full = list(cmd)
    keys = {n: n for n in nodeids}
    ids = list(nodeids)
    if mapped_root is None:
        # pytest's rootdir is above the project: node ids start with the project's folder.
        prefix = user_root.relative_to(rootdir).as_posix() + "/"
        mapped_root = workspace.path
        ids = [n[len(prefix) :] if n.startswith(prefix) else n for n in nodeids]
        keys = dict(zip(ids, nodeids, strict=True))
    _replace_after(full, "--rootdir", str(mapped_root))
    if inifile is not None:
        mapped_ini = _map(inifile, user_root, workspace.path)
        if mapped_ini is not None:
            _replace_after(full, "-c", str(mapped_ini))
    paths = [str(workspace.path / "src"), str(workspace.path)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return Prepared([*full, *ids], mapped_root, env, ids, keys)


def purge_caches(top: Path) -> None:
    """Remove bytecode caches (`__pycache__`) below `top`, its `.git` left alone."""
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and entry.name != ".git":
                if entry.name == "__pycache__":
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    stack.append(Path(entry.path))


def _map(path: Path, user_root: Path, ws: Path) -> Path | None:
    try:
        return ws / Path(os.path.abspath(path)).relative_to(user_root)
    except ValueError:
        return None


def _replace_after(cmd: list[str], flag: str, value: str) -> None:
    if flag in cmd:
        cmd[cmd.index(flag) + 1] = value


def _needed_from_user_tree(user_root: Path, base: Base) -> list[str]:
    # Judged by the base's files, not the workspace's: bwrap leaves an empty mount point.
    folders: list[str] = []
    have = base.folders
    for entry in [sys.prefix, sys.exec_prefix, sys.executable, *sys.path]:
        if not entry:
            continue
        try:
            rel = Path(os.path.abspath(entry)).relative_to(user_root)
        except ValueError:
            continue
        parts = rel.parts
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub not in have and sub not in base.manifest:
                if (user_root / sub).exists() and sub not in folders:
                    folders.append(sub)
                break
    return folders


# --- the run lock ---------------------------------------------------------------------------

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lock:
    """One fix run per project: an exclusive `flock` on `.agentic/lock`, held for the run.

    The kernel drops a `flock` when its process dies, even by `kill -9`, so a lock is never
    stale while its file still names a dead pid; the pid and start time in the file are for
    messages, and `scratch` (the run's folder under the temp folder) for `restore`.
    """

    def __init__(self, root: Path, fd: int, scratch: Path) -> None:
        self.root = root
        self.path = root / LOCK_FILE
        self._fd: int | None = fd
        self.scratch = scratch
        self._mutex = threading.Lock()

    def release(self) -> None:
        """Remove the run's scratch folder and the lock (idempotent)."""
        with self._mutex:
            if self._fd is None:
                return
            _remove_scratch(self.scratch)
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def _read_lock(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _try_flock(path: Path) -> int | None:
    """An fd holding an exclusive lock on `path`, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is None:  # pragma: no cover - Windows: the pid in the file decides
        pid = _read_lock(path).get("pid")
        if isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid):
            os.close(fd)
            return None
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    # Locked, but maybe a file another process has just unlinked (a release or a restore):
    # only the file at `path` counts, so try again on that one.
    try:
        same = os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return _try_flock(path)
    return fd


def _busy_message(root: Path, path: Path) -> str:
    pid = _read_lock(path).get("pid")
    who = f"pid {pid}" if isinstance(pid, int) else "another process"
    return (
        f"{path}: another pytest-agentic fix run ({who}) is working in {root}; "
        "wait for it to finish or stop it"
    )


def acquire_lock(root: Path) -> Lock:
    """Take the project's run lock; `AgenticError` naming the running pid when it is taken.

    A lock left by a dead run (even after `kill -9`) is taken over; its scratch folder is
    removed first.
    """
    root = Path(os.path.abspath(root))
    path = root / LOCK_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        from pytest_agentic.workspace import ignore_bookkeeping

        ignore_bookkeeping(root, LOCK_FILE)
        fd = _try_flock(path)
    except OSError as exc:
        raise AgenticError(f"{path}: cannot create the run lock: {exc.strerror}") from None
    if fd is None:
        raise AgenticError(_busy_message(root, path))
    try:
        _cleanup_recorded(path)
        scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
        (scratch / _SCRATCH_MARK).write_text(str(root), encoding="utf-8")
        record = {"pid": os.getpid(), "started": time.time(), "scratch": str(scratch)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        where = exc.filename or tempfile.gettempdir()
        raise AgenticError(f"{where}: cannot set up the fix run: {exc.strerror}") from None
    lock = Lock(root, fd, scratch)
    atexit.register(lock.release)
    return lock


def _cleanup_recorded(path: Path) -> list[Path]:
    scratch = _read_lock(path).get("scratch")
    if isinstance(scratch, str) and _remove_scratch(Path(scratch)):
        return [Path(scratch)]
    return []


def _remove_scratch(scratch: Path) -> bool:
    """Remove a run's scratch folder, only if it is one of ours (a lock file is just a file in
    the project: never let its contents point `rmtree` somewhere else)."""
    if not scratch.is_absolute() or not scratch.name.startswith(SCRATCH_PREFIX):
        return False
    if scratch.is_symlink() or not (scratch / _SCRATCH_MARK).is_file():
        return False
    shutil.rmtree(scratch, ignore_errors=True)
    return True


@contextlib.contextmanager
def held_for_restore(root: Path) -> Iterator[list[Path]]:
    """For `pytest-agentic restore`: hold the run lock while restoring, after removing what a
    killed run left under the temp folder (yielded). `AgenticError` naming the pid while the
    run that owns the lock is alive: its journal and workspaces are in use."""
    root = Path(os.path.abspath(root))
    path = root / LOCK_FILE
    if not path.parent.is_dir():
        yield []
        return
    fd = _try_flock(path)
    if fd is None:
        raise AgenticError(_busy_message(root, path) + "; restore only after it ends")
    try:
        yield _cleanup_recorded(path)
        with contextlib.suppress(OSError):
            path.unlink()
    finally:
        os.close(fd)


def clean_leftovers(root: Path) -> list[Path]:
    """Remove what a killed run left under the temp folder (see `held_for_restore`)."""
    with held_for_restore(root) as removed:
        return removed
