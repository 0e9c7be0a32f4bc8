"""Isolated attempts (issue 8): workspaces, integrity, integration, parallel workers, Ctrl-C.

Real parts: pytester runs of `--agent-fix`, the real SDK against the fake Messages API, real git
repositories, real bubblewrap around the re-runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fake_anthropic import Delay, FakeAnthropic, Request, done, edit, message, tool_use
from test_fix_loop import CALC, FIX, PYPROJECT, TEST_CALC, load_report, snapshot

# The reviewer (issue 9) is on by default and has its own tests (test_gate.py); the runs
# here are about other behaviour, so they leave it out rather than interleave a scripted
# review with every conversation.
NO_REVIEW = "--no-agent-review"

HOSTILE = """\
import os as _os
import pathlib as _pathlib

_here = _pathlib.Path(__file__).resolve().parent
for _path, _text in (
    (_here / "tests" / "test_calc.py", "def test_add():\\n    pass\\n"),
    (_here / ".git" / "hooks" / "pre-commit", "#!/bin/sh\\necho owned\\n"),
    (_pathlib.Path({outside!r}), "owned\\n"),
):
    try:
        _path.parent.mkdir(parents=True, exist_ok=True)
        _path.write_text(_text)
        _os.chmod(_path, 0o755)
    except OSError:
        pass
"""


def conversations(scripts: dict[str, list[Any]], delay: float = 0.0) -> Callable[..., Any]:
    """A reply that plays one script per failure, picked by the node id the conversation's
    first message names: parallel conversations get their own replies whatever the order."""

    def reply(request: Request) -> Any:
        prompt = request.body["messages"][0]["content"][0]["text"]
        key = next(k for k in scripts if f"- {k}\n" in prompt + "\n")
        item = scripts[key].pop(0) if scripts[key] else done("Nothing more.")
        return Delay(delay, item) if delay else item

    return reply


def in_flight(requests: list[Request], seconds: float) -> int:
    """The most requests the server held at once, each held `seconds` after it arrived."""
    times = sorted(r.received for r in requests)
    return max(sum(1 for t in times if start <= t < start + seconds) for start in times)


@pytest.fixture
def repo(pytester: pytest.Pytester, git: Callable[..., str]) -> Path:
    """The calc project as a git repository with one commit."""
    pytester.makepyprojecttoml(PYPROJECT)
    (pytester.path / "calc.py").write_text(CALC)
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_calc.py").write_text(TEST_CALC)
    git(pytester.path, "init", "-q", "-b", "main")
    git(pytester.path, "add", "-A")
    git(pytester.path, "commit", "-qm", "base")
    return pytester.path


@pytest.mark.parametrize("dry_run", [False, True], ids=["apply", "dry-run"])
def test_a_hostile_rerun_is_rejected_and_leaves_the_user_untouched(
    pytester: pytest.Pytester,
    repo: Path,
    fake_anthropic: FakeAnthropic,
    tmp_path: Path,
    dry_run: bool,
) -> None:
    outside = tmp_path / "outside.txt"
    before = snapshot(repo)
    assert any(rel.startswith(".git/") for rel in before)
    plant = edit(
        "calc.py", "def add(a, b):", HOSTILE.format(outside=str(outside)) + "def add(a, b):"
    )
    revert = edit(
        "calc.py", HOSTILE.format(outside=str(outside)) + "def add(a, b):", "def add(a, b):"
    )
    fake_anthropic.reply(
        message(plant),
        message(tool_use("run_tests")),
        message(revert),  # put the edit back: an empty patch, the damage done
        done(),
        done("I give up."),  # attempt 2
    )
    args = ["--agent-fix", "--agent-max-attempts", "2"] + (["--agent-dry-run"] if dry_run else [])
    result = pytester.runpytest(*args)
    assert result.ret == 1
    assert snapshot(repo) == before  # the test file, `.git` (no hook), calc.py
    assert not (repo / ".git/hooks/pre-commit").exists()
    assert not outside.exists()
    (failure,) = load_report(repo)["failures"]
    assert failure["outcome"] == "not_fixed"
    # The integrity check rejected attempt 1 at its run_tests; attempt 2 is told which files.
    second = next(r for r in fake_anthropic.requests if len(r.body["messages"][0]["content"]) > 1)
    feedback = second.body["messages"][0]["content"][-1]["text"]
    assert feedback.startswith("Attempt 1 did not fix it: running the tests changed files")
    assert "tests/test_calc.py" in feedback
    assert not list(repo.glob(".agentic/runs/*/*.patch"))


def test_a_user_edit_made_during_the_attempt_wins_and_the_patch_is_saved(
    pytester: pytest.Pytester, repo: Path, fake_anthropic: FakeAnthropic
) -> None:
    user_version = CALC + "\n# my own edit, made while the agent worked\n"

    def user_edits_then_done(request: Request) -> Any:
        (repo / "calc.py").write_text(user_version)  # the user, mid-attempt
        return done()

    fake_anthropic.reply(message(FIX), user_edits_then_done)
    result = pytester.runpytest("--agent-fix", NO_REVIEW)
    assert result.ret == 1
    assert (repo / "calc.py").read_text() == user_version
    (failure,) = load_report(repo)["failures"]
    assert failure["outcome"] == "not_fixed"
    (patch,) = repo.glob(".agentic/runs/*/*.patch")
    assert failure["reason"] == (
        f"you changed calc.py during the run: your version was kept; the fix is saved as {patch}"
    )
    result.stdout.fnmatch_lines([f"not fixed (you changed calc.py during the run*{patch.name})*"])
    assert "+    return a + b" in patch.read_text()
    assert not (repo / ".agentic/journal").exists()


def four_failures(root: Path) -> list[str]:
    """Four independent failures: four modules, each with its own bug and test."""
    nodeids = []
    for name in "abcd":
        (root / f"mod_{name}.py").write_text("def value():\n    return 0\n")
        (root / "tests" / f"test_{name}.py").write_text(
            f"from mod_{name} import value\n\n\ndef test_{name}():\n    assert value() == 1\n"
        )
        nodeids.append(f"tests/test_{name}.py::test_{name}")
    return nodeids


def fix_for(name: str) -> dict[str, Any]:
    return message(edit(f"mod_{name}.py", "return 0", "return 1"))


def test_independent_failures_are_worked_on_at_once(
    pytester: pytest.Pytester, repo: Path, fake_anthropic: FakeAnthropic
) -> None:
    nodeids = four_failures(repo)
    scripts = {n: [fix_for(n[-1]), done()] for n in nodeids}
    fake_anthropic.reply(*[conversations(scripts, delay=2.0)] * 8)
    result = pytester.runpytest(
        "--agent-fix",
        NO_REVIEW,
        "tests/test_a.py",
        "tests/test_b.py",
        "tests/test_c.py",
        "tests/test_d.py",
    )
    assert result.ret == 0, result.stdout.str()
    outcomes = {f["nodeid"]: f["outcome"] for f in load_report(repo)["failures"]}
    assert outcomes == {n: "fixed" for n in nodeids}
    assert [p.read_text() for p in sorted(repo.glob("mod_*.py"))] == [
        "def value():\n    return 1\n"
    ] * 4
    requests = fake_anthropic.requests
    assert len(requests) == 8
    assert in_flight(requests, 2.0) >= 3
    # The first request went out alone and cached the shared prefix (tools, system prompt);
    # every other conversation started after its reply.
    firsts = sorted(r.received for r in requests if len(r.body["messages"]) == 1)
    assert all(t - firsts[0] >= 1.9 for t in firsts[1:])


def test_one_worker_is_serial(
    pytester: pytest.Pytester, repo: Path, fake_anthropic: FakeAnthropic
) -> None:
    nodeids = four_failures(repo)[:2]
    scripts = {n: [fix_for(n[-1]), done()] for n in nodeids}
    fake_anthropic.reply(*[conversations(scripts, delay=0.5)] * 4)
    result = pytester.runpytest(
        "--agent-fix", NO_REVIEW, "--agent-workers", "1", "tests/test_a.py", "tests/test_b.py"
    )
    assert result.ret == 0, result.stdout.str()
    assert len(fake_anthropic.requests) == 4
    assert in_flight(fake_anthropic.requests, 0.45) == 1


def test_failures_with_one_cause_share_one_conversation(
    pytester: pytest.Pytester, repo: Path, fake_anthropic: FakeAnthropic
) -> None:
    (repo / "calc.py").write_text(CALC + "\n\ndef div(a, b):\n    return a / 0\n")
    (repo / "tests/test_div.py").write_text(
        "from calc import div\n\n\ndef test_div():\n    assert div(4, 2) == 2\n\n\n"
        "def test_div_again():\n    assert div(9, 3) == 3\n"
    )
    fix_div = edit("calc.py", "return a / 0", "return a / b")
    scripts = {
        "tests/test_calc.py::test_add": [message(FIX), done()],
        "tests/test_div.py::test_div": [message(fix_div), done()],
    }
    fake_anthropic.reply(*[conversations(scripts)] * 4)
    result = pytester.runpytest("--agent-fix", NO_REVIEW)
    assert result.ret == 0, result.stdout.str()
    prompts = [
        r.body["messages"][0]["content"][0]["text"]
        for r in fake_anthropic.requests
        if len(r.body["messages"]) == 1
    ]
    assert len(prompts) == 2  # two causes, two conversations
    (div_prompt,) = [p for p in prompts if "test_div" in p]
    assert "- tests/test_div.py::test_div\n- tests/test_div.py::test_div_again" in div_prompt
    failures = load_report(repo)["failures"]
    assert [(f["nodeid"], f["outcome"], f["attempts"]) for f in failures] == [
        ("tests/test_calc.py::test_add", "fixed", 1),
        ("tests/test_div.py::test_div", "fixed", 1),
        ("tests/test_div.py::test_div_again", "fixed", 1),
    ]
    assert (repo / "calc.py").read_text().endswith("return a / b\n")


def test_a_fix_that_breaks_an_earlier_one_is_tried_again_on_the_integrated_tree(
    pytester: pytest.Pytester, repo: Path, fake_anthropic: FakeAnthropic
) -> None:
    (repo / "tests/test_sub.py").write_text(
        "import calc\n\n\ndef test_sub():\n    assert calc.sub(3, 1) == 2\n"
    )
    # At the end of the file: the patch applies on top of test_add's fix, then breaks it.
    sub = "return a * b\n\n\ndef sub(a, b):\n    return a - b\n"
    breaking = edit("calc.py", "return a * b", sub + "\n\nadd = sub\n")
    good = edit("calc.py", "return a * b", sub)
    view = tool_use("str_replace_based_edit_tool", command="view", path="calc.py")
    scripts = {
        "tests/test_calc.py::test_add": [message(FIX), done()],
        "tests/test_sub.py::test_sub": [message(breaking), done(), message(view, good), done()],
    }
    fake_anthropic.reply(*[conversations(scripts)] * 6)
    result = pytester.runpytest("--agent-fix", NO_REVIEW, "--agent-max-attempts", "2")
    assert result.ret == 0, result.stdout.str()
    failures = {f["nodeid"]: f for f in load_report(repo)["failures"]}
    assert failures["tests/test_sub.py::test_sub"]["attempts"] == 2
    assert failures["tests/test_calc.py::test_add"]["attempts"] == 1
    retry = next(r for r in fake_anthropic.requests if view["id"] in json.dumps(r.body))
    feedback = retry.body["messages"][0]["content"][-1]["text"]
    assert feedback.startswith(
        "Attempt 1 did not fix it: its fix broke tests/test_calc.py::test_add"
    )
    # The second attempt worked on the tree with the first fix in it.
    (viewed,) = [b for b in retry.tool_results() if b["tool_use_id"] == view["id"]]
    assert "return a + b" in viewed["content"]
    text = (repo / "calc.py").read_text()
    assert "return a + b" in text and "def sub(a, b):" in text and "add = sub" not in text


def _run_and_stop(
    project: Path, fake: FakeAnthropic, tmp: Path, stop: Callable[[subprocess.Popen[str]], None]
) -> tuple[subprocess.Popen[str], str, float]:
    """Four slow conversations in a subprocess; `stop` it once all four are in their attempt.
    Returns the process, its output and the seconds it took to end after `stop`."""
    nodeids = [f"tests/test_{name}.py::test_{name}" for name in "abcd"]
    slow = Delay(60, done())
    scripts = {n: [fix_for(n[-1]), slow] for n in nodeids}
    fake.reply(*[conversations(scripts)] * 8)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "--agent-fix", "-p", "no:cacheprovider"]
        + [f"tests/test_{name}.py" for name in "abcd"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp)},
    )
    try:
        start = time.monotonic()
        while len(fake.requests) < 8 and time.monotonic() - start < 120:
            time.sleep(0.05)
        assert len(fake.requests) >= 8, "the four conversations never reached their 2nd turn"
        assert len(list(tmp.glob("pytest-agentic-run-*/ws-*"))) >= 4
        stopped = time.monotonic()
        stop(proc)
        out, _ = proc.communicate(timeout=60)
        ending = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc, out, ending


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_ctrl_c_with_four_workers_removes_every_workspace(
    pytester: pytest.Pytester, repo: Path, fake_anthropic: FakeAnthropic, signame: str
) -> None:
    tmp = repo.parent / f"{repo.name}-tmp"  # the run's scratch folder
    tmp.mkdir()
    four_failures(repo)
    before = snapshot(repo)
    proc, out, ending = _run_and_stop(
        repo, fake_anthropic, tmp, lambda p: p.send_signal(getattr(signal, signame))
    )
    assert proc.returncode == 2, out
    assert ending < 40  # the workers were not waited for: their replies take 60 s
    assert "interrupted: every file the fixer touched was restored" in out
    assert "Traceback" not in out
    assert snapshot(repo) == before
    assert list(tmp.iterdir()) == []


def test_kill_9_with_four_workers_then_restore(
    pytester: pytest.Pytester, repo: Path, fake_anthropic: FakeAnthropic
) -> None:
    tmp = repo.parent / f"{repo.name}-tmp"  # the run's scratch folder
    tmp.mkdir()
    four_failures(repo)
    before = snapshot(repo)
    proc, _, _ = _run_and_stop(repo, fake_anthropic, tmp, lambda p: p.send_signal(signal.SIGKILL))
    assert proc.returncode == -signal.SIGKILL
    assert snapshot(repo) == before  # attempts work in workspaces: nothing to put back here
    restore = subprocess.run(
        [sys.executable, "-m", "pytest_agentic.cli", "restore"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert restore.returncode == 0, restore.stderr
    assert restore.stdout.startswith("removed the workspaces of a killed run: ")
    assert list(tmp.iterdir()) == []
    assert not (repo / ".agentic/lock").exists()
    assert snapshot(repo) == before


def test_a_fix_that_conflicts_with_an_earlier_one_is_tried_again_on_the_integrated_tree(
    pytester: pytest.Pytester, repo: Path, fake_anthropic: FakeAnthropic
) -> None:
    # Adjacent lines: the two fixes, made side by side from the same copy, overlap.
    (repo / "calc.py").write_text(
        "def add(a, b):\n    return a - b\ndef mul(a, b):\n    return a * b + 1\n"
    )
    fix_mul = edit("calc.py", "return a * b + 1", "return a * b")
    scripts = {
        "tests/test_calc.py::test_add": [message(FIX), done()],
        "tests/test_calc.py::test_mul": [message(fix_mul), done(), message(fix_mul), done()],
    }
    fake_anthropic.reply(*[conversations(scripts)] * 6)
    result = pytester.runpytest("--agent-fix", NO_REVIEW, "--agent-max-attempts", "2")
    assert result.ret == 0, result.stdout.str()
    failures = {f["nodeid"]: f for f in load_report(repo)["failures"]}
    assert failures["tests/test_calc.py::test_add"]["attempts"] == 1
    assert failures["tests/test_calc.py::test_mul"]["attempts"] == 2
    retry = [r for r in fake_anthropic.requests if len(r.body["messages"][0]["content"]) > 1]
    assert (
        retry[0]
        .body["messages"][0]["content"][-1]["text"]
        .startswith(
            "Attempt 1 did not fix it: its fix conflicts with the fixes integrated before it"
        )
    )
    assert (repo / "calc.py").read_text() == (
        "def add(a, b):\n    return a + b\ndef mul(a, b):\n    return a * b\n"
    )


def test_parallel_fixes_of_one_bug_are_integrated_once(
    pytester: pytest.Pytester, repo: Path, fake_anthropic: FakeAnthropic
) -> None:
    (repo / "tests/test_more.py").write_text(
        "from calc import add\n\n\ndef test_more():\n    assert add(1, 1) == 2\n"
    )
    other_fix = edit("calc.py", "return a - b", "return b + a")
    scripts = {
        "tests/test_calc.py::test_add": [message(FIX), done()],
        "tests/test_more.py::test_more": [message(other_fix), done()],
    }
    fake_anthropic.reply(*[conversations(scripts)] * 4)
    result = pytester.runpytest("--agent-fix", NO_REVIEW)
    assert result.ret == 0, result.stdout.str()
    failures = {f["nodeid"]: f for f in load_report(repo)["failures"]}
    # Issue 11: it names the fix that mended it (the JSON `fixed_by`), not a generic reason.
    assert failures["tests/test_more.py::test_more"]["fixed_by"] == "tests/test_calc.py::test_add"
    assert failures["tests/test_more.py::test_more"]["outcome"] == "fixed"
    assert (repo / "calc.py").read_text() == CALC.replace("a - b", "a + b")
