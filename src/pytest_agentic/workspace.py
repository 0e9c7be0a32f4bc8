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
        """A unified diff (a/ b/ paths, like git) of every journalled file against its original."""
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
    _, old = _original(folder, number)
    path = root / rel
    new = path.read_bytes() if path.is_file() else None
    if old == new:
        return ""
    old_lines = (old or b"").decode("utf-8", "replace").splitlines(keepends=True)
    new_lines = (new or b"").decode("utf-8", "replace").splitlines(keepends=True)
    return "".join(
        difflib.unified_diff(
            old_lines,
            new_lines,
            "/dev/null" if old is None else f"a/{rel}",
            "/dev/null" if new is None else f"b/{rel}",
        )
    )


def replay(root: Path, folder: Path) -> list[str]:
    """Restore every entry of one journal folder, then remove it."""
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


def ignore_bookkeeping(root: Path, line: str) -> bool:
    """Ignore `line` (a path under .agentic/) in `.agentic/.gitignore`; True when added.

    Not the top-level .gitignore: while a task is active, a change to it would fall outside
    the task's scope and the next commit would be refused. `.agentic/` is bookkeeping, which
    the path policy always lets people change.
    """
    path = root / BOOKKEEPING / ".gitignore"
    entry = "/" + line.removeprefix(BOOKKEEPING + "/")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    if entry in {raw.strip() for raw in text.splitlines()}:
        return False
    if text and not text.endswith("\n"):
        text += "\n"
    write_atomic(path, text + entry + "\n")
    return True
