"""The README's GitHub Actions workflow, its shell steps run for real: a real repository with
a remote, the fake Messages API, and a stand-in `gh` on PATH that records its arguments."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from fake_anthropic import FakeAnthropic, approve, done, edit, message, tool_use

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
CALC = "def add(a, b):\n    return a - b\n"
TEST_CALC = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
FAKE_GH = """#!/bin/sh
# A stand-in for the GitHub CLI: record the arguments, one per line.
printf '%s\\n' "$@" > "$GH_RECORD"
"""


def workflow() -> dict[str, Any]:
    block = next(
        part.split("\n", 1)[1]
        for part in README.split("```")
        if part.startswith("yaml\n# .github/workflows/agent-fix.yml")
    )
    return yaml.safe_load(block)


def shell_steps() -> list[dict[str, Any]]:
    steps = workflow()["jobs"]["fix"]["steps"]
    # `uses:` steps are GitHub's own actions; the install step needs the network and installs
    # what this test environment already has.
    return [s for s in steps if "run" in s and not s["run"].startswith("pip install")]


def run_workflow(
    tmp_path: Path, git: Callable[..., str]
) -> tuple[Path, Path, Path, dict[str, str]]:
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    work = tmp_path / "work"
    (work / "tests").mkdir(parents=True)
    (work / "pyproject.toml").write_text('[tool.pytest.ini_options]\npythonpath = ["."]\n')
    (work / "calc.py").write_text(CALC)
    (work / "tests/test_calc.py").write_text(TEST_CALC)
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-qm", "a failing build")
    git(work, "remote", "add", "origin", str(origin))
    git(work, "push", "-q", "origin", "main")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gh").write_text(FAKE_GH)
    (bin_dir / "gh").chmod(0o755)
    runner = tmp_path / "runner-temp"
    runner.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "GIT_"))},
        "PATH": os.pathsep.join(
            [str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]]
        ),
        "GITHUB_RUN_ID": "42",
        "RUNNER_TEMP": str(runner),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "step-summary.md"),
        "GH_RECORD": str(tmp_path / "gh-args.txt"),
        "GH_TOKEN": "not-a-token",
        **workflow()["jobs"]["fix"]["env"],
    }
    env["BASE_BRANCH"] = "main"  # ${{ github.event.workflow_run.head_branch }}
    for step in shell_steps():
        script = tmp_path / "step.sh"
        script.write_text(step["run"])
        # GitHub runs a `run:` step as `bash -e {0}`.
        proc = subprocess.run(
            ["bash", "-e", str(script)], cwd=work, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, (step["name"], proc.stdout, proc.stderr)
    return work, origin, runner, env


def test_the_workflow_commits_the_fix_pushes_a_branch_and_opens_a_pull_request(
    tmp_path: Path, git: Callable[..., str], fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.reply(
        message(edit("calc.py", "return a - b", "return a + b")), done(), approve()
    )
    work, origin, runner, env = run_workflow(tmp_path, git)
    args = (tmp_path / "gh-args.txt").read_text().splitlines()
    assert args == [
        "pr",
        "create",
        "--base",
        "main",
        "--head",
        "agentic/fix-42",
        "--title",
        "Fix failing tests (pytest-agentic)",
        "--body-file",
        f"{runner}/pr-body.md",
    ]
    body = (runner / "pr-body.md").read_text()
    assert body.startswith("## pytest-agentic: 1 of 1 failure fixed — exit 0\n")
    assert "-    return a - b\n+    return a + b\n" in body
    pushed = git(origin, "log", "--format=%s", "main..agentic/fix-42").splitlines()
    assert pushed == ["Fix tests/test_calc.py::test_add"]
    assert git(origin, "show", "agentic/fix-42:calc.py") == CALC.replace("a - b", "a + b")
    assert body in Path(env["GITHUB_STEP_SUMMARY"]).read_text()


def test_the_workflow_opens_no_pull_request_when_nothing_was_fixed(
    tmp_path: Path, git: Callable[..., str], fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.reply(message(tool_use("give_up", reason="the test is wrong")))
    work, origin, runner, env = run_workflow(tmp_path, git)
    assert not (tmp_path / "gh-args.txt").exists()
    assert git(origin, "for-each-ref", "--format=%(refname:short)", "refs/heads").split() == [
        "main"
    ]
    assert (
        "0 of 1 failure fixed, 1 not fixed — exit 1" in Path(env["GITHUB_STEP_SUMMARY"]).read_text()
    )


def test_the_workflow_in_the_readme_is_valid() -> None:
    flow = workflow()
    trigger = flow[True] if True in flow else flow["on"]  # YAML 1.1 reads `on:` as true
    assert trigger["workflow_run"]["types"] == ["completed"]
    steps = [s.get("name", s.get("uses")) for s in flow["jobs"]["fix"]["steps"]]
    assert len(shell_steps()) == 2, steps
    assert "--agent-fix --agent-commit" in shell_steps()[0]["run"]
    with pytest.raises(StopIteration):
        next(s for s in shell_steps() if "${{" in s["run"])  # no expressions inside scripts
