"""The journal's patches are real git patches: `git apply --check` takes every one."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_agentic.workspace import Journal

ORIGINAL = {
    "no_newline.py": b"x = 1\ny = 2",  # no final newline
    "crlf.py": b"a = 1\r\nb = 2\r\n",
    "doomed.py": b"gone = True\n",
    "tool.sh": b"#!/bin/sh\necho hi\n",
    "latin.py": b"# caf\xe9\nv = 1\n",
    "keep.py": b"unchanged\n",
}


def edit_everything(root: Path, journal: Journal) -> None:
    changes: dict[str, bytes | None] = {
        "no_newline.py": b"x = 1\ny = 3",
        "crlf.py": b"a = 1\r\nb = 3\r\nc = 4",
        "doomed.py": None,
        "created.py": b"new = 1\n",
        "created_no_newline.py": b"new = 2",
        "empty_new.py": b"",
        "latin.py": b"# caf\xe9\nv = 2\n",
        "pkg/deep/mod.py": b"deep = 1\n",
    }
    for rel, data in changes.items():
        journal.save(rel)
        path = root / rel
        if data is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    journal.save("tool.sh")
    (root / "tool.sh").chmod(0o755)
    journal.save("keep.py")  # journalled, never changed: no patch for it


@pytest.fixture
def repo(git_repo: Callable[..., Path], git: Callable[..., str]) -> Path:
    root = git_repo()
    for rel, data in ORIGINAL.items():
        (root / rel).write_bytes(data)
    (root / "tool.sh").chmod(0o644)
    git(root, "config", "core.autocrlf", "false")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "base")
    return root


def test_every_patch_applies_to_a_clean_clone(
    repo: Path, tmp_path: Path, git: Callable[..., str]
) -> None:
    journal = Journal(repo, "t")
    edit_everything(repo, journal)
    patch = journal.diff()
    expected = {p.relative_to(repo).as_posix(): p.read_bytes() for p in repo.rglob("*.py")}
    assert "keep.py" not in patch
    assert patch.count("\\ No newline at end of file\n") == 4
    assert "new file mode 100644\n--- /dev/null\n+++ b/created.py\n" in patch
    assert "diff --git a/empty_new.py b/empty_new.py\nnew file mode 100644\n" in patch
    assert "deleted file mode 100644\n--- a/doomed.py\n+++ /dev/null\n" in patch
    assert "old mode 100644\nnew mode 100755\n" in patch
    patch_file = tmp_path / "fix.patch"
    patch_file.write_bytes(patch.encode("utf-8", "surrogateescape"))

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    git(clone, "config", "core.autocrlf", "false")
    git(clone, "apply", "--check", str(patch_file))
    git(clone, "apply", str(patch_file))
    assert {
        p.relative_to(clone).as_posix(): p.read_bytes()
        for p in clone.rglob("*.py")
        if ".git" not in p.parts
    } == expected
    assert (clone / "tool.sh").stat().st_mode & 0o111
    # And the journal still restores the original bytes.
    journal.restore()
    assert {rel: (repo / rel).read_bytes() for rel in ORIGINAL} == ORIGINAL
    assert not (repo / "created.py").exists() and not (repo / "pkg").exists()
