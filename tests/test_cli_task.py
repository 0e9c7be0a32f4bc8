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
        "created .agentic/.gitignore (ignores .agentic/active, runs and journals)",
        "task 'deploy' is active; changes outside its scope will be refused",
    ]
    assert (repo / ".agentic/active").read_text() == "deploy\n"
    assert (repo / ".agentic/.gitignore").read_text() == (
        "/runs/\n/journal/\n/active\n/lock\n/workspaces/\n"
    )
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
    run(capsys, "task", "new", "good", "--scope", "src/**")
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


def test_check_lists_every_problem_of_every_file_with_relative_paths(repo: Path, capsys) -> None:
    run(capsys, "task", "new", "good", "--scope", "src/**")
    folder = repo / ".agentic/tasks"
    # One file with four problems, one with bad TOML, one with an unknown dependency.
    (folder / "many.toml").write_text(
        'id = "other"\nscope = ["!x"]\ntitel = "t"\nverify = "tests"\n'
    )
    (folder / "broken.toml").write_text('scope = ["x"\n')
    (folder / "dep.toml").write_text('scope = ["src/**"]\ndepends_on = ["ghost", "good"]\n')
    code, out, err = run(capsys, "task", "check")
    assert code == 1
    lines = err.splitlines()
    assert lines[0].startswith(".agentic/tasks/broken.toml")
    assert "invalid TOML" in lines[0]
    assert lines[1:] == [
        ".agentic/tasks/many.toml: unknown key 'titel'; did you mean 'title'?",
        ".agentic/tasks/many.toml: verify must be a list of strings, not str",
        ".agentic/tasks/many.toml: id 'other' does not match the file name; rename the file "
        "to other.toml or set id = 'many'",
        ".agentic/tasks/many.toml: scope has only '!' exclusions, so it matches nothing",
        ".agentic/tasks/dep.toml: depends_on names unknown task 'ghost'",
    ]
    assert str(repo) not in err


def test_check_warns_about_a_scope_matching_no_tracked_file(repo: Path, capsys) -> None:
    run(capsys, "task", "new", "new-module", "--scope", "src/app/new.py", "--scope", "src/app/*")
    code, out, err = run(capsys, "task", "check")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        ".agentic/tasks/new-module.toml: warning: scope pattern 'src/app/new.py' matches no "
        "tracked file (fine if the task creates it)",
        "1 task valid",
    ]


def test_list_marks_an_invalid_spec_and_still_lists_the_others(repo: Path, capsys) -> None:
    run(capsys, "task", "new", "good", "--scope", "src/**", "--title", "Good one")
    run(capsys, "task", "start", "good")
    (repo / ".agentic/tasks/bad.toml").write_text("scope = []\n")
    code, out, err = run(capsys, "task", "list")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "* good  Good one",
        "! bad  (invalid: .agentic/tasks/bad.toml: scope is empty; list the globs this task may "
        "change; see `pytest-agentic task check`)",
    ]


def test_verify_runs_the_specs_arguments_with_pytest(repo: Path, capsys) -> None:
    (repo / "tests/test_webhooks.py").write_text(
        "def test_good():\n    pass\n\ndef test_bad():\n    assert False\n"
    )
    run(
        capsys,
        "task",
        "new",
        "t",
        "--scope",
        "src/**",
        "--verify",
        "tests/test_webhooks.py",
        "--verify=-k",
        "--verify",
        "good",
    )
    run(capsys, "task", "new", "red", "--scope", "src/**", "--verify", "tests/test_webhooks.py")
    run(capsys, "task", "new", "none", "--scope", "src/**")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_agentic.cli", "task", "verify", "t"],
        capture_output=True,
        text=True,
        cwd=repo,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 1 deselected" in proc.stdout
    red = subprocess.run(
        [sys.executable, "-m", "pytest_agentic.cli", "task", "verify", "red"],
        capture_output=True,
        text=True,
        cwd=repo,
    )
    assert red.returncode == 1
    assert "1 failed, 1 passed" in red.stdout
    code, _, err = run(capsys, "task", "verify", "none")
    assert code == 2
    assert err.startswith("pytest-agentic: error: .agentic/tasks/none.toml: task 'none' has no")


def test_verify_fix_runs_agent_fix_under_the_tasks_scope(
    repo: Path, capsys, fake_anthropic
) -> None:
    # A conftest records what the child pytest saw: its arguments and the active task.
    (repo / "conftest.py").write_text(
        "import os, sys, json\n"
        "def pytest_configure(config):\n"
        "    with open('seen.json', 'w') as fh:\n"
        "        json.dump({'argv': sys.argv[1:], 'task': os.environ.get("
        "'PYTEST_AGENTIC_TASK')}, fh)\n"
    )
    (repo / "tests/test_webhooks.py").write_text("def test_ok():\n    pass\n")
    run(capsys, "task", "new", "t", "--scope", "src/**", "--verify", "tests/test_webhooks.py")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_agentic.cli", "task", "verify", "t", "--fix"],
        capture_output=True,
        text=True,
        cwd=repo,
    )
    import json

    seen = json.loads((repo / "seen.json").read_text())
    assert seen == {"argv": ["tests/test_webhooks.py", "--agent-fix"], "task": "t"}
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (repo / ".agentic/active").exists()


def test_an_existing_bookkeeping_ignore_file_is_never_rewritten(
    repo: Path, capsys, git: Callable[..., str]
) -> None:
    from pytest_agentic.workspace import ignore_bookkeeping

    ignore = repo / ".agentic/.gitignore"
    ignore.parent.mkdir()
    ignore.write_text("/active\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "ignore file")
    run(capsys, "task", "new", "t", "--scope", "src/**")
    out = run(capsys, "task", "start", "t")[1]
    assert "created .agentic/.gitignore" not in out
    # What a fix run calls before creating runs/ and journal/:
    assert ignore_bookkeeping(repo, ".agentic/runs/") is False
    assert ignore_bookkeeping(repo, ".agentic/journal/") is False
    assert ignore.read_text() == "/active\n"
    assert git(repo, "status", "--porcelain", "--", ".agentic/.gitignore") == ""
