"""Issue 12, no deadlock: the convention files agentic-scaffold refreshes may be committed
whatever the active task's scope — by people. The agent may never write them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_agentic.hooks import scope as hook
from pytest_agentic.scope import PathPolicy
from pytest_agentic.tasks import Task

TASK = Task(id="t", scope=("src/app/webhooks/**",))
CONVENTIONS = ("AGENTS.md", "CLAUDE.md", ".github/copilot-instructions.md", "docs/knowledge/")


@pytest.mark.parametrize(
    "rel",
    ["AGENTS.md", "CLAUDE.md", ".github/copilot-instructions.md", "docs/knowledge/app.md"],
)
def test_people_may_commit_convention_files_outside_the_scope(tmp_path: Path, rel: str) -> None:
    people = PathPolicy(tmp_path, task=TASK, conventions=CONVENTIONS)
    assert people.check(rel) is None
    agent = PathPolicy(tmp_path, task=TASK, conventions=CONVENTIONS, for_agent=True)
    refusal = agent.check(rel)
    assert refusal is not None and "outside the scope of task 't'" in refusal.reason


@pytest.mark.parametrize(
    "rel",
    [
        "docs/knowledge/sub/deep.md",  # only the files directly in the knowledge folder
        "docs/knowledge/app.py",
        "docs/AGENTS.md",  # a nested AGENTS.md is the user's, not the scaffold's
        "src/app/billing.py",
        "AGENTS.md.bak",
    ],
)
def test_nothing_else_is_exempt(tmp_path: Path, rel: str) -> None:
    people = PathPolicy(tmp_path, task=TASK, conventions=CONVENTIONS)
    assert people.check(rel) is not None


def test_a_pointer_setting_naming_code_does_not_exempt_it(tmp_path: Path) -> None:
    # `pointer_files = ["src/app/billing.py"]` must not turn a code file into a free pass.
    people = PathPolicy(tmp_path, task=TASK, conventions=("src/app/billing.py", "src/"))
    assert people.check("src/app/billing.py") is not None


def test_the_scope_hook_passes_a_scaffold_refresh_and_still_rejects_code(
    git_repo: Callable[..., Path],
    git: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = git_repo(
        {
            "pyproject.toml": '[project]\nname = "app"\n',
            "AGENTS.md": "# old\n",
            "CLAUDE.md": "@AGENTS.md\n",
            "docs/knowledge/app.md": "old\n",
            "src/app/billing.py": "b = 1\n",
            "src/app/webhooks/send.py": "s = 1\n",
            ".agentic/tasks/t.toml": 'scope = ["src/app/webhooks/**"]\n',
        }
    )
    monkeypatch.chdir(root)
    (root / ".agentic/active").write_text("t\n")
    for rel in ("AGENTS.md", "CLAUDE.md", "docs/knowledge/app.md", "src/app/webhooks/send.py"):
        (root / rel).write_text("refreshed\n")
    git(root, "add", "-A")
    assert hook.main([]) == 0
    (root / "src/app/billing.py").write_text("b = 2\n")
    (root / "docs/knowledge/notes.txt").write_text("not a knowledge file\n")
    git(root, "add", "-A")
    assert hook.main([]) == 1
    err = capsys.readouterr().err
    assert "src/app/billing.py: modified: outside the scope of task 't'" in err
    assert "docs/knowledge/notes.txt: added: outside the scope" in err
    flagged = [line.split(":", 1)[0] for line in err.splitlines()[:-1]]
    assert flagged == ["docs/knowledge/notes.txt", "src/app/billing.py"]
