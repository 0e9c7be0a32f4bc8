"""Shared fixtures: real git repositories in tmp_path, an isolated environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _isolated_env(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Pinned git identity, a throwaway HOME, and no git or agentic state leaking in.

    Hooks and CI inherit GIT_DIR / GIT_INDEX_FILE; a test that inherited them would act on
    the wrong repository (pre-commit's own tests scrub them the same way).
    """
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name, value in {
        "GIT_AUTHOR_NAME": "A U Thor",
        "GIT_AUTHOR_EMAIL": "author@example.com",
        "GIT_COMMITTER_NAME": "A U Thor",
        "GIT_COMMITTER_EMAIL": "author@example.com",
    }.items():
        monkeypatch.setenv(name, value)
    for name in list(os.environ):
        if name.startswith(("GIT_DIR", "GIT_INDEX_FILE", "GIT_WORK_TREE", "PRE_COMMIT_")):
            monkeypatch.delenv(name)
    monkeypatch.delenv("PYTEST_AGENTIC_TASK", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("ANTHROPIC_PROFILE", raising=False)
    yield


def run_git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def git() -> Callable[..., str]:
    """`git(cwd, *args)`: run real git, fail the test on a git error, return stdout."""
    return run_git


GitRepo = Callable[..., Path]


@pytest.fixture
def git_repo(tmp_path: Path) -> GitRepo:
    """Make a real git repository: `git_repo(files={"a.py": "x = 1\\n"}, commit=True)`."""
    counter = iter(range(1000))

    def make(
        files: dict[str, str] | None = None,
        *,
        commit: bool = True,
        name: str | None = None,
    ) -> Path:
        root = tmp_path / (name or f"repo{next(counter)}")
        root.mkdir(parents=True)
        run_git(root, "init", "-q", "-b", "main")
        run_git(root, "config", "commit.gpgsign", "false")
        for rel, text in (files or {}).items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        if files and commit:
            run_git(root, "add", "-A")
            run_git(root, "commit", "-q", "-m", "initial")
        return root

    return make


THIS_REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def pre_commit_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One pre-commit cache for the whole run, shared by xdist workers.

    `pre-commit try-repo` builds a virtualenv and pip-installs this package into it; doing
    that once instead of once per test keeps the suite inside its time budget. pre-commit
    locks its store, so concurrent workers are safe.
    """
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    home = shared / "pre-commit-home"
    home.mkdir(exist_ok=True)
    return home


@pytest.fixture
def try_repo(pre_commit_home: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the real `pre-commit try-repo <this repository> HOOK ...` in `cwd`."""

    def run(cwd: Path, hook: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PRE_COMMIT_HOME": str(pre_commit_home), "PRE_COMMIT_COLOR": "never"}
        return subprocess.run(
            [sys.executable, "-m", "pre_commit", "try-repo", str(THIS_REPO), hook, *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    return run


@pytest.fixture
def fake_anthropic(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The fake Messages API on 127.0.0.1; the real SDK reaches it through ANTHROPIC_BASE_URL."""
    from fake_anthropic import FakeAnthropic

    server = FakeAnthropic().start()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key")
    yield server
    server.stop()
