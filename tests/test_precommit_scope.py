"""agentic-scope end to end: the real `pre-commit try-repo` installs and runs the hook."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def test_try_repo_passes_in_scope_and_rejects_out_of_scope(
    git_repo: Callable[..., Path], git: Callable[..., str], try_repo
) -> None:
    root = git_repo(
        {
            "pyproject.toml": '[project]\nname = "demo"\n',
            "src/app/billing.py": "b = 1\n",
            "src/app/webhooks/send.py": "s = 1\n",
            ".agentic/tasks/webhooks.toml": 'scope = ["src/app/webhooks/**"]\n',
        }
    )
    (root / ".agentic/active").write_text("webhooks\n")
    (root / "src/app/webhooks/send.py").write_text("s = 2\n")
    git(root, "add", "src")
    ok = try_repo(root, "agentic-scope")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "agentic-scope" in ok.stdout and "Passed" in ok.stdout

    (root / "src/app/billing.py").write_text("b = 2\n")
    git(root, "add", "src")
    bad = try_repo(root, "agentic-scope")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "Failed" in bad.stdout
    assert "src/app/billing.py: modified: outside the scope of task 'webhooks'" in bad.stdout
    assert "Traceback" not in bad.stdout
