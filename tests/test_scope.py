from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_agentic.config import DEFAULT_PROTECTED
from pytest_agentic.scope import PathPolicy
from pytest_agentic.tasks import Task


def reason(policy: PathPolicy, path: str | Path) -> str | None:
    refusal = policy.check(path)
    return None if refusal is None else refusal.reason


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / ".git").mkdir(parents=True)
    (root / "src/app").mkdir(parents=True)
    (root / "src/app/x.py").write_text("x = 1\n")
    return root


def test_paths_inside_the_root_are_allowed_relative_or_absolute(root: Path) -> None:
    policy = PathPolicy(root)
    assert policy.check("src/app/x.py") is None
    assert policy.check(root / "src/app/x.py") is None
    assert policy.check("src/app/new/deeper.py") is None
    assert policy.check("src/../src/app/x.py") is None


@pytest.mark.parametrize("path", ["../elsewhere.py", "/etc/passwd", "src/../../x.py", ""])
def test_paths_outside_the_root_are_refused(root: Path, path: str) -> None:
    assert reason(PathPolicy(root), path) == f"outside the project root {root}"


@pytest.mark.parametrize("path", [".git/config", ".git/hooks/pre-commit", "sub/.git/HEAD"])
def test_git_internals_are_refused(root: Path, path: str) -> None:
    assert reason(PathPolicy(root), path) == "inside .git; git's own files are never written"


def test_a_symlinked_folder_leading_outside_is_refused(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "src/escape")
    refusal = PathPolicy(root, for_agent=True).check("src/escape/evil.py")
    assert refusal is not None
    assert refusal.reason == f"a symlink leads outside the project root (to {outside}/evil.py)"


def test_a_symlinked_file_is_resolved_for_the_agent_only(root: Path, tmp_path: Path) -> None:
    target = tmp_path / "secret.txt"
    target.write_text("s")
    os.symlink(target, root / "src/link.txt")
    assert reason(PathPolicy(root, for_agent=True), "src/link.txt") == (
        f"a symlink leads outside the project root (to {target})"
    )
    # A commit records the link itself, not what it points at.
    assert PathPolicy(root).check("src/link.txt") is None


def test_a_symlink_into_git_is_refused(root: Path) -> None:
    os.symlink(root / ".git", root / "gitdir")
    assert reason(PathPolicy(root, for_agent=True), "gitdir/config") == "a symlink leads into .git"


def test_protected_globs_bind_the_agent_not_people(root: Path) -> None:
    agent = PathPolicy(root, protected=DEFAULT_PROTECTED, for_agent=True)
    people = PathPolicy(root, protected=DEFAULT_PROTECTED)
    for path in [
        "tests/test_x.py",
        "pkg/tests/helpers.py",
        "src/test_util.py",
        "conftest.py",
        "src/app/conftest.py",
        "src/app/thing_test.py",
        "pyproject.toml",
        "setup.cfg",
        "tox.ini",
        "pytest.ini",
    ]:
        assert reason(agent, path) == (
            "protected (matches the `protected` globs): the fixer changes code, not tests or "
            "their configuration"
        ), path
        assert people.check(path) is None
    assert agent.check("src/app/x.py") is None
    assert agent.check("src/app/testing.py") is None


def test_the_agent_is_judged_by_where_a_symlink_leads(root: Path) -> None:
    (root / "tests").mkdir(exist_ok=True)
    (root / "tests/test_x.py").write_text("")
    os.symlink("tests/test_x.py", root / "alias.py")
    agent = PathPolicy(root, protected=DEFAULT_PROTECTED, for_agent=True)
    assert agent.write_target("alias.py") == "tests/test_x.py"
    assert str(agent.check("alias.py")).startswith("alias.py leads to tests/test_x.py: protected")
    assert PathPolicy(root, protected=DEFAULT_PROTECTED).check("alias.py") is None


def test_bookkeeping_is_always_allowed_for_people_and_never_for_the_agent(root: Path) -> None:
    task = Task("t", ("src/app/**",))
    assert PathPolicy(root, task=task).check(".agentic/tasks/t.toml") is None
    assert PathPolicy(root, task=task).check(".agentic/active") is None
    assert reason(PathPolicy(root, task=task, for_agent=True), ".agentic/tasks/t.toml") == (
        "pytest-agentic bookkeeping (.agentic/) is not for the agent"
    )


@pytest.mark.parametrize(
    ("scope", "allowed", "refused"),
    [
        (("src/app/**",), ["src/app/x.py", "src/app/a/b/c.py"], ["src/other.py", "src/app"]),
        (
            ("src/**/handlers/*.py",),
            ["src/handlers/a.py", "src/x/y/handlers/b.py"],
            ["src/handlers/sub/c.py", "lib/handlers/a.py"],
        ),
        (("src/app/**", "!src/app/legacy/**"), ["src/app/x.py"], ["src/app/legacy/old.py"]),
        (("*.md",), ["README.md", "docs/deep/guide.md"], ["README.rst"]),
        (("/setup.py",), ["setup.py"], ["pkg/setup.py"]),
        (
            ("docs/my guide/**", "src/ü/*.py"),
            ["docs/my guide/a b.md", "src/ü/ñ.py"],
            ["docs/my/guide.md", "src/u/n.py"],
        ),
    ],
)
def test_scope_matching_follows_gitwildmatch(
    root: Path, scope: tuple[str, ...], allowed: list[str], refused: list[str]
) -> None:
    policy = PathPolicy(root, task=Task("t", scope))
    for path in allowed:
        assert policy.check(path) is None, path
    for path in refused:
        assert reason(policy, path) == "outside the scope of task 't'", path


def test_protected_wins_over_scope_for_the_agent(root: Path) -> None:
    policy = PathPolicy(
        root, task=Task("t", ("tests/test_x.py",)), protected=DEFAULT_PROTECTED, for_agent=True
    )
    assert reason(policy, "tests/test_x.py") == (
        "protected (matches the `protected` globs): the fixer changes code, not tests or "
        "their configuration"
    )
