"""The path policy: the one place that decides whether a path may be read or written, and why not.

The fixer, the `agentic-scope` pre-commit hook and `pytest-agentic scope check` all ask
`PathPolicy.check` (writes). Rules, in order: a path is a string without NUL bytes; inside
the project root; not in `.git`; no symlink that leads out of the root (or into `.git`);
pytest-agentic's own bookkeeping (`.agentic/`) is always allowed for people and never for the
agent; `unreadable` globs (secrets) and `protected` globs (tests by default) bind the agent;
and, when a task is active, the task's scope.

The agent's reads ask `PathPolicy.check_read`: inside the root and out of `.git`, with every
symlink followed (a link to `/proc/self/environ` or to a file outside the root is refused),
and not `unreadable`, judged on the path as named and on where it leads.

Why `protected` binds only the agent: it exists against reward hacking (a fixer weakening
the test it should make pass). People commit tests all the time; for a commit, the task's
scope decides, and a task that must not touch tests leaves them out of its scope.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pytest_agentic.config import DEFAULT_UNREADABLE
from pytest_agentic.tasks import Task, compile_scope

BOOKKEEPING = ".agentic"


@dataclass(frozen=True)
class Refusal:
    """Why a path may not be read or written."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class PathPolicy:
    """Decides writes under `root`. `for_agent=True` is the fixer's policy."""

    def __init__(
        self,
        root: Path,
        *,
        task: Task | None = None,
        protected: Sequence[str] = (),
        for_agent: bool = False,
        tasks_dir: str = ".agentic/tasks",
        conventions: Sequence[str] = (),
        lexical: bool = False,
        protected_paths: Collection[str] = (),
        unreadable: Sequence[str] = DEFAULT_UNREADABLE,
    ) -> None:
        self.root = Path(os.path.abspath(root))
        self.real_root = self.root.resolve()
        self._root_str = str(self.root)
        self._root_prefix = self._root_str.rstrip(os.sep) + os.sep
        self._real_prefix = str(self.real_root).rstrip(os.sep) + os.sep
        self._resolved: dict[str, str | None] = {}
        self.task = task
        self.for_agent = for_agent
        # lexical: judge paths as git records them, without looking at the working tree
        # (the scope check judges commits whose tree is not checked out; issue 14).
        self.lexical = lexical and not for_agent
        self.tasks_dir = PurePosixPath(tasks_dir)
        # Convention files agentic-scaffold refreshes (exact paths; a folder ends in "/" and
        # covers the `.md` files directly in it). People may commit them whatever the task's
        # scope: the scaffold hook rewrites them on any commit, and refusing them then would
        # deadlock the commit (issue 12). Never the agent: they go into its prompt.
        self._conventions = tuple(conventions)
        self._protected: Any = compile_scope(protected, "protected") if protected else None
        # Exact root-relative paths the session itself depends on: the files pytest collected
        # tests from, its conftests and ini file (`python_files = check_*.py` escapes the globs).
        self._protected_paths = frozenset(protected_paths)
        # Only the agent's policy needs it; the scope hook keeps its start-up cheap.
        self._unreadable: Any = (
            compile_scope(unreadable, "unreadable") if unreadable and for_agent else None
        )
        self._scope: Any = (
            compile_scope(task.scope, str(task.path or task.id)) if task is not None else None
        )

    def relative(self, path: str | os.PathLike[str]) -> str | None:
        """`path` (relative to the root, or absolute) as a root-relative posix path, or None
        when it lies outside the root or is no path at all (not a string, a NUL byte).
        Purely lexical: `a/../b` is `b`."""
        raw = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
        if not isinstance(raw, str) or not raw or "\0" in raw:
            return None
        # os.path on strings, not pathlib: the scope hook calls this for every staged path.
        joined = os.path.normpath(os.path.join(self._root_str, raw))
        if not joined.startswith(self._root_prefix):
            return None
        return joined[len(self._root_prefix) :].replace(os.sep, "/")

    def in_scope(self, rel: str) -> bool:
        """Whether the active task's scope matches `rel` (True when no task is active)."""
        return self._scope is None or bool(self._scope.match_file(rel))

    def _located(
        self, path: str | os.PathLike[str], git_reason: str
    ) -> tuple[str | None, Refusal | None]:
        """(`path` root-relative, None) when it is a valid path inside the root and out of
        `.git`, else (None, why not): the first rules of both the write and the read policy."""
        invalid = _invalid(path)
        if invalid is not None:
            return None, invalid
        rel = self.relative(path)
        if rel is None:
            return None, Refusal(os.fspath(path), f"outside the project root {self.root}")
        if ".git" in rel.split("/"):
            return None, Refusal(rel, f"inside .git; {git_reason}")
        return rel, None

    def check(self, path: str | os.PathLike[str]) -> Refusal | None:
        """None when `path` may be written, else a Refusal saying why."""
        rel, refusal = self._located(path, "git's own files are never written")
        if refusal is not None or rel is None:
            return refusal
        parts = rel.split("/")
        escape = (
            None
            if self.lexical
            else self._symlink_escape(rel if self.for_agent else posixpath.dirname(rel))
        )
        if escape:
            return Refusal(rel, escape)
        if self.for_agent:
            # The agent writes to what a symlink inside the root points at (see write_target),
            # so that path is judged too: a link must not carry an edit into a test file.
            target = self.write_target(rel)
            if target != rel:
                refusal = self.check(target)
                if refusal is not None:
                    return Refusal(f"{rel} leads to {refusal.path}", refusal.reason)
        if parts[0] == BOOKKEEPING:
            if self.for_agent:
                return Refusal(rel, "pytest-agentic bookkeeping (.agentic/) is not for the agent")
            return None
        if self.for_agent and self.unreadable(rel):
            return Refusal(rel, UNREADABLE_REASON)
        if not self.for_agent and self.is_convention_file(rel):
            return None
        if self.for_agent and self._protected is not None and self._protected.match_file(rel):
            return Refusal(
                rel,
                "protected (matches the `protected` globs): the fixer changes code, not tests "
                "or their configuration",
            )
        if self.for_agent and rel in self._protected_paths:
            return Refusal(
                rel,
                "protected: this session collected tests or configuration from it; the fixer "
                "changes code, not tests or their configuration",
            )
        if not self.in_scope(rel):
            assert self.task is not None
            return Refusal(rel, f"outside the scope of task {self.task.id!r}")
        return None

    def is_convention_file(self, rel: str) -> bool:
        """Whether `rel` is one of the convention files agentic-scaffold writes. Markdown only:
        a `pointer_files` entry naming a code file must not exempt that file from the scope."""
        if not rel.endswith(".md"):
            return False
        for entry in self._conventions:
            if entry.endswith("/"):
                if rel.startswith(entry) and "/" not in rel[len(entry) :]:
                    return True
            elif rel == entry:
                return True
        return False

    def unreadable(self, rel: str) -> bool:
        """Whether `rel` (root-relative posix) matches the `unreadable` globs (the agent's
        policy only). A folder is judged as `rel/` too, so `secrets/` covers the folder."""
        if self._unreadable is None:
            return False
        if self._unreadable.match_file(rel):
            return True
        return os.path.isdir(os.path.join(self._root_str, rel)) and bool(
            self._unreadable.match_file(rel + "/")
        )

    def check_read(self, path: str | os.PathLike[str]) -> Refusal | None:
        """None when the agent may read `path` (a file or a folder to list), else why not.

        Every symlink on the way is followed, the last one included: what a read returns is
        what the link points at, so that target must be inside the root, out of `.git` and not
        unreadable, as must the path as named.
        """
        rel, refusal = self._located(path, "not available")
        if refusal is not None or rel is None:
            return refusal
        if self.unreadable(rel):
            return Refusal(rel, UNREADABLE_REASON)
        real = os.path.realpath(os.path.join(self._root_str, rel))
        if real != str(self.real_root) and not real.startswith(self._real_prefix):
            return Refusal(rel, f"a symlink leads outside the project root (to {real})")
        target = real[len(self._real_prefix) :].replace(os.sep, "/")
        if ".git" in target.split("/"):
            return Refusal(rel, "a symlink leads into .git")
        if target and target != rel and self.unreadable(target):
            return Refusal(f"{rel} leads to {target}", UNREADABLE_REASON)
        return None

    def write_target(self, rel: str) -> str:
        """Where a write to `rel` lands once symlinks inside the root are followed, relative
        to the root. The fixer writes there: replacing a link with a regular file would change
        the user's tree in a way a restore does not undo."""
        real = os.path.realpath(os.path.join(self._root_str, rel))
        return os.path.relpath(real, self.real_root).replace(os.sep, "/")

    def _symlink_escape(self, rel: str) -> str | None:
        # Resolve each existing prefix: a symlinked folder or file must stay inside the root
        # and out of .git. A path that does not exist yet resolves as far as it exists.
        # The agent writes through the final component, so it is resolved too; a commit
        # records a symlink itself, not what it points at, so only its folder is resolved.
        # Answers are cached per path: thousands of staged files share a few folders.
        if rel in self._resolved:
            return self._resolved[rel]
        target = os.path.realpath(os.path.join(self._root_str, rel))
        answer: str | None = None
        if not (target + os.sep).startswith(self._real_prefix):
            answer = f"a symlink leads outside the project root (to {target})"
        elif ".git" in target[len(self._real_prefix) :].split(os.sep):
            answer = "a symlink leads into .git"
        if not self.for_agent:  # the agent's view must follow the tree as it changes
            self._resolved[rel] = answer
        return answer


UNREADABLE_REASON = (
    "unreadable (matches the `unreadable` globs): secrets are never read, listed or written "
    "by the agent"
)


def _invalid(path: object) -> Refusal | None:
    # A model can send anything as a path; os functions raise ValueError on a NUL byte.
    if not isinstance(path, (str, os.PathLike)):
        return Refusal(repr(path)[:80], "not a path: a path is a string")
    raw = os.fspath(path)
    if not isinstance(raw, str):
        return Refusal(repr(raw)[:80], "not a path: a path is a string")
    if "\0" in raw:
        return Refusal(raw.replace("\0", "\\0")[:200], "contains a NUL byte; not a valid path")
    return None
