"""The README's quick start, verbatim, through real `pre-commit install`ed hooks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def quick_start_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    block = text.split("## Quick start", 1)[1].split("```\n", 2)[1]
    return block.replace("\\\n", "").splitlines()


def test_quick_start_runs_verbatim_through_real_pre_commit_hooks(
    git_repo: Callable[..., Path], tmp_path: Path
) -> None:
    root = git_repo(
        {
            "pyproject.toml": '[project]\nname = "app"\nversion = "1.0"\n',
            "src/app/__init__.py": '"""The app."""\n',
            "src/app/billing.py": '"""Billing."""\n',
            "src/app/webhooks/__init__.py": '"""Outgoing webhooks."""\n',
            "src/app/webhooks/send.py": '"""Send one webhook."""\n',
            "tests/test_webhooks.py": "def test_send():\n    pass\n",
        }
    )
    editor = tmp_path / "editor.sh"
    editor.write_text('#!/bin/sh\necho "A message" > "$1"\n')
    editor.chmod(0o755)
    bindir = os.path.dirname(sys.executable)  # pytest-agentic, agentic-* and pre-commit
    env = {
        **os.environ,
        "PATH": bindir + os.pathsep + os.environ["PATH"],
        "GIT_EDITOR": str(editor),
        "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"),
        "PRE_COMMIT_COLOR": "never",
    }

    def sh(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command], cwd=root, env=env, capture_output=True, text=True, timeout=300
        )

    commands = quick_start_commands()
    assert commands[-1].startswith("git add src/app/billing.py && git commit")
    for command in commands[:-1]:
        proc = sh(command)
        assert proc.returncode == 0, f"{command}\n{proc.stdout}{proc.stderr}"

    # The deadlock of issue 12: a new in-scope module makes agentic-scaffold refresh AGENTS.md
    # and the knowledge file (out of the task's scope); after `git add`, the commit passes.
    (root / "src/app/webhooks/retry.py").write_text('"""Retry with exponential backoff."""\n')
    first = sh("git add -A && git commit -m 'Retry'")
    assert first.returncode == 1, first.stdout + first.stderr
    assert "agentic-scaffold: refreshed AGENTS.md" in first.stdout + first.stderr
    second = sh("git add -A && git commit -m 'Retry'")
    assert second.returncode == 0, second.stdout + second.stderr
    committed = sh("git show --name-only --format= HEAD").stdout.split()
    assert "AGENTS.md" in committed and "src/app/webhooks/retry.py" in committed

    (root / "src/app/billing.py").write_text('"""Billing."""\nX = 1\n')
    proc = sh(commands[-1])
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "src/app/billing.py: modified: outside the scope of task 'retry-webhooks'" in output
    shown = README.read_text().split("The rejected commit prints", 1)[1].split("```\n", 2)[1]
    for line in shown.splitlines():
        assert line in output
    assert "Traceback" not in output
    assert re.search(r"agentic-scope.*Failed", output)
    assert sh("git status --porcelain").stdout.split() == ["M", "src/app/billing.py"]
