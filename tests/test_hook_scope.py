"""The agentic-scope hook and `pytest-agentic scope check`, on real git repositories."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_agentic import cli
from pytest_agentic.hooks import scope as hook

Git = Callable[..., str]
TASK = 'title = "webhooks"\nscope = ["src/app/webhooks/**", "tests/test_webhooks.py"]\n'
FILES = {
    "pyproject.toml": '[project]\nname = "demo"\n',
    "src/app/billing.py": "b = 1\n",
    "src/app/webhooks/send.py": "s = 1\n",
    "tests/test_webhooks.py": "def test(): pass\n",
    ".agentic/tasks/webhooks.toml": TASK,
    ".agentic/active": "webhooks\n",
}


@pytest.fixture
def repo(git_repo: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    root = git_repo(FILES)
    monkeypatch.chdir(root)
    return root


def edit(root: Path, rel: str, text: str = "changed\n") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def run_hook(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    code = hook.main(list(args))
    out, err = capsys.readouterr()
    assert out == ""
    return code, err.splitlines()


def test_in_scope_changes_pass_silently(repo: Path, git: Git, capsys) -> None:
    edit(repo, "src/app/webhooks/send.py")
    edit(repo, "src/app/webhooks/retry.py")
    git(repo, "add", "-A")
    assert run_hook(capsys) == (0, [])


def test_out_of_scope_change_is_rejected_with_status_reason_and_fix(
    repo: Path, git: Git, capsys
) -> None:
    edit(repo, "src/app/billing.py")
    edit(repo, "src/app/webhooks/send.py")
    git(repo, "add", "-A")
    code, lines = run_hook(capsys)
    assert code == 1
    assert lines == [
        "src/app/billing.py: modified: outside the scope of task 'webhooks'",
        "task 'webhooks' (.agentic/tasks/webhooks.toml, scope as of HEAD) does not allow 1 "
        "changed path: unstage them (`git restore --staged PATH`), or widen the scope "
        "(`pytest-agentic task widen webhooks GLOB` or edit the TOML) and commit that on its "
        "own first",
    ]


def test_unstaged_changes_are_not_judged(repo: Path, capsys) -> None:
    edit(repo, "src/app/billing.py")
    assert run_hook(capsys) == (0, [])


def test_no_active_task_passes_unless_a_task_is_required(repo: Path, git: Git, capsys) -> None:
    (repo / ".agentic/active").unlink()
    edit(repo, "src/app/billing.py")
    git(repo, "add", "-A")
    assert run_hook(capsys) == (0, [])
    edit(
        repo,
        "pyproject.toml",
        '[project]\nname = "demo"\n[tool.pytest-agentic]\nrequire_task = true\n',
    )
    # Issue 14: settings bind as committed in HEAD, so the uncommitted (even staged) setting
    # does not count yet; once committed, it does.
    git(repo, "add", "pyproject.toml")
    assert run_hook(capsys) == (0, [])
    git(repo, "commit", "-qm", "require a task")
    edit(repo, "src/app/billing.py", "again\n")
    git(repo, "add", "-A")
    code, lines = run_hook(capsys)
    assert code == 1
    assert lines == [
        "agentic-scope: no active task, and pyproject.toml (as of HEAD) sets require_task = "
        "true: start one with `pytest-agentic task start ID` or set PYTEST_AGENTIC_TASK"
    ]


def test_renames_across_the_boundary_report_both_sides(repo: Path, git: Git, capsys) -> None:
    git(repo, "mv", "src/app/billing.py", "src/app/webhooks/billing.py")
    code, lines = run_hook(capsys)
    assert code == 1
    assert lines[:-1] == ["src/app/billing.py: renamed from: outside the scope of task 'webhooks'"]
    git(repo, "reset", "-q", "--hard")
    git(repo, "mv", "src/app/webhooks/send.py", "src/app/send.py")
    code, lines = run_hook(capsys)
    assert code == 1
    assert lines[:-1] == ["src/app/send.py: renamed to: outside the scope of task 'webhooks'"]


def test_deletes_and_type_changes_are_judged(repo: Path, git: Git, capsys) -> None:
    git(repo, "rm", "-q", "src/app/billing.py")
    (repo / "pyproject.toml").unlink()
    os.symlink("src/app/webhooks/send.py", repo / "pyproject.toml")
    git(repo, "add", "-A")
    code, lines = run_hook(capsys)
    assert code == 1
    assert sorted(lines[:-1]) == [
        "pyproject.toml: type changed: outside the scope of task 'webhooks'",
        "src/app/billing.py: deleted: outside the scope of task 'webhooks'",
    ]


def test_a_change_cannot_widen_its_own_scope(repo: Path, git: Git, capsys) -> None:
    edit(
        repo,
        ".agentic/tasks/webhooks.toml",
        TASK.replace('"tests/', '"src/app/billing.py", "tests/'),
    )
    edit(repo, "src/app/billing.py")
    git(repo, "add", "-A")
    code, lines = run_hook(capsys)
    assert code == 1
    assert lines[0] == (
        "src/app/billing.py: modified: outside the scope of task 'webhooks' as committed in HEAD; "
        "this change widens .agentic/tasks/webhooks.toml to include it: commit the scope change "
        "on its own first"
    )
    # Committing the widening on its own first makes the same change acceptable.
    git(repo, "reset", "-q", "src/app/billing.py")
    assert run_hook(capsys) == (0, [])
    git(repo, "commit", "-qm", "widen")
    git(repo, "add", "-A")
    assert run_hook(capsys) == (0, [])


def test_a_task_created_in_this_change_is_read_from_the_index(
    git_repo: Callable[..., Path], git: Git, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    root = git_repo({"pyproject.toml": '[project]\nname = "x"\n'}, commit=False)
    monkeypatch.chdir(root)  # a repository with no commits yet
    edit(root, ".agentic/tasks/new.toml", 'scope = ["lib/**"]\n')
    edit(root, ".agentic/active", "new\n")
    edit(root, "lib/a.py")
    git(root, "add", "lib", ".agentic/tasks", "pyproject.toml")
    code, lines = run_hook(capsys)
    assert code == 1
    assert lines[0] == "pyproject.toml: added: outside the scope of task 'new'"
    git(root, "reset", "-q", "pyproject.toml")
    assert run_hook(capsys) == (0, [])


def test_paths_with_spaces_and_non_ascii(repo: Path, git: Git, capsys) -> None:
    edit(repo, "src/app/webhooks/mit leerzeichen ü.py")
    edit(repo, "docs/ünïcode näme.md")
    git(repo, "add", "-A")
    code, lines = run_hook(capsys)
    assert code == 1
    assert lines[:-1] == ["docs/ünïcode näme.md: added: outside the scope of task 'webhooks'"]


def test_runs_from_a_subdirectory(repo: Path, git: Git, monkeypatch, capsys) -> None:
    edit(repo, "src/app/billing.py")
    git(repo, "add", "-A")
    monkeypatch.chdir(repo / "src/app/webhooks")
    code, lines = run_hook(capsys)
    assert code == 1
    assert lines[0] == "src/app/billing.py: modified: outside the scope of task 'webhooks'"


def test_runs_in_a_git_worktree(repo: Path, git: Git, monkeypatch, capsys, tmp_path) -> None:
    wt = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", str(wt), "-b", "side")
    edit(wt, ".agentic/active", "webhooks\n")
    edit(wt, "src/app/billing.py")
    git(wt, "add", "src")
    monkeypatch.chdir(wt)
    code, lines = run_hook(capsys)
    assert code == 1
    assert lines[0] == "src/app/billing.py: modified: outside the scope of task 'webhooks'"


def test_same_verdict_staged_in_ci_and_at_pre_push(
    repo: Path, git: Git, monkeypatch, capsys
) -> None:
    edit(repo, "src/app/billing.py")
    edit(repo, "src/app/webhooks/send.py")
    git(repo, "add", "-A")
    staged = run_hook(capsys)
    base = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "commit", "-qm", "change")
    ci = run_hook(capsys, "--base", base)
    monkeypatch.setenv("PRE_COMMIT_FROM_REF", base)
    monkeypatch.setenv("PRE_COMMIT_TO_REF", git(repo, "rev-parse", "HEAD").strip())
    pre_push = run_hook(capsys)
    assert staged[0] == ci[0] == pre_push[0] == 1
    assert (
        staged[1][0]
        == ci[1][0]
        == pre_push[1][0]
        == ("src/app/billing.py: modified: outside the scope of task 'webhooks'")
    )
    assert ci[1][-1].startswith(
        f"task 'webhooks' (.agentic/tasks/webhooks.toml, scope as of {base}) does not allow 1"
    )


def test_cli_scope_check_matches_the_hook(repo: Path, git: Git, capsys) -> None:
    edit(repo, "src/app/billing.py")
    git(repo, "add", "-A")
    assert cli.main(["scope", "check", "--staged"]) == 1
    _, err = capsys.readouterr()
    assert (
        err.splitlines()[0] == "src/app/billing.py: modified: outside the scope of task 'webhooks'"
    )
    assert cli.main(["scope", "check", "--task", "other"]) == 2
    _, err = capsys.readouterr()
    assert err.splitlines() == [
        "pytest-agentic: error: .agentic/tasks/other.toml: no such task 'other' (named by "
        "--task); create it with `pytest-agentic task new other --scope GLOB` or stop it with "
        "`pytest-agentic task stop`"
    ]


def test_an_invalid_committed_task_is_a_one_line_error_with_exit_2(
    repo: Path, git: Git, capsys
) -> None:
    edit(repo, ".agentic/tasks/webhooks.toml", "scope = []\n")
    git(repo, "commit", "-qam", "break it")
    edit(repo, "src/app/webhooks/send.py")
    git(repo, "add", "-A")
    assert run_hook(capsys) == (
        2,
        [
            "agentic-scope: error: .agentic/tasks/webhooks.toml: scope is empty; list the "
            "globs this task may change"
        ],
    )


def test_not_a_git_repository(tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / ".agentic").mkdir()
    (tmp_path / ".agentic/active").write_text("x\n")
    monkeypatch.chdir(tmp_path)
    code, lines = run_hook(capsys)
    assert code == 2
    assert lines == [
        f"agentic-scope: error: {tmp_path}: not inside a git repository; run `git init` or cd "
        "into one"
    ]


def test_a_real_git_commit_all_is_judged_on_the_index_git_commits(repo: Path, git: Git) -> None:
    """`git commit -a` stages into a temporary index (GIT_INDEX_FILE); the hook must see it."""
    import stat
    import subprocess
    import sys

    hook_file = repo / ".git/hooks/pre-commit"
    hook_file.write_text(f"#!/bin/sh\nexec {sys.executable} -m pytest_agentic.hooks.scope\n")
    hook_file.chmod(hook_file.stat().st_mode | stat.S_IEXEC)
    edit(repo, "src/app/billing.py")  # modified but not staged: only `-a` stages it
    proc = subprocess.run(
        ["git", "commit", "-a", "-m", "sneak"], cwd=repo, capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "src/app/billing.py: modified: outside the scope of task 'webhooks'" in proc.stderr
    assert git(repo, "log", "--format=%s") == "initial\n"
    git(repo, "checkout", "--", "src/app/billing.py")
    edit(repo, "src/app/webhooks/send.py")
    proc = subprocess.run(["git", "commit", "-a", "-m", "ok"], cwd=repo, capture_output=True)
    assert proc.returncode == 0, proc.stderr
