"""Snapshots of files before the agent touches them: a journal on disk, restore, diffs.

Before the first write to a file in an attempt, its original bytes (or the fact that it did
not exist) are saved under `.agentic/journal/` and fsync'd. Restoring puts every journalled
file back byte for byte. The journal survives a hard kill: `pytest-agentic restore` replays
whatever journal is left.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
from pathlib import Path

from pytest_agentic.atomic import write_atomic
from pytest_agentic.interrupts import deferred_interrupts
from pytest_agentic.scope import BOOKKEEPING

JOURNAL_DIR = ".agentic/journal"


def _fsync_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Journal:
    """The originals of the files one attempt changed, kept on disk until kept or restored."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.dir = root / JOURNAL_DIR / name
        self.entries: dict[str, int] = {}  # rel path -> entry number

    def save(self, rel: str) -> None:
        """Record the original of `rel` unless already recorded (call before every write)."""
        if rel in self.entries:
            return
        if not self.dir.is_dir():
            self.dir.mkdir(parents=True)
            ignore_bookkeeping(self.root, JOURNAL_DIR + "/")
        number = len(self.entries)
        path = self.root / rel
        exists = path.is_file()
        if exists:
            _fsync_write(self.dir / f"{number}.orig", path.read_bytes())
        meta: dict[str, object] = {"path": rel, "existed": exists}
        if exists:
            meta["mode"] = path.stat().st_mode & 0o7777
        else:
            # Folders the write will create, deepest first: a restore removes them again.
            made = []
            folder = path.parent
            while folder != self.root and not folder.exists():
                made.append(folder.relative_to(self.root).as_posix())
                folder = folder.parent
            meta["made_dirs"] = made
        _fsync_write(self.dir / f"{number}.json", json.dumps(meta).encode())
        self.entries[rel] = number

    @property
    def touched(self) -> list[str]:
        return sorted(self.entries)

    def diff(self) -> str:
        """Every journalled file against its original, as a patch `git apply` accepts."""
        return "".join(_file_diff(self.root, self.dir, rel, n) for rel, n in self.entries.items())

    def restore(self) -> list[str]:
        """Put every journalled file back as it was; forget the journal."""
        restored = replay(self.root, self.dir)
        self.entries.clear()
        return restored

    def keep(self) -> None:
        """The changes stay; forget the originals."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self.entries.clear()
        _remove_if_empty(self.dir.parent)


def _original(folder: Path, number: int) -> tuple[dict[str, object], bytes | None]:
    meta = json.loads((folder / f"{number}.json").read_bytes())
    data = (folder / f"{number}.orig").read_bytes() if meta["existed"] else None
    return meta, data


def _file_diff(root: Path, folder: Path, rel: str, number: int) -> str:
    meta, old = _original(folder, number)
    path = root / rel
    new = path.read_bytes() if path.is_file() else None
    old_mode = meta.get("mode") if old is not None else None
    new_mode = path.stat().st_mode & 0o7777 if new is not None else None
    if old == new and (old is None or _git_mode(old_mode) == _git_mode(new_mode)):
        return ""
    return git_patch(rel, old, new, old_mode, new_mode)


def _git_mode(mode: object) -> str:
    return "100755" if isinstance(mode, int) and mode & 0o111 else "100644"


def _lines(data: bytes) -> list[bytes]:
    # Split on LF only, keeping each line's end: a CR (CRLF files) stays part of its line,
    # as git sees it; bytes.splitlines would also split on a lone CR.
    parts = data.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    return lines + [parts[-1]] if parts[-1] else lines


def git_patch(
    rel: str, old: bytes | None, new: bytes | None, old_mode: object, new_mode: object
) -> str:
    """One file's change as `git diff` writes it, so `git apply` takes it: a `diff --git`
    header, `new file mode`/`deleted file mode` for created/deleted files, and a
    `\\ No newline at end of file` marker after a last line without one. Bytes that are
    not UTF-8 come back as surrogates; write the patch with errors="surrogateescape"."""
    out = [f"diff --git a/{rel} b/{rel}\n".encode()]
    if old is None:
        out.append(f"new file mode {_git_mode(new_mode)}\n".encode())
    elif new is None:
        out.append(f"deleted file mode {_git_mode(old_mode)}\n".encode())
    elif _git_mode(old_mode) != _git_mode(new_mode):
        out.append(f"old mode {_git_mode(old_mode)}\nnew mode {_git_mode(new_mode)}\n".encode())
    if old != new:
        for line in difflib.diff_bytes(
            difflib.unified_diff,
            _lines(old or b""),
            _lines(new or b""),
            b"/dev/null" if old is None else f"a/{rel}".encode(),
            b"/dev/null" if new is None else f"b/{rel}".encode(),
        ):
            out.append(line if line.endswith(b"\n") else line + b"\n\\ No newline at end of file\n")
    return b"".join(out).decode("utf-8", "surrogateescape")


def replay(root: Path, folder: Path) -> list[str]:
    """Restore every entry of one journal folder, then remove it.

    A Ctrl-C or SIGTERM in the middle waits until every file is back (issue #10: a second
    Ctrl-C 10 ms after the first used to leave half a restore and the journal behind).
    """
    with deferred_interrupts():
        return _replay(root, folder)


def _replay(root: Path, folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    restored = []
    made_dirs: list[str] = []
    numbers = sorted(int(p.stem) for p in folder.glob("*.json"))
    for number in numbers:
        meta, data = _original(folder, number)
        rel = str(meta["path"])
        path = root / rel
        if data is None:
            if path.is_file() or path.is_symlink():
                path.unlink()
            made = meta.get("made_dirs")
            if isinstance(made, list):
                made_dirs.extend(str(d) for d in made)
        else:
            write_atomic(path, data)
            mode = meta.get("mode")
            if isinstance(mode, int):
                os.chmod(path, mode)
        restored.append(rel)
    # Folders the attempt created, deepest first; the re-runs may have left bytecode there.
    for made in sorted(set(made_dirs), key=lambda d: d.count("/"), reverse=True):
        shutil.rmtree(root / made / "__pycache__", ignore_errors=True)
        _remove_if_empty(root / made)
    shutil.rmtree(folder, ignore_errors=True)
    _remove_if_empty(folder.parent)
    return restored


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (another attempt's journal) or already gone


def leftover_journal(root: Path) -> Path | None:
    """The journal folder when a fix run that was killed left files changed, else None."""
    base = root / JOURNAL_DIR
    return base if base.is_dir() and any(base.iterdir()) else None


def restore_all(root: Path) -> list[str]:
    """Replay every journal left under `root` (after a crash or a hard kill)."""
    base = root / JOURNAL_DIR
    restored: list[str] = []
    if base.is_dir():
        for folder in sorted(base.iterdir()):
            if folder.is_dir():
                restored.extend(replay(root, folder))
        shutil.rmtree(base, ignore_errors=True)
    return restored


# Everything under .agentic/ that is not a task spec: one file says so, written once.
BOOKKEEPING_IGNORE = "/runs/\n/journal/\n/active\n/lock\n/workspaces/\n"


def ignore_bookkeeping(root: Path, line: str = "") -> bool:
    """Create `.agentic/.gitignore` (BOOKKEEPING_IGNORE) when absent; True when created.

    The one place runs, journals and the active task are ignored: `init` writes it, and a run
    or `task start` writes it only when it is missing. An existing file is never changed — it
    is usually tracked, and a fix run must not modify a tracked file it does not report (issue
    12). Not the top-level .gitignore: while a task is active, a change to it would fall
    outside the task's scope; `.agentic/` is bookkeeping, which people may always change.
    `line` is kept for callers that name what they are about to create.
    """
    path = root / BOOKKEEPING / ".gitignore"
    if os.path.lexists(path):
        return False
    write_atomic(path, BOOKKEEPING_IGNORE)
    return True
