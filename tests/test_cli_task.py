"""`pytest-agentic task ...`, as a user types it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_agentic import cli
from pytest_agentic.config import load_config
from pytest_agentic.tasks import load_task


@pytest.fixture
def repo(git_repo: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    root = git_repo(
        {
            "pyproject.toml": '[project]\nname = "demo"\n',
            "src/app/billing.py": "",
            "src/app/webhooks/send.py": "",
            "src/app/webhooks/retry.py": "",
            "tests/test_webhooks.py": "",
        }
    )
    monkeypatch.chdir(root)
    return root


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_new_writes_a_valid_task_file(repo: Path, capsys) -> None:
    code, out, _ = run(
        capsys,
        "task",
        "new",
        "retry-webhooks",
        "--scope",
        "src/app/webhooks/**",
        "--scope",
        "tests/test_webhooks.py",
        "--title",
        "Retry webhooks with backoff",
        "--goal",
        "Failed deliveries are retried",
        "--verify",
        "tests/test_webhooks.py",
        "--verify=-k",
        "--verify",
        "retry",
    )
    assert code == 0
    assert out == (
        "created .agentic/tasks/retry-webhooks.toml; start it with "
        "`pytest-agentic task start retry-webhooks`\n"
    )
    task = load_task(load_config(repo), "retry-webhooks")
    assert task.scope == ("src/app/webhooks/**", "tests/test_webhooks.py")
    assert task.title == "Retry webhooks with backoff"
    assert task.goal == "Failed deliveries are retried"
    assert task.verify == ("tests/test_webhooks.py", "-k", "retry")


def test_new_refuses_an_existing_task_bad_ids_and_unknown_dependencies(repo: Path, capsys) -> None:
    assert run(capsys, "task", "new", "a", "--scope", "x")[0] == 0
    assert run(capsys, "task", "new", "a", "--scope", "y")[2] == (
        "pytest-agentic: error: .agentic/tasks/a.toml: task 'a' already exists; edit it, or "
        "`pytest-agentic task widen a GLOB` to add to its scope\n"
    )
    code, _, err = run(capsys, "task", "new", "no/slash", "--scope", "x")
    assert code == 2
    assert err.startswith("pytest-agentic: error: task new: bad task id 'no/slash'")
    code, _, err = run(capsys, "task", "new", "b", "--scope", "x", "--depends-on", "ghost")
    assert (code, err) == (
        2,
        "pytest-agentic: error: --depends-on: unknown task 'ghost'; create it first\n",
    )
    assert not (repo / ".agentic/tasks/b.toml").exists()


def test_start_stop_and_list_in_dependency_order(repo: Path, capsys) -> None:
    run(capsys, "task", "new", "deploy", "--scope", "x")
    run(capsys, "task", "new", "schema", "--scope", "db/**", "--title", "Schema")
    (repo / ".agentic/tasks/deploy.toml").write_text('scope = ["x"]\ndepends_on = ["schema"]\n')
    code, out, _ = run(capsys, "task", "start", "deploy")
    assert code == 0
    assert out.splitlines() == [
        "added .agentic/active to .agentic/.gitignore",
        "task 'deploy' is active; changes outside its scope will be refused",
    ]
    assert (repo / ".agentic/active").read_text() == "deploy\n"
    assert (repo / ".agentic/.gitignore").read_text() == "/active\n"
    # Starting again does not add the ignore line twice.
    assert run(capsys, "task", "start", "deploy")[1].splitlines()[0].startswith("task 'deploy'")
    assert run(capsys, "task", "list")[1] == "  schema  Schema\n* deploy  (after schema)\n"
    assert run(capsys, "task", "stop")[1] == "task 'deploy' stopped\n"
    assert not (repo / ".agentic/active").exists()
    assert run(capsys, "task", "list")[1] == "  schema  Schema\n  deploy  (after schema)\n"
    code, _, err = run(capsys, "task", "start", "ghost")
    assert code == 2 and "no such task 'ghost'" in err


def test_show_lists_tracked_files_the_scope_matches(repo: Path, capsys) -> None:
    run(
        capsys,
        "task",
        "new",
        "w",
        "--scope",
        "src/app/webhooks/**",
        "--scope",
        "!src/app/webhooks/retry.py",
    )
    code, out, _ = run(capsys, "task", "show", "w")
    assert code == 0
    assert out.splitlines()[-2:] == [
        "files:      1 tracked file in scope",
        "  src/app/webhooks/send.py",
    ]
    assert "scope:      src/app/webhooks/**, !src/app/webhooks/retry.py" in out.splitlines()


def test_widen_adds_globs(repo: Path, capsys) -> None:
    run(capsys, "task", "new", "w", "--scope", "src/app/webhooks/**")
    assert run(capsys, "task", "widen", "w", "src/app/billing.py")[0] == 0
    assert load_task(load_config(repo), "w").scope == ("src/app/webhooks/**", "src/app/billing.py")


def test_check_reports_every_problem_and_exits_1(repo: Path, capsys) -> None:
    run(capsys, "task", "new", "good", "--scope", "x")
    assert run(capsys, "task", "check") == (0, "1 task valid\n", "")
    folder = repo / ".agentic/tasks"
    (folder / "empty.toml").write_text("scope = []\n")
    (folder / "typo.toml").write_text('scope = ["x"]\ndepends = ["good"]\n')
    code, _, err = run(capsys, "task", "check")
    assert code == 1
    assert err.splitlines() == [
        ".agentic/tasks/empty.toml: scope is empty; list the globs this task may change",
        ".agentic/tasks/typo.toml: unknown key 'depends'; did you mean 'depends_on'?",
    ]


def test_console_script_runs_without_traceback(repo: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_agentic.cli", "task", "show", "nope"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1
