"""agentic-scope under attack (issue 14): each bypass gets the same verdict staged, at
pre-push (PRE_COMMIT_FROM_REF/TO_REF) and in CI (`--base` on a fresh clone), on real git."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_agentic import cli
from pytest_agentic.hooks import scope as hook

Git = Callable[..., str]
TASK = 'scope = ["src/app/webhooks/**"]\n'
WIDE = 'scope = ["**"]\n'
FILES = {
    "pyproject.toml": '[project]\nname = "demo"\n',
    "src/app/billing.py": "b = 1\n",
    "src/app/webhooks/send.py": "s = 1\n",
    ".agentic/tasks/webhooks.toml": TASK,
    ".agentic/tasks/wide.toml": WIDE.replace("**", "docs/**"),
    ".gitignore": ".agentic/active\n",
}


@pytest.fixture
def repo(git_repo: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    root = git_repo(FILES)
    (root / ".agentic/active").write_text("webhooks\n")
    monkeypatch.chdir(root)
    return root


def edit(root: Path, rel: str, text: str = "changed\n") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    code = hook.main(list(args))
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    return code, err.splitlines()


def three_verdicts(
    root: Path, git: Git, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> list[tuple[int, list[str]]]:
    """The verdict on what is staged now; then on it as a commit at pre-push; then in CI on a
    fresh clone with `--base origin/main --task ID` (no .agentic/active there)."""
    staged = run(capsys)
    base = git(root, "rev-parse", "HEAD").strip()
    # --allow-empty: with `ignore = all` git thinks a gitlink bump is no change, yet commits it
    git(root, "commit", "-q", "--no-verify", "--allow-empty", "-m", "the change")
    head = git(root, "rev-parse", "HEAD").strip()
    monkeypatch.setenv("PRE_COMMIT_FROM_REF", base)
    monkeypatch.setenv("PRE_COMMIT_TO_REF", head)
    pre_push = run(capsys)
    monkeypatch.delenv("PRE_COMMIT_FROM_REF")
    monkeypatch.delenv("PRE_COMMIT_TO_REF")
    clone = root.parent / f"{root.name}-clone"
    subprocess.run(
        ["git", "clone", "-q", "--no-local", str(root), str(clone)], check=True, capture_output=True
    )
    git(clone, "branch", "-q", "-f", "base", base)
    monkeypatch.chdir(clone)
    ci = run(capsys, "--base", "base", "--task", "webhooks")
    monkeypatch.chdir(root)
    return [staged, pre_push, ci]


def test_symlinked_spec_is_an_error_everywhere(repo: Path, git: Git, capsys, monkeypatch) -> None:
    spec = repo / ".agentic/tasks/webhooks.toml"
    spec.unlink()
    os.symlink("wide.toml", spec)
    edit(repo, ".agentic/tasks/wide.toml", WIDE)
    edit(repo, "src/app/billing.py")
    git(repo, "add", "-A")
    verdicts = three_verdicts(repo, git, capsys, monkeypatch)
    for code, lines in verdicts:
        assert code == 2, lines
        assert len(lines) == 1
        assert ".agentic/tasks/webhooks.toml (as of " in lines[0]
        assert "is a symlink" in lines[0]


def test_a_spec_that_became_a_symlink_earlier_is_an_error_too(repo: Path, git: Git, capsys) -> None:
    spec = repo / ".agentic/tasks/webhooks.toml"
    spec.unlink()
    os.symlink("wide.toml", spec)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--no-verify", "-m", "link")
    edit(repo, "src/app/billing.py")
    git(repo, "add", "-A")
    code, lines = run(capsys)
    assert code == 2
    assert lines == [
        "agentic-scope: error: .agentic/tasks/webhooks.toml (as of HEAD): is a symlink; the "
        "scope check reads settings and task specs only from regular files, never through a "
        "link: replace the link with the file"
    ]


def test_symlinked_tasks_folder_is_an_error_everywhere(
    repo: Path, git: Git, capsys, monkeypatch
) -> None:
    edit(repo, ".agentic/t2/webhooks.toml", WIDE)
    shutil.rmtree(repo / ".agentic/tasks")
    os.symlink("t2", repo / ".agentic/tasks")
    edit(repo, "src/app/billing.py")
    git(repo, "add", "-A")
    for code, lines in three_verdicts(repo, git, capsys, monkeypatch):
        assert code == 2, lines
        assert "is reached through the symlink .agentic/tasks" in lines[0]


def test_a_worktree_symlink_spec_is_refused_even_unstaged(repo: Path, git: Git, capsys) -> None:
    spec = repo / ".agentic/tasks/webhooks.toml"
    spec.unlink()
    os.symlink("wide.toml", spec)  # not staged: the index still has the regular file
    edit(repo, "src/app/webhooks/send.py")
    git(repo, "add", "src")
    code, lines = run(capsys)
    assert code == 2
    assert "webhooks.toml: is a symlink in the working tree" in lines[0]


def test_moving_tasks_dir_in_the_same_change_does_not_count(
    repo: Path, git: Git, capsys, monkeypatch
) -> None:
    edit(
        repo,
        "pyproject.toml",
        FILES["pyproject.toml"] + '[tool.pytest-agentic]\ntasks_dir = ".agentic/t2"\n',
    )
    edit(repo, ".agentic/t2/webhooks.toml", WIDE)
    edit(repo, "src/app/billing.py")
    git(repo, "add", "-A")
    for code, lines in three_verdicts(repo, git, capsys, monkeypatch):
        assert code == 1, lines
        assert sorted(lines[:-1]) == [
            "pyproject.toml: modified: outside the scope of task 'webhooks'",
            "src/app/billing.py: modified: outside the scope of task 'webhooks'",
        ]


def test_a_gitlink_bump_is_seen_even_with_ignore_all(
    repo: Path, git: Git, capsys, monkeypatch
) -> None:
    (repo / ".gitmodules").write_text(
        '[submodule "lib"]\n\tpath = vendor/lib\n\turl = ./lib\n\tignore = all\n'
    )
    first = git(repo, "rev-parse", "HEAD").strip()
    edit(repo, ".agentic/tasks/webhooks.toml", 'scope = ["src/app/webhooks/**", ".gitmodules"]\n')
    git(repo, "add", "-A")
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{first},vendor/lib")
    git(repo, "commit", "-q", "--no-verify", "-m", "vendor lib")
    git(repo, "config", "diff.ignoreSubmodules", "all")  # a local setting cannot hide it either
    git(repo, "update-index", "--cacheinfo", f"160000,{'1' * 40},vendor/lib")
    verdicts = three_verdicts(repo, git, capsys, monkeypatch)
    for code, lines in verdicts:
        assert code == 1, lines
        assert lines[0] == "vendor/lib: modified: outside the scope of task 'webhooks'"


def test_widen_then_use_passes_everywhere_and_widen_and_use_fails_everywhere(
    repo: Path, git: Git, capsys, monkeypatch
) -> None:
    base = git(repo, "rev-parse", "HEAD").strip()
    widened = 'scope = ["src/app/webhooks/**", "src/app/billing.py"]\n'
    edit(repo, ".agentic/tasks/webhooks.toml", widened)
    git(repo, "add", "-A")
    assert run(capsys) == (0, [])
    git(repo, "commit", "-qm", "widen")
    edit(repo, "src/app/billing.py")
    git(repo, "add", "-A")
    assert run(capsys) == (0, [])
    git(repo, "commit", "-qm", "use")
    head = git(repo, "rev-parse", "HEAD").strip()
    assert run(capsys, "--base", base) == (0, [])
    monkeypatch.setenv("PRE_COMMIT_FROM_REF", base)
    monkeypatch.setenv("PRE_COMMIT_TO_REF", head)
    assert run(capsys) == (0, [])
    assert cli.main(["scope", "check", "--base", base]) == 0
    monkeypatch.delenv("PRE_COMMIT_FROM_REF")
    monkeypatch.delenv("PRE_COMMIT_TO_REF")

    # The same two edits in one commit: rejected staged, and commit by commit in a range.
    git(repo, "reset", "-q", "--hard", base)
    edit(repo, ".agentic/tasks/webhooks.toml", widened)
    edit(repo, "src/app/billing.py")
    git(repo, "add", "-A")
    verdicts = three_verdicts(repo, git, capsys, monkeypatch)
    for code, lines in verdicts:
        assert code == 1
        assert lines[0].startswith(
            "src/app/billing.py: modified: outside the scope of task 'webhooks' as committed in "
        )
        assert "widens .agentic/tasks/webhooks.toml to include it" in lines[0]
    assert "in commit " in verdicts[1][1][-1] and "in commit " in verdicts[2][1][-1]


def test_commit_amend_of_widen_and_use_is_rejected_by_the_real_pre_commit_hook(
    repo: Path, git: Git
) -> None:
    hook_file = repo / ".git/hooks/pre-commit"
    hook_file.write_text(f"#!/bin/sh\nexec {sys.executable} -m pytest_agentic.hooks.scope\n")
    hook_file.chmod(hook_file.stat().st_mode | stat.S_IEXEC)
    edit(repo, ".agentic/tasks/webhooks.toml", 'scope = ["src/app/**"]\n')
    git(repo, "commit", "-qam", "widen")
    edit(repo, "src/app/billing.py")
    proc = subprocess.run(
        ["git", "commit", "-qa", "--amend", "--no-edit"], cwd=repo, capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert (
        "src/app/billing.py: modified: outside the scope of task 'webhooks' as committed in "
        "HEAD^ (amending HEAD)" in proc.stderr
    )
    # The honest flow: a new commit on top of the widening.
    proc = subprocess.run(
        ["git", "commit", "-qam", "use"], cwd=repo, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def _conflicting_branches(repo: Path, git: Git) -> str:
    """main changes send.py and billing.py; feature changes send.py: merging main into
    feature conflicts in send.py. Returns main's tip before the merge."""
    git(repo, "checkout", "-q", "-b", "feature")
    edit(repo, "src/app/webhooks/send.py", "s = 'feature'\n")
    git(repo, "commit", "-qam", "feature work")
    git(repo, "checkout", "-q", "main")
    edit(repo, "src/app/webhooks/send.py", "s = 'main'\n")
    edit(repo, "src/app/billing.py", "b = 'main'\n")
    git(repo, "commit", "-qam", "main work")
    base = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "checkout", "-q", "feature")
    proc = subprocess.run(["git", "merge", "-q", "main"], cwd=repo, capture_output=True)
    assert proc.returncode != 0  # the conflict
    return base


def test_a_merge_after_a_conflict_is_judged_by_what_it_adds(
    repo: Path, git: Git, capsys, monkeypatch
) -> None:
    start = git(repo, "rev-parse", "main").strip()
    main_tip = _conflicting_branches(repo, git)
    edit(repo, "src/app/webhooks/send.py", "s = 'both'\n")  # the resolution, in scope
    git(repo, "add", "-A")
    assert run(capsys) == (0, [])  # billing.py came from main: not this merge's change
    git(repo, "commit", "-q", "--no-edit")
    head = git(repo, "rev-parse", "HEAD").strip()
    assert run(capsys, "--base", main_tip) == (0, [])  # CI: the feature branch against main
    monkeypatch.setenv("PRE_COMMIT_FROM_REF", start)
    monkeypatch.setenv("PRE_COMMIT_TO_REF", head)
    # Pre-push from the fork point: main's own commit is judged too, and it touched billing.
    code, lines = run(capsys)
    assert code == 1 and "(main work)" in lines[-1]
    assert lines[0] == "src/app/billing.py: modified: outside the scope of task 'webhooks'"
    assert not any("Merge branch" in line for line in lines)


def test_an_evil_merge_is_rejected_everywhere(repo: Path, git: Git, capsys, monkeypatch) -> None:
    main_tip = _conflicting_branches(repo, git)
    edit(repo, "src/app/webhooks/send.py", "s = 'both'\n")
    edit(repo, "src/app/billing.py", "b = 'sneaked in during the merge'\n")
    git(repo, "add", "-A")
    staged = run(capsys)
    git(repo, "commit", "-q", "--no-edit", "--no-verify")
    ci = run(capsys, "--base", main_tip)
    for code, lines in (staged, ci):
        assert code == 1
        assert lines[0] == "src/app/billing.py: modified: outside the scope of task 'webhooks'"
    assert "(Merge branch 'main' into feature)" in ci[1][-1]


def test_option_injection_through_base_is_an_unknown_revision(repo: Path, capsys) -> None:
    code, lines = run(capsys, "--base=--output=/tmp/x")
    assert code == 2
    assert lines == [
        "agentic-scope: error: git: unknown revision '--output=/tmp/x'; fetch it or name another"
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe\n", ".agentic/active: not valid UTF-8"),
        (None, ".agentic/active: a folder"),
    ],
)
def test_a_bad_active_file_is_one_line(
    repo: Path, capsys, content: bytes | None, message: str
) -> None:
    active = repo / ".agentic/active"
    active.unlink()
    if content is None:
        active.mkdir()
    else:
        active.write_bytes(content)
    code, lines = run(capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(f"agentic-scope: error: {message}")
    assert cli.main(["task", "list"]) in (0, 1, 2)  # no traceback from the CLI either
    assert "Traceback" not in capsys.readouterr().err


def test_a_fifo_active_file_is_refused_not_waited_on(repo: Path) -> None:
    active = repo / ".agentic/active"
    active.unlink()
    os.mkfifo(active)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_agentic.hooks.scope"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("agentic-scope: error: .agentic/active: not a regular file")


def test_deeply_nested_spec_and_pyproject_are_one_line_errors(repo: Path, git: Git, capsys) -> None:
    deep = "x = " + "[" * 1000 + "]" * 1000 + "\n"
    edit(repo, ".agentic/tasks/webhooks.toml", TASK + deep)
    git(repo, "commit", "-qam", "deep spec")
    edit(repo, "src/app/webhooks/send.py")
    git(repo, "add", "-A")
    code, lines = run(capsys)
    assert (code, lines) == (
        2,
        ["agentic-scope: error: .agentic/tasks/webhooks.toml: invalid TOML: nested too deeply"],
    )
    git(repo, "reset", "-q", "--hard", "HEAD^")
    edit(repo, "pyproject.toml", FILES["pyproject.toml"] + deep)
    git(repo, "commit", "-qam", "deep pyproject")
    edit(repo, "src/app/webhooks/send.py")
    git(repo, "add", "-A")
    code, lines = run(capsys)
    assert (code, lines) == (
        2,
        ["agentic-scope: error: pyproject.toml (as of HEAD): invalid TOML: nested too deeply"],
    )
    assert cli.main(["task", "list"]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("pyproject.toml: invalid TOML: nested too deeply")
    assert "Traceback" not in err
