"""The agentic-scaffold and agentic-conventions hooks: main() in-process, and end to end
through the real `pre-commit try-repo`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import GitRepo, run_git
from pytest_agentic.hooks import conventions, scaffold

REPO = Path(__file__).resolve().parent.parent
PROJECT = {
    "pyproject.toml": '[project]\nname = "demo"\n[tool.pytest.ini_options]\n'
    'testpaths = ["tests"]\n',
    "src/demo/__init__.py": '"""Demo."""\n',
    "tests/test_demo.py": "def test_ok(): pass\n",
}


def test_scaffold_exits_1_when_it_changed_files_then_0(
    git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(git_repo(PROJECT))
    assert scaffold.main([]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "agentic-scaffold: created AGENTS.md",
        "agentic-scaffold: created docs/knowledge/demo.md",
        "agentic-scaffold: created CLAUDE.md",
    ]
    assert scaffold.main(["ignored.py"]) == 0
    assert capsys.readouterr().out == ""


def test_conventions_exit_codes(
    git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = git_repo(PROJECT)
    monkeypatch.chdir(root)
    assert conventions.main([]) == 1
    assert "AGENTS.md:1: missing" in capsys.readouterr().out
    scaffold.main([])
    capsys.readouterr()
    assert conventions.main(["AGENTS.md"]) == 0
    (root / "pyproject.toml").write_text("[tool.pytest-agentic]\nknowledge_dri = 'x'\n")
    assert conventions.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("agentic-conventions: error: ")
    assert "unknown key 'knowledge_dri'; did you mean 'knowledge_dir'?" in err


def test_hook_manifest_matches_console_scripts_and_readme() -> None:
    import tomllib

    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    readme = (REPO / "README.md").read_text()
    by_id = {h["id"]: h for h in hooks}
    for hook_id in ("agentic-scaffold", "agentic-conventions"):
        hook = by_id[hook_id]
        assert hook["entry"] in scripts
        assert hook["language"] == "python"
        assert hook["pass_filenames"] is False
        assert f"`{hook_id}`" in readme or hook_id in readme


def test_own_convention_files_are_current_and_clean(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    from pytest_agentic.config import load_config
    from pytest_agentic.conventions.introspect import introspect
    from pytest_agentic.conventions.lint import lint
    from pytest_agentic.conventions.render import plan_scaffold

    config = load_config(REPO)
    assert [c.path for c in plan_scaffold(config, introspect(REPO))] == []
    assert [str(p) for p in lint(config)] == []


# --- end to end through pre-commit ------------------------------------------------------


@pytest.fixture(scope="session")
def hook_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A committed copy of this repository (try-repo caches its hook environment by
    repository and rev, so one install serves every run) and a shared PRE_COMMIT_HOME."""
    copy = tmp_path_factory.mktemp("hook-repo")
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "-co", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, files):
        if (REPO / rel).is_file():
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, copy / rel)
    env = _env(tmp_path_factory.mktemp("pc-home"))
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "hooks"]):
        subprocess.run(["git", *args], cwd=copy, check=True, env=env, capture_output=True)
    return copy, Path(env["PRE_COMMIT_HOME"])


def _env(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GIT_DIR", "GIT_INDEX_FILE", "GIT_WORK_TREE", "PRE_COMMIT"))
    }
    env.update(
        PRE_COMMIT_HOME=str(home),
        GIT_AUTHOR_NAME="A U Thor",
        GIT_AUTHOR_EMAIL="a@example.com",
        GIT_COMMITTER_NAME="A U Thor",
        GIT_COMMITTER_EMAIL="a@example.com",
        GIT_CONFIG_NOSYSTEM="1",
    )
    return env


def try_repo(hook_repo: tuple[Path, Path], cwd: Path, hook_id: str) -> tuple[int, str]:
    repo, home = hook_repo
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pre_commit",
            "try-repo",
            str(repo),
            hook_id,
            "--all-files",
            "--color=never",
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=_env(home),
        timeout=600,
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_both_hooks_end_to_end_through_pre_commit_try_repo(
    hook_repo: tuple[Path, Path], git_repo: GitRepo
) -> None:
    root = git_repo(PROJECT)

    code, out = try_repo(hook_repo, root, "agentic-scaffold")
    assert code == 1, out
    assert "agentic-scaffold: created AGENTS.md" in out
    run_git(root, "add", "-A")

    code, out = try_repo(hook_repo, root, "agentic-scaffold")
    assert code == 0, out
    code, out = try_repo(hook_repo, root, "agentic-conventions")
    assert code == 0, out

    (root / "src/demo/__init__.py").rename(root / "src/demo/core.py")
    (root / "src/demo/__init__.py").write_text("")
    with (root / "AGENTS.md").open("a") as f:
        f.write("Run `pytest tests/test_demo.py::test_gone`.\n")
    run_git(root, "add", "-A")
    code, out = try_repo(hook_repo, root, "agentic-conventions")
    assert code == 1, out
    assert "`pytest tests/test_demo.py::test_gone`: no test_gone in tests/test_demo.py" in out


def test_staged_names_and_all_files_give_the_same_verdict(
    git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = git_repo(PROJECT)
    monkeypatch.chdir(root)
    scaffold.main([])
    # The stale reference is in AGENTS.md; the commit only touches an unrelated file.
    with (root / "AGENTS.md").open("a") as f:
        f.write("See `src/demo/gone.py`.\n")
    capsys.readouterr()
    verdicts = []
    for argv in ([], ["src/demo/__init__.py"], ["pyproject.toml", "AGENTS.md"]):
        code = conventions.main(argv)
        verdicts.append((code, capsys.readouterr().out))
    assert verdicts[0][0] == 1
    assert "`src/demo/gone.py`: no such file or folder" in verdicts[0][1]
    assert verdicts[0] == verdicts[1] == verdicts[2]


def test_hook_path_stays_light(git_repo: GitRepo) -> None:
    """The hooks run on every commit: no anthropic, GitPython or pytest in their imports."""
    root = git_repo(PROJECT)
    code = (
        "import sys\nfrom pytest_agentic.hooks import scaffold, conventions\n"
        "scaffold.main([]); conventions.main([])\n"
        "print(sorted(m for m in ('anthropic', 'git', 'pytest', '_pytest') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines()[-1] == "[]"
