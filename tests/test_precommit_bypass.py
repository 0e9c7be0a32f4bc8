"""agentic-scope through real pre-commit (issue 14): the bypasses through `try-repo`, staged
and with `--from-ref/--to-ref`, and "widen, then use" through a real `git push` pre-push."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

Git = Callable[..., str]
FILES = {
    "pyproject.toml": '[project]\nname = "demo"\n',
    "src/app/billing.py": "b = 1\n",
    "src/app/webhooks/send.py": "s = 1\n",
    ".agentic/tasks/webhooks.toml": 'scope = ["src/app/webhooks/**", ".gitmodules"]\n',
    ".agentic/tasks/wide.toml": 'scope = ["docs/**"]\n',
    ".gitignore": ".agentic/active\n",
}


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_try_repo_rejects_each_bypass_staged_and_in_a_range(
    git_repo: Callable[..., Path], git: Git, try_repo
) -> None:
    root = git_repo(FILES)
    (root / ".agentic/active").write_text("webhooks\n")
    write(root, ".gitmodules", '[submodule "lib"]\n\tpath = vendor/lib\n\turl = ./lib\n')
    (root / "vendor/lib").mkdir(parents=True)  # a submodule not checked out: an empty folder
    git(root, "add", "-A")
    first = git(root, "rev-parse", "HEAD").strip()
    git(root, "update-index", "--add", "--cacheinfo", f"160000,{first},vendor/lib")
    git(root, "commit", "-qm", "vendor lib")
    base = git(root, "rev-parse", "HEAD").strip()

    # Three bypasses in one change: moving tasks_dir to a folder with a wide spec, hiding a
    # gitlink bump with `ignore = all`, and the out-of-scope edit they were meant to carry.
    write(
        root,
        "pyproject.toml",
        FILES["pyproject.toml"] + '[tool.pytest-agentic]\ntasks_dir = "t2"\n',
    )
    write(root, "t2/webhooks.toml", 'scope = ["**"]\n')
    write(
        root,
        ".gitmodules",
        '[submodule "lib"]\n\tpath = vendor/lib\n\turl = ./lib\n\tignore = all\n',
    )
    write(root, "src/app/billing.py", "b = 2\n")
    git(root, "add", "-A")
    git(root, "update-index", "--cacheinfo", f"160000,{base},vendor/lib")
    expected = [
        "pyproject.toml: modified: outside the scope of task 'webhooks'",
        "src/app/billing.py: modified: outside the scope of task 'webhooks'",
        "t2/webhooks.toml: added: outside the scope of task 'webhooks'",
        "vendor/lib: modified: outside the scope of task 'webhooks'",
    ]
    staged = try_repo(root, "agentic-scope")
    assert staged.returncode == 1, staged.stdout + staged.stderr
    for line in expected:
        assert line in staged.stdout
    git(root, "commit", "-q", "--no-verify", "--allow-empty", "-m", "bypass")
    ranged = try_repo(root, "agentic-scope", "--from-ref", base, "--to-ref", "HEAD")
    assert ranged.returncode == 1, ranged.stdout + ranged.stderr
    for line in expected:
        assert line in ranged.stdout
    assert "in commit " in ranged.stdout and "(bypass)" in ranged.stdout

    # A symlinked spec: an error staged and in the range.
    git(root, "reset", "-q", "--hard", base)
    (root / ".agentic/tasks/webhooks.toml").unlink()
    os.symlink("wide.toml", root / ".agentic/tasks/webhooks.toml")
    write(root, ".agentic/tasks/wide.toml", 'scope = ["**"]\n')
    write(root, "src/app/billing.py", "b = 3\n")
    git(root, "add", "-A")
    staged = try_repo(root, "agentic-scope")
    assert staged.returncode == 1
    assert ".agentic/tasks/webhooks.toml (as of the index): is a symlink" in staged.stdout
    git(root, "commit", "-q", "--no-verify", "-m", "link")
    ranged = try_repo(root, "agentic-scope", "--from-ref", base, "--to-ref", "HEAD")
    assert ranged.returncode == 1
    assert f".agentic/tasks/webhooks.toml (as of {git(root, 'rev-parse', 'HEAD').strip()})" in (
        ranged.stdout
    )
    assert "Traceback" not in staged.stdout + ranged.stdout


CONFIG = """\
repos:
- repo: local
  hooks:
  - id: agentic-scope
    name: agentic-scope
    entry: agentic-scope
    language: system
    pass_filenames: false
    always_run: true
    stages: [pre-commit, pre-push]
"""


def test_widen_then_use_passes_a_real_pre_push_and_widen_with_use_is_rejected(
    git_repo: Callable[..., Path], git: Git, tmp_path: Path, pre_commit_home: Path
) -> None:
    root = git_repo({**FILES, ".pre-commit-config.yaml": CONFIG})
    (root / ".agentic/active").write_text("webhooks\n")
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(root, "remote", "add", "origin", str(remote))
    git(root, "push", "-q", "origin", "main")
    env = {
        **os.environ,
        "PRE_COMMIT_HOME": str(pre_commit_home),
        "PRE_COMMIT_COLOR": "never",
        # The hooks run `agentic-scope` from this interpreter's environment.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), cwd=root, env=env, capture_output=True, text=True, timeout=300
        )

    installed = run(
        sys.executable, "-m", "pre_commit", "install", "-t", "pre-commit", "-t", "pre-push"
    )
    assert installed.returncode == 0, installed.stderr

    # The README's flow: widen in one commit, use it in the next; one push carries both.
    run("git", "checkout", "-q", "-b", "retry")
    write(root, ".agentic/tasks/webhooks.toml", 'scope = ["src/app/**"]\n')
    assert run("git", "commit", "-qam", "widen").returncode == 0
    write(root, "src/app/billing.py", "b = 2\n")
    commit = run("git", "commit", "-qam", "use")
    assert commit.returncode == 0, commit.stdout + commit.stderr
    pushed = run("git", "push", "-q", "origin", "retry")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr

    # Widening and using in one commit (forced past pre-commit): pre-push rejects it.
    run("git", "checkout", "-q", "-b", "sneak", "main")
    write(root, ".agentic/tasks/webhooks.toml", 'scope = ["src/app/**"]\n')
    write(root, "src/app/billing.py", "b = 3\n")
    assert run("git", "commit", "-qam", "widen and use").returncode != 0
    assert run("git", "commit", "-q", "--no-verify", "-am", "widen and use").returncode == 0
    pushed = run("git", "push", "-q", "origin", "sneak")
    assert pushed.returncode != 0
    output = pushed.stdout + pushed.stderr
    assert "src/app/billing.py: modified: outside the scope of task 'webhooks'" in output
    assert "(widen and use)" in output
    assert "sneak" not in git(remote, "branch", "--list")
