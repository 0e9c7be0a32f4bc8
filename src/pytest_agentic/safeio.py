"""Reading and writing the project's own files safely: inside the root, never through a
symlink that leads out, regular files of bounded size, atomic writes.

Why (issue 14): convention files and their `@` imports are attacker-shaped input. A knowledge
file that is a symlink to `~/.ssh/id_rsa` must never reach a prompt; a pointer file named
`/tmp/x/gitconfig` or reached through a symlinked folder must never be written (a written
gitconfig with `core.fsmonitor` runs commands); a FIFO or `/dev/zero` behind a name must be
refused, not read until memory runs out.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from pytest_agentic.atomic import write_atomic
from pytest_agentic.errors import AgenticError

#: The most read of one convention file (AGENTS.md, a knowledge or pointer file, a template).
MAX_TEXT_BYTES = 512 * 1024


def read_bytes_bounded(path: Path, limit: int, where: str) -> bytes:
    """The bytes of regular file `path`, at most `limit`; FileNotFoundError when absent,
    else a one-line AgenticError naming `where` (a FIFO, device or folder is never read)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        # O_NONBLOCK: opening a FIFO with no writer would otherwise block forever.
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise AgenticError(f"{where}: cannot read: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise AgenticError(f"{where}: {kind} (a FIFO, device or folder is never read)")
        if info.st_size > limit:
            raise AgenticError(f"{where}: larger than {limit:,} bytes; not read")
        chunks: list[bytes] = []
        total = 0
        while total <= limit:  # /proc files report size 0: count what really comes
            chunk = os.read(fd, min(65536, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise AgenticError(f"{where}: larger than {limit:,} bytes; not read")
        return b"".join(chunks)
    except OSError as exc:
        raise AgenticError(f"{where}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)


def lexical_problem(rel: str) -> str | None:
    """Why `rel` is not a path inside the root written lexically (absolute, `..` out, in .git)."""
    from pytest_agentic.config import inside_path_problem

    return inside_path_problem(rel)


def escape(root: Path, rel: str) -> str | None:
    """Why `root/rel` is not inside `root` once symlinks are followed (as far as the path
    exists), or None."""
    problem = lexical_problem(rel)
    if problem:
        return problem
    real_root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(root, rel))
    if target != real_root and not target.startswith(real_root.rstrip(os.sep) + os.sep):
        return "a symlink leads outside the project root"
    if ".git" in Path(os.path.relpath(target, real_root)).parts:
        return "a symlink leads into .git"
    return None


def is_symlink(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def read_project_text(
    root: Path, rel: str, limit: int = MAX_TEXT_BYTES, where: str | None = None
) -> str | None:
    """The text of `root/rel` with its newlines as they are (no CRLF translation); None when
    it does not exist. A path outside the root (lexically or through a symlink), a
    non-regular file, an oversized or non-UTF-8 file is a one-line AgenticError."""
    shown = where or rel
    problem = escape(root, rel)
    if problem:
        raise AgenticError(f"{shown}: {problem}; not read")
    try:
        data = read_bytes_bounded(root / rel, limit, shown)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise AgenticError(f"{shown}: not valid UTF-8; save it as UTF-8") from None


def write_problem(root: Path, rel: str) -> str | None:
    """Why `root/rel` may not be (over)written, or None: outside the root, through a symlink,
    a symlink itself, not a regular file, or read-only."""
    problem = escape(root, os.path.dirname(rel) or ".") or lexical_problem(rel)
    if problem:
        return problem
    path = root / rel
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot inspect: {exc.strerror}"
    if stat.S_ISLNK(info.st_mode):
        return "a symlink; left alone (edit the file it points at)"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    # No write bit is the user saying "leave it" even to root, who may write anything: the
    # mode is checked as well as what this process may do.
    if not info.st_mode & 0o222 or not os.access(path, os.W_OK):
        return "read-only; not overwritten (make it writable to let it be refreshed)"
    return None


def write_project_files(root: Path, files: Sequence[tuple[str, str]]) -> None:
    """Write each `(rel, text)` atomically under `root`, after checking them all: one that may
    not be written is a one-line AgenticError and nothing at all is written."""
    for rel, _ in files:
        problem = write_problem(root, rel)
        if problem:
            raise AgenticError(f"{rel}: {problem}; nothing was written")
    for rel, text in files:
        write_atomic(root / rel, text.encode("utf-8", "replace"))
