"""`pytest --agent-fix` end to end: pytester runs, the real SDK, the fake Messages API."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fake_anthropic import (
    ApiError,
    FakeAnthropic,
    approve,
    done,
    edit,
    message,
    text,
    tool_use,
)

# The reviewer (issue 9) is on by default and has its own tests (test_gate.py); the runs
# here are about other behaviour, so they leave it out rather than interleave a scripted
# review with every conversation.
NO_REVIEW = "--no-agent-review"

PYPROJECT = """\
[tool.pytest.ini_options]
pythonpath = ["."]
filterwarnings = ["error"]
"""
CALC = "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n"
TEST_CALC = (
    "from calc import add, mul\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\n"
    "def test_mul():\n    assert mul(2, 3) == 6\n"
)
FIX = edit("calc.py", "return a - b", "return a + b")


@pytest.fixture
def project(pytester: pytest.Pytester) -> Path:
    pytester.makepyprojecttoml(PYPROJECT)
    (pytester.path / "calc.py").write_text(CALC)
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_calc.py").write_text(TEST_CALC)
    return pytester.path


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and ".agentic" not in p.parts
        and "__pycache__" not in p.parts
        and ".pytest_cache" not in p.parts
    }


def load_report(root: Path) -> dict[str, Any]:
    (report,) = root.glob(".agentic/runs/*/report.json")
    return json.loads(report.read_text())


def test_fixed_first_time(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.reply(message(text("The operator is wrong."), FIX), done(), approve())
    result = pytester.runpytest("--agent-fix", "--agent-report", "fix.json")
    assert result.ret == 0
    assert (project / "calc.py").read_text() == CALC.replace("a - b", "a + b")
    result.stdout.fnmatch_lines(
        [
            "*= pytest-agentic fix =*",
            "fixed in 1 attempt: tests/test_calc.py::test_add",
            "files changed: calc.py",
            "tokens: * input, * output, * cache read, * cache write; estimated cost $*",
        ]
    )
    report = json.loads((project / "fix.json").read_text())
    failure = dict(report["failures"][0])
    patch_name = failure.pop("patch")
    assert sum(failure.pop("usage").values()) > 0  # this failure's own tokens
    assert failure == {
        "nodeid": "tests/test_calc.py::test_add",
        "outcome": "fixed",
        "attempts": 1,
        "files_changed": ["calc.py"],
        "reason": "",
        "refusals": [],
        "question": "",
        "fixed_by": "",
        "commit": "",
        # The gate's checks, in order (issue 9): which ran and what each said.
        "attempts_detail": [
            {
                "attempt": 1,
                "kept": True,
                "checks": [
                    {"check": "target", "ok": True, "reason": "the failing test(s) pass"},
                    {
                        "check": "regression",
                        "ok": True,
                        "reason": "1 affected passing test(s) still pass",
                    },
                    {
                        "check": "tamper",
                        "ok": True,
                        "reason": "no code reaching into the test runner or the process",
                    },
                    {
                        "check": "diff_budget",
                        "ok": True,
                        "reason": "2 changed line(s), budget 200",
                    },
                    {"check": "checks", "ok": True, "reason": "no project checks configured"},
                    {
                        "check": "review",
                        "ok": True,
                        "reason": "approved: A real fix of the cause, minimal and in scope.",
                    },
                ],
            }
        ],
    }
    assert report["exit_status"] == 0
    assert set(report["usage"]) == {
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
    }
    assert load_report(project) == report
    (patch,) = project.glob(".agentic/runs/*/*.patch")
    assert patch.name == patch_name
    assert "-    return a - b\n+    return a + b\n" in patch.read_text()
    assert list(project.glob(".agentic/runs/*/transcripts/*attempt1.json"))
    assert not (project / ".agentic/journal").exists()

    # What the model was sent: the node id, the failure, the test and the code around it.
    first = fake_anthropic.requests[0]
    assert first.headers["authorization"] == "Bearer sk-ant-test-key" or (
        first.headers.get("x-api-key") == "sk-ant-test-key"
    )
    assert "anthropic-version" in first.headers
    assert {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"} in (
        first.body["tools"]
    )
    prompt = first.body["messages"][0]["content"][0]["text"]
    assert "- tests/test_calc.py::test_add" in prompt
    assert "assert add(2, 3) == 5" in prompt
    # The definition the test calls, whole with its lines; not the module's other functions.
    assert "calc.py:1-2 add()" in prompt
    assert "return a - b" in prompt  # the code under test
    assert "def mul" not in prompt
    assert "test_mul" not in prompt.split("Test source")[0]
    # The tool result went back as its own block, answering the tool_use id.
    (result_block,) = fake_anthropic.requests[1].tool_results()
    assert result_block["tool_use_id"] == FIX["id"]
    assert "is_error" not in result_block


def test_prompt_cache_is_read_on_later_turns(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.reply(
        message(tool_use("str_replace_based_edit_tool", command="view", path="calc.py")),
        message(tool_use("run_tests")),
        message(FIX),
        done(),
        approve(),
    )
    result = pytester.runpytest("--agent-fix")
    assert result.ret == 0
    usages = [r for r in fake_anthropic.requests]
    assert len(usages) == 5  # 4 turns of the fix, 1 of the review
    report = load_report(project)
    assert report["usage"]["cache_read_input_tokens"] > report["usage"]["input_tokens"]
    # Every request after the first carries a breakpoint on its newest message.
    for request in fake_anthropic.requests[1:]:
        assert "cache_control" in request.last_user[-1]


def test_fixed_on_the_second_attempt_after_a_revert(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    wrong = edit("calc.py", "return a - b", "return a * b")
    fake_anthropic.reply(message(wrong), done(), message(FIX), done(), approve())
    result = pytester.runpytest("--agent-fix")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["fixed in 2 attempts: tests/test_calc.py::test_add"])
    # The second attempt started from the original file and was told what went wrong.
    second = fake_anthropic.requests[2]
    feedback = second.body["messages"][0]["content"][-1]["text"]
    assert feedback.startswith("Attempt 1 did not fix it: the test still fails")
    assert (project / "calc.py").read_text() == CALC.replace("a - b", "a + b")


def test_never_fixed_leaves_every_file_byte_identical(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    before = snapshot(project)
    wrong = edit("calc.py", "return a - b", "return a * b")
    create = tool_use(
        "str_replace_based_edit_tool", command="create", path="helpers/new.py", file_text="x = 1\n"
    )
    for _ in range(2):
        fake_anthropic.reply(message(wrong, create), done())
    result = pytester.runpytest("--agent-fix", "--agent-max-attempts", "2")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["not fixed (the test still fails*): tests/test_calc.py::test_add"])
    assert snapshot(project) == before
    assert not (project / "helpers").exists()  # the folder the attempt created is gone too
    assert load_report(project)["failures"][0]["attempts"] == 2


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("tests/test_calc.py", "protected (matches the `protected` globs)"),
        ("pyproject.toml", "protected (matches the `protected` globs)"),
        ("../outside.py", "outside the project root"),
        (".git/config", "inside .git"),
        ("escape/evil.py", "a symlink leads outside the project root"),
    ],
)
def test_forbidden_edits_are_refused_as_tool_errors(
    pytester: pytest.Pytester,
    project: Path,
    fake_anthropic: FakeAnthropic,
    tmp_path: Path,
    path: str,
    reason: str,
) -> None:
    (project / ".git").mkdir()
    (project / ".git/config").write_text("[core]\n")
    outside = tmp_path / "outside-dir"
    outside.mkdir()
    (project / "escape").symlink_to(outside)
    before = snapshot(project)
    attack = tool_use(
        "str_replace_based_edit_tool",
        command="create",
        path=path,
        file_text="def test_add():\n    pass\n",
    )
    fake_anthropic.reply(message(attack), done("I could not."))
    result = pytester.runpytest("--agent-fix", "--agent-max-attempts", "1")
    assert result.ret == 1
    (refusal,) = fake_anthropic.requests[1].tool_results()
    assert refusal["is_error"] is True
    assert reason in refusal["content"]
    assert "The file was not changed." in refusal["content"]
    assert snapshot(project) == before
    assert list(outside.iterdir()) == []
    assert not (project.parent / "outside.py").exists()


def test_out_of_scope_edit_is_refused_under_an_active_task(
    pytester: pytest.Pytester,
    project: Path,
    fake_anthropic: FakeAnthropic,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tasks = project / ".agentic/tasks"
    tasks.mkdir(parents=True)
    (tasks / "docs.toml").write_text('goal = "Write docs"\nscope = ["docs/**"]\n')
    monkeypatch.setenv("PYTEST_AGENTIC_TASK", "docs")
    fake_anthropic.reply(message(FIX), done())
    result = pytester.runpytest("--agent-fix", "--agent-max-attempts", "1")
    assert result.ret == 1
    (refusal,) = fake_anthropic.requests[1].tool_results()
    assert refusal["is_error"] is True
    assert "outside the scope of task 'docs'" in refusal["content"]
    assert (project / "calc.py").read_text() == CALC
    prompt = fake_anthropic.requests[0].body["messages"][0]["content"][0]["text"]
    assert "## Active task 'docs'\nWrite docs" in prompt


def test_overloaded_529_is_retried_by_the_sdk(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.reply(
        ApiError(529, "overloaded_error", "Overloaded"), message(FIX), done(), approve()
    )
    result = pytester.runpytest("--agent-fix")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["fixed in 1 attempt: *test_add"])


def test_rate_limit_429_waits_for_retry_after_and_succeeds(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    limited = ApiError(429, "rate_limit_error", "slow down", headers={"retry-after-ms": "700"})
    fake_anthropic.reply(limited, message(FIX), done(), approve())
    result = pytester.runpytest("--agent-fix", "--agent-max-attempts", "1")
    assert result.ret == 0
    first, retried = fake_anthropic.requests[:2]
    assert retried.received - first.received >= 0.6  # the server's retry-after was honoured
    assert retried.body == first.body


def test_a_request_that_times_out_fails_the_attempt_after_the_sdk_retries(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    from fake_anthropic import Delay

    pytester.makepyprojecttoml(PYPROJECT + "\n[tool.pytest-agentic]\napi_timeout = 1\n")
    fake_anthropic.reply(*[Delay(30, done())] * 3)
    before = snapshot(project)
    result = pytester.runpytest("--agent-fix", "--agent-max-attempts", "1")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["not fixed (API error: Request timed out*): *test_add"])
    assert "Traceback" not in result.stdout.str()
    assert len(fake_anthropic.requests) == 3  # the first try and the SDK's 2 retries
    assert snapshot(project) == before


def test_500_forever_fails_the_attempt_without_a_traceback(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.reply(*[ApiError(500, "api_error", "Internal server error")] * 20)
    before = snapshot(project)
    result = pytester.runpytest("--agent-fix", "--agent-max-attempts", "2")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["not fixed (API error 500: *): tests/test_calc.py::test_add"])
    assert "Traceback" not in result.stdout.str()
    assert snapshot(project) == before
    # The SDK's own retries (2) per attempt, and 2 attempts.
    assert len(fake_anthropic.requests) == 6


def test_missing_api_key_is_a_usage_error_before_tests_run(
    pytester: pytest.Pytester, project: Path
) -> None:
    result = pytester.runpytest_subprocess("--agent-fix")
    assert result.ret == 4
    result.stderr.fnmatch_lines(
        ["ERROR: --agent-fix needs an Anthropic API key: set ANTHROPIC_API_KEY*"]
    )
    assert "passed" not in result.stdout.str() and "failed" not in result.stdout.str()


def test_config_errors_are_usage_errors(
    pytester: pytest.Pytester, fake_anthropic: FakeAnthropic
) -> None:
    pytester.makepyprojecttoml("[tool.pytest-agentic]\nmax_attempt = 2\n")
    pytester.makepyfile("def test_ok(): pass")
    result = pytester.runpytest_subprocess("--agent-fix")
    assert result.ret == 4
    assert result.stderr.lines[0] == (
        f"ERROR: {pytester.path / 'pyproject.toml'}:2: [tool.pytest-agentic] unknown key "
        "'max_attempt'; did you mean 'max_attempts'?"
    )


def test_require_task_without_an_active_task_is_a_usage_error(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    (project / "pyproject.toml").write_text(
        PYPROJECT + "[tool.pytest-agentic]\nrequire_task = true\n"
    )
    result = pytester.runpytest_subprocess("--agent-fix")
    assert result.ret == 4
    assert result.stderr.lines[0] == (
        f"ERROR: {project / 'pyproject.toml'}: require_task = true but no task is active: start "
        "one with `pytest-agentic task start ID` or set PYTEST_AGENTIC_TASK"
    )
    assert fake_anthropic.requests == []


def test_settings_come_from_pyproject_and_the_command_line_wins(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    (project / "pyproject.toml").write_text(
        PYPROJECT + '[tool.pytest-agentic]\nfix = true\nmodel = "claude-from-config"\n'
    )
    fake_anthropic.reply(message(FIX), done(), approve())
    result = pytester.runpytest()
    assert result.ret == 0
    assert fake_anthropic.requests[0].body["model"] == "claude-from-config"
    (project / "calc.py").write_text(CALC)
    fake_anthropic.reply(message(FIX), done(), approve())
    pytester.runpytest("--agent-model", "claude-from-cli")
    assert fake_anthropic.requests[-1].body["model"] == "claude-from-cli"


def test_dirty_working_tree_is_preserved(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic, git
) -> None:
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "base")
    (project / "notes.txt").write_text("untracked user notes\n")
    (project / "calc.py").write_text(CALC + "\n# uncommitted user edit\n")
    before = snapshot(project)
    wrong = edit("calc.py", "return a - b", "return a * b")
    fake_anthropic.reply(message(wrong), done())
    result = pytester.runpytest("--agent-fix", "--agent-max-attempts", "1")
    assert result.ret == 1
    assert snapshot(project) == before
    assert git(project, "status", "--porcelain") == " M calc.py\n?? .agentic/\n?? notes.txt\n"


def test_flaky_test_is_never_dispatched(
    pytester: pytest.Pytester, fake_anthropic: FakeAnthropic
) -> None:
    pytester.makepyprojecttoml(PYPROJECT)
    pytester.makepyfile(
        test_flaky="""
        from pathlib import Path

        def test_flaky():
            counter = Path(__file__).with_name("runs.txt")
            n = int(counter.read_text()) if counter.exists() else 0
            counter.write_text(str(n + 1))
            assert n >= 1
    """
    )
    result = pytester.runpytest("--agent-fix")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["flaky (passed on re-run, not sent to the model): *test_flaky"])
    assert fake_anthropic.requests == []
    assert load_report(pytester.path)["failures"][0]["outcome"] == "flaky"


def test_the_agent_may_give_up_with_a_question(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.reply(
        message(
            tool_use(
                "give_up", reason="the test expects subtraction?", question="Is add() meant to add?"
            )
        )
    )
    result = pytester.runpytest("--agent-fix")
    assert result.ret == 1
    # Issue 11: the question is a line of its own under the verdict, and `question` in JSON.
    result.stdout.fnmatch_lines(
        [
            "not fixed (the agent gave up: the test expects subtraction?): "
            "tests/test_calc.py::test_add",
            "    the agent asks: Is add() meant to add?",
        ]
    )
    (failure,) = load_report(project)["failures"]
    assert failure["question"] == "Is add() meant to add?"
    assert failure["reason"] == "the agent gave up: the test expects subtraction?"
    assert len(fake_anthropic.requests) == 1  # giving up ends the attempts


def test_several_tool_calls_in_one_reply_each_get_a_result(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    view = tool_use("str_replace_based_edit_tool", command="view", path="calc.py")
    bad = tool_use(
        "str_replace_based_edit_tool",
        command="str_replace",
        path="calc.py",
        old_str="not there",
        new_str="x",
    )
    fake_anthropic.reply(message(view, bad, FIX), done(), approve())
    result = pytester.runpytest("--agent-fix")
    assert result.ret == 0
    results = fake_anthropic.requests[1].tool_results()
    assert [r["tool_use_id"] for r in results] == [view["id"], bad["id"], FIX["id"]]
    assert "     2\t    return a - b" in results[0]["content"]
    assert results[1]["is_error"] is True and "occurs 0 times" in results[1]["content"]
    assert "is_error" not in results[2]


def test_dry_run_proposes_a_patch_and_leaves_the_tree(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    before = snapshot(project)
    fake_anthropic.reply(message(FIX), done(), approve())
    result = pytester.runpytest("--agent-fix", "--agent-dry-run")
    result.stdout.fnmatch_lines(["would be fixed (dry run) in 1 attempt: *test_add"])
    assert snapshot(project) == before
    (patch,) = project.glob(".agentic/runs/*/*.patch")
    assert "+    return a + b" in patch.read_text()


def test_budget_stops_dispatching(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    # Issue #10 changed this: the budget is checked before every request, so a budget
    # smaller than the first request (about 2,000 tokens here) sends nothing at all.
    (project / "tests/test_more.py").write_text(
        "from calc import add\n\ndef test_more():\n    assert add(1, 1) == 2\n"
    )
    fake_anthropic.reply(message(text("hmm")), done("no idea"))
    # One worker: with more, both failures are dispatched before any token is spent.
    result = pytester.runpytest(
        "--agent-fix",
        "--agent-budget-tokens",
        "1",
        "--agent-max-attempts",
        "3",
        "--agent-workers",
        "1",
    )
    assert result.ret == 1
    assert fake_anthropic.requests == []
    outcomes = {f["nodeid"]: f for f in load_report(project)["failures"]}
    assert {f["outcome"] for f in outcomes.values()} == {"skipped"}
    assert outcomes["tests/test_calc.py::test_add"]["attempts"] == 0
    result.stdout.fnmatch_lines(
        [
            "skipped (budget spent: 0 of budget_tokens 1 used, the next request would need "
            "about * more): tests/test_calc.py::test_add",
            "skipped (budget spent: *): tests/test_more.py::test_more",
        ]
    )


@pytest.mark.parametrize(
    "option", [["--agent-budget-tokens", "6000"], ["--agent-max-cost", "0.05"]]
)
def test_budget_stops_mid_attempt_before_the_next_request(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic, option: list[str]
) -> None:
    # The first request fits; its reply views a big file, so the second would not.
    (project / "data.py").write_text("".join(f"VALUE_{n} = {n}\n" for n in range(20_000)))
    before = snapshot(project)
    view = tool_use("str_replace_based_edit_tool", command="view", path="data.py")
    fake_anthropic.reply(message(FIX, view), done(), message(FIX), done())
    result = pytester.runpytest("--agent-fix", *option)
    assert result.ret == 1
    assert len(fake_anthropic.requests) == 1  # the second request was never sent
    assert snapshot(project) == before  # the attempt's edit was restored
    assert not (project / ".agentic/journal").exists()
    (failure,) = load_report(project)["failures"]
    assert failure["outcome"] == "not_fixed"
    assert failure["reason"].startswith("budget spent: ")
    result.stdout.fnmatch_lines(["not fixed (budget spent: *): tests/test_calc.py::test_add"])


def test_plain_run_does_not_import_anthropic(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import sys

        def test_no_anthropic():
            assert "anthropic" not in sys.modules
            assert "pytest_agentic.fixer" not in sys.modules
            assert "pytest_agentic.plugin" in sys.modules
    """)
    result = pytester.runpytest_subprocess()
    assert result.ret == 0


def test_under_xdist_the_loop_runs_once_in_the_controller(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.reply(message(FIX), done(), approve())
    result = pytester.runpytest_subprocess("-n", "2", "--agent-fix")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["fixed in 1 attempt: tests/test_calc.py::test_add"])
    assert len(fake_anthropic.requests) == 3  # the fix's two turns, then one review


def interrupt_mid_attempt(
    project: Path,
    fake_anthropic: FakeAnthropic,
    signals: list[tuple[float, int]],
    replies: tuple[Any, ...] = (),
    requests: int = 2,
    args: tuple[str, ...] = (),
    check: Any = None,
    **popen: Any,
) -> tuple[int, str, Path]:
    """Run `pytest --agent-fix` in a child; once `requests` requests have come (the last one
    held 30 s), send `signals` ((delay before, signal) pairs). (exit status, output, the
    run's TMPDIR)."""
    import os
    import sys
    import time

    from fake_anthropic import Delay

    fake_anthropic.reply(*(replies or (message(FIX), Delay(30, done()))))
    tmp = project.parent / f"{project.name}-tmp"  # the run's scratch folder goes here
    tmp.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "--agent-fix", "-p", "no:cacheprovider", *args],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp)},
        **popen,
    )
    try:
        start = time.monotonic()
        while len(fake_anthropic.requests) < requests and time.monotonic() - start < 60:
            time.sleep(0.05)
        assert len(fake_anthropic.requests) == requests, "the held request never came"
        if requests == 2:
            # Issue 8: the edit is in the attempt's workspace, never in the user's tree.
            assert (project / "calc.py").read_text() == CALC
            (edited,) = tmp.glob("pytest-agentic-run-*/ws-*/calc.py")
            assert "a + b" in edited.read_text()
        if check is not None:
            check()
        for delay, signum in signals:
            time.sleep(delay)
            proc.send_signal(signum)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, tmp


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_ctrl_c_mid_attempt_restores_and_exits_2(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic, signame: str
) -> None:
    import signal

    before = snapshot(project)
    status, out, tmp = interrupt_mid_attempt(
        project, fake_anthropic, [(0, getattr(signal, signame))]
    )
    assert status == 2, out
    assert "interrupted: every file the fixer touched was restored" in out
    assert out.rstrip().splitlines()[-1] == (  # issue 11: the last line says the exit status
        "pytest-agentic: interrupted; every file the fixer touched was restored — exit 2"
    )
    assert "Traceback" not in out
    assert snapshot(project) == before
    assert list(tmp.iterdir()) == []  # every workspace removed


def test_ctrl_c_works_in_a_run_started_in_the_background(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    # The cause of the flaky [SIGINT] case above (issue #10): a shell starts a background
    # job with SIGINT ignored, Python keeps an inherited SIG_IGN, and the signal did
    # nothing, so the attempt ran on and its fix was kept (exit 0 after the 30 s delay).
    # Ignore SIGINT in the child the way `cmd &` does, whatever started this test.
    import signal

    before = snapshot(project)
    status, out, tmp = interrupt_mid_attempt(
        project,
        fake_anthropic,
        [(0, signal.SIGINT)],
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert status == 2, out
    assert "interrupted: every file the fixer touched was restored" in out
    assert snapshot(project) == before
    assert list(tmp.iterdir()) == []


def test_more_ctrl_c_during_the_restore_do_not_cut_it_short(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    import signal

    from fake_anthropic import Delay

    # test_add's fix (and 300 new files) is integrated into the tree; while test_mul's
    # attempt waits on the API: Ctrl-C, then more Ctrl-C every few milliseconds while the
    # integrated fix is taken out again.
    (project / "calc.py").write_text(CALC.replace("a * b", "a * b + 1"))
    with (project / "pyproject.toml").open("a") as fh:  # 300 new files pass the diff budget
        fh.write("\n[tool.pytest-agentic]\nmax_diff_lines = 100000\n")
    before = snapshot(project)

    def integrated() -> None:
        assert len(list((project / "gen").iterdir())) == 300
        assert "a + b" in (project / "calc.py").read_text()

    creates = [
        tool_use(
            "str_replace_based_edit_tool",
            command="create",
            path=f"gen/mod{n}.py",
            file_text="x = 1\n" * 200,
        )
        for n in range(300)
    ]
    status, out, tmp = interrupt_mid_attempt(
        project,
        fake_anthropic,
        [(0, signal.SIGINT)] + [(0.003, signal.SIGINT)] * 150,
        replies=(message(FIX, *creates), done(), Delay(30, done())),
        requests=3,
        args=("--agent-workers", "1", NO_REVIEW),
        check=integrated,
    )
    assert status == 2, out
    assert "interrupted: every file the fixer touched was restored" in out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    assert snapshot(project) == before
    assert not (project / "gen").exists()
    assert not (project / ".agentic/journal").exists()


def test_hard_kill_then_pytest_agentic_restore(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    import os
    import signal
    import sys
    import time

    from fake_anthropic import Delay

    before = snapshot(project)
    create = tool_use(
        "str_replace_based_edit_tool", command="create", path="extra.py", file_text="y = 2\n"
    )
    fake_anthropic.reply(message(FIX, create), Delay(30, done()))
    tmp = project.parent / f"{project.name}-tmp"
    tmp.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "--agent-fix", "-p", "no:cacheprovider"],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TMPDIR": str(tmp)},
    )
    start = time.monotonic()
    while len(fake_anthropic.requests) < 2 and time.monotonic() - start < 60:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # Issue 8: the attempt's edits are in its workspace; the user's tree was never touched.
    assert snapshot(project) == before
    assert list(tmp.glob("pytest-agentic-run-*/ws-*/extra.py"))
    restore = subprocess.run(
        [sys.executable, "-m", "pytest_agentic.cli", "restore"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert restore.returncode == 0, restore.stderr
    (removed,) = restore.stdout.splitlines()
    assert removed.startswith("removed the workspaces of a killed run: ")  # issue 8
    assert not Path(removed.split(": ", 1)[1]).exists()
    assert list(tmp.iterdir()) == []
    assert snapshot(project) == before
    assert not (project / ".agentic/journal").exists()


def test_a_journal_left_by_a_killed_run_blocks_a_new_run(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    from pytest_agentic.workspace import Journal

    Journal(project, "123-1-1").save("calc.py")
    result = pytester.runpytest_subprocess("--agent-fix")
    assert result.ret == 4
    assert result.stderr.lines[0] == (
        f"ERROR: {project / '.agentic/journal'}: an earlier fix run was killed and left files "
        "changed; run `pytest-agentic restore` first"
    )
    assert fake_anthropic.requests == []


def test_a_fix_that_breaks_an_earlier_fix_is_reverted(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    # test_add is fixed first; the "fix" for the second failure breaks add() again.
    (project / "tests/test_sub.py").write_text(
        "import calc\n\n\ndef test_sub():\n    assert calc.sub(3, 1) == 2\n"
    )
    breaking = edit(
        "calc.py",
        "def mul(a, b):",
        "def sub(a, b):\n    return a - b\n\n\nadd = sub\n\n\ndef mul(a, b):",
    )
    fake_anthropic.reply(message(FIX), done(), approve(), message(breaking), done(), approve())
    result = pytester.runpytest("--agent-fix", "--agent-max-attempts", "1", "--agent-workers", "1")
    assert result.ret == 1
    outcomes = {f["nodeid"]: f for f in load_report(project)["failures"]}
    assert outcomes["tests/test_calc.py::test_add"]["outcome"] == "fixed"
    sub = outcomes["tests/test_sub.py::test_sub"]
    assert sub["outcome"] == "not_fixed"
    # Issue 8: each fix is re-verified on the integrated tree before it is integrated, so
    # the breakage is caught there (not in the final verification) and never reaches the tree.
    assert sub["reason"] == (
        "its fix broke tests/test_calc.py::test_add, fixed before it; not integrated"
    )
    assert (project / "calc.py").read_text() == CALC.replace("a - b", "a + b")


def test_failures_sharing_a_file_are_fixed_once(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    (project / "tests/test_more.py").write_text(
        "from calc import add\n\ndef test_more():\n    assert add(1, 1) == 2\n"
    )
    fake_anthropic.reply(message(FIX), done(), approve())
    # One worker (issue 8): with more, both are dispatched before either fix exists.
    result = pytester.runpytest("--agent-fix", "--agent-workers", "1")
    assert result.ret == 0
    outcomes = {f["nodeid"]: f for f in load_report(project)["failures"]}
    # Issue 11: it names the fix that repaired it, instead of "fixed in 0 attempts".
    more = outcomes["tests/test_more.py::test_more"]
    assert (more["outcome"], more["attempts"], more["files_changed"], more["fixed_by"]) == (
        "fixed",
        0,
        [],
        "tests/test_calc.py::test_add",
    )
    result.stdout.fnmatch_lines(
        ["fixed by the fix for tests/test_calc.py::test_add: tests/test_more.py::test_more"]
    )
    assert "fixed in 0 attempts" not in result.stdout.str()
    assert len(fake_anthropic.requests) == 3  # the fix's two turns, then one review


def test_setup_errors_are_fixed_too_and_conventions_are_sent(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    (project / "tests/test_calc.py").write_text(
        "import pytest\nfrom calc import mul\n\n\n@pytest.fixture\ndef six():\n"
        "    return mul(2, 3) if mul(1, 1) == 1 else None\n\n\n"
        "@pytest.fixture\ndef checked(six):\n    assert six == 6\n    return six\n\n\n"
        "def test_uses_fixture(checked):\n    assert checked\n"
    )
    (project / "calc.py").write_text(CALC.replace("return a * b", "return a * b + 1"))
    (project / "AGENTS.md").write_text("# AGENTS.md\nNever use floats for money.\n")
    fake_anthropic.reply(
        message(edit("calc.py", "return a * b + 1", "return a * b")), done(), approve()
    )
    result = pytester.runpytest("--agent-fix")
    assert result.ret == 0
    prompt = fake_anthropic.requests[0].body["messages"][0]["content"][0]["text"]
    assert "## tests/test_calc.py::test_uses_fixture (setup error)" in prompt
    assert "Never use floats for money." in prompt


def test_report_command_summarises_the_last_run(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    import sys

    fake_anthropic.reply(message(FIX), done(), approve())
    pytester.runpytest("--agent-fix")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_agentic.cli", "report"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[0] == "fixed in 1 attempt: tests/test_calc.py::test_add"
    assert (project / ".agentic/.gitignore").read_text() == (
        "/runs/\n/journal/\n/active\n/lock\n/workspaces/\n"
    )


def test_the_default_model_is_not_deprecated_in_the_installed_sdk() -> None:
    from anthropic._data.deprecated_models import DEPRECATED_MODELS

    from pytest_agentic.agent import DEFAULT_MODEL

    assert DEFAULT_MODEL not in DEPRECATED_MODELS


MORE_FAILURES = {
    "tests/test_more.py": "from calc import add\n\ndef test_more():\n    assert add(1, 1) == 2\n",
    "tests/test_mul.py": "from calc import mul\n\ndef test_mul3():\n    assert mul(1, 1) == 3\n",
}


@pytest.mark.parametrize(
    ("status", "kind", "fix"),
    [
        (401, "authentication_error", "check ANTHROPIC_API_KEY"),
        (403, "permission_error", "check ANTHROPIC_API_KEY"),
        (404, "not_found_error", "check --agent-model (`model`) and ANTHROPIC_BASE_URL"),
    ],
)
def test_a_refused_key_stops_the_run_after_one_request(
    pytester: pytest.Pytester,
    project: Path,
    fake_anthropic: FakeAnthropic,
    status: int,
    kind: str,
    fix: str,
) -> None:
    # Issue #10 changed this (it was: each failure tries and fails, exit 1): a key the API
    # refuses is a usage error of the whole run.
    for rel, source in MORE_FAILURES.items():
        (project / rel).write_text(source)
    before = snapshot(project)
    fake_anthropic.reply(*[ApiError(status, kind, "invalid x-api-key")] * 20)
    result = pytester.runpytest_subprocess("--agent-fix")
    assert result.ret == 4
    assert len(fake_anthropic.requests) == 1
    out = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in out and "{'type'" not in out and "Error code" not in out
    cause = [line for line in out.splitlines() if "invalid x-api-key" in line]
    assert len(cause) == 1, out
    assert cause[0].startswith("stopped: ") and cause[0].endswith(fix)
    assert f"API error {status}: invalid x-api-key ({kind})" in cause[0]
    outcomes = sorted(f["outcome"] for f in load_report(project)["failures"])
    assert outcomes == ["not_fixed", "skipped", "skipped"]  # the one that asked, the rest
    assert load_report(project)["stopped"] in cause[0]
    after = snapshot(project)
    assert {k: v for k, v in after.items() if k not in ("stdout", "stderr")} == before


def test_an_unreachable_api_stops_the_run_at_once(
    pytester: pytest.Pytester, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key")
    for rel, source in MORE_FAILURES.items():
        (project / rel).write_text(source)
    import time

    start = time.monotonic()
    result = pytester.runpytest_subprocess("--agent-fix")
    assert result.ret == 4
    assert time.monotonic() - start < 60
    out = result.stdout.str()
    (line,) = [line for line in out.splitlines() if "Connection" in line]
    assert line.startswith(f"stopped: cannot reach http://127.0.0.1:{port}")
    assert line.endswith("check the network, proxy settings and ANTHROPIC_BASE_URL")
    assert sorted(f["outcome"] for f in load_report(project)["failures"]) == [
        "not_fixed",
        "skipped",
        "skipped",
    ]


def test_secrets_never_reach_the_api_a_transcript_or_the_report(
    pytester: pytest.Pytester,
    project: Path,
    fake_anthropic: FakeAnthropic,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outside = tmp_path_factory.mktemp("elsewhere")
    (outside / "settings.py").write_text('TOKEN = "OUTSIDE-FAKE-TOKEN"\n')
    (outside / "notes.txt").write_text("OUTSIDE-NOTES-TOKEN\n")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_FAKEENVIRONTOKEN")
    (project / "settings.py").symlink_to(outside / "settings.py")  # imported by the test
    (project / "notes.txt").symlink_to(outside / "notes.txt")
    (project / "environ.txt").symlink_to("/proc/self/environ")
    (project / ".env").write_text("API_KEY=DOTENV-FAKE-TOKEN\n")
    (project / "tests/test_calc.py").write_text("import settings\n" + TEST_CALC)
    calls = [
        tool_use("str_replace_based_edit_tool", command="view", path=path)
        for path in ("environ.txt", "notes.txt", "settings.py", ".env", ".", str(outside))
    ]
    calls.append(tool_use("search", pattern="TOKEN"))
    calls.append(
        tool_use(
            "str_replace_based_edit_tool",
            command="str_replace",
            path="environ.txt",
            old_str="GITHUB",
            new_str="x",
        )
    )
    fake_anthropic.reply(message(*calls), message(FIX), done())
    result = pytester.runpytest_subprocess("--agent-fix", NO_REVIEW)
    assert result.ret == 0
    results = fake_anthropic.requests[1].tool_results()
    assert [r.get("is_error", False) for r in results] == [True] * 4 + [False, True, False, True]
    everything = [json.dumps(r.body) for r in fake_anthropic.requests]
    everything += [p.read_text() for p in project.glob(".agentic/runs/**/*") if p.is_file()]
    everything.append(result.stdout.str())
    for secret in ("ghp_FAKEENVIRONTOKEN", "OUTSIDE-FAKE-TOKEN", "OUTSIDE-NOTES", "DOTENV-FAKE"):
        assert not [text for text in everything if secret in text], secret


def test_a_nul_byte_path_is_an_error_and_the_other_fix_is_kept(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    (project / "calc.py").write_text(CALC.replace("a * b", "a * b + 1"))
    nul_create = tool_use(
        "str_replace_based_edit_tool", command="create", path="calc\u0000.py", file_text="x"
    )
    nul_edit = edit("calc.py\u0000", "a * b + 1", "a * b")
    bad_type = tool_use(
        "str_replace_based_edit_tool",
        command="insert",
        path="calc.py",
        insert_line="1",
        insert_text=7,
    )
    fix_mul = edit("calc.py", "return a * b + 1", "return a * b")
    fake_anthropic.reply(
        message(FIX), done(), message(nul_create, nul_edit, bad_type), message(fix_mul), done()
    )
    result = pytester.runpytest(
        "--agent-fix", NO_REVIEW, "--agent-workers", "1"
    )  # replies in order
    assert result.ret == 0, result.stdout.str()
    errors = fake_anthropic.requests[3].tool_results()
    assert [r["is_error"] for r in errors] == [True, True, True]
    assert "NUL byte" in errors[0]["content"] and "NUL byte" in errors[1]["content"]
    assert "`insert_line` must be an integer, not str" in errors[2]["content"]
    assert (project / "calc.py").read_text() == CALC.replace("a - b", "a + b")
    assert not (project / ".agentic/journal").exists()


def test_an_unexpected_error_restores_the_attempt_keeps_verified_fixes_and_exits_3(
    pytester: pytest.Pytester,
    project: Path,
    fake_anthropic: FakeAnthropic,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pytest_agentic.attempt

    (project / "calc.py").write_text(CALC.replace("a * b", "a * b + 1"))
    written = []

    def write_transcript(*args: Any) -> None:  # the disk fills up on the second attempt
        written.append(args)
        if len(written) == 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(pytest_agentic.attempt, "write_transcript", write_transcript)
    fix_mul = edit("calc.py", "return a * b + 1", "return a * b")
    fake_anthropic.reply(message(FIX), done(), message(fix_mul), done())
    result = pytester.runpytest(
        "--agent-fix", NO_REVIEW, "--agent-workers", "1"
    )  # replies in order
    assert result.ret == 3
    lines = [line for line in result.stdout.lines if "No space left on device" in line]
    assert len(lines) == 1
    assert lines[0].startswith("internal error: OSError: [Errno 28] No space left on device (")
    assert "Traceback" not in result.stdout.str()
    # The verified fix of test_add is kept, the open attempt on test_mul restored.
    assert (project / "calc.py").read_text() == CALC.replace("a - b", "a + b").replace(
        "a * b", "a * b + 1"
    )
    assert not (project / ".agentic/journal").exists()
    report = load_report(project)
    assert report["error"].startswith("OSError: [Errno 28]")
    assert [f["outcome"] for f in report["failures"]] == ["fixed", "not_fixed"]
    (log,) = project.glob(".agentic/runs/*/error.log")
    assert "Traceback" in log.read_text()


def test_a_huge_create_is_refused_and_never_resent_or_stored(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    huge = tool_use(
        "str_replace_based_edit_tool", command="create", path="blob.py", file_text="x" * (8 << 20)
    )
    fake_anthropic.reply(message(huge), message(FIX), done())
    result = pytester.runpytest("--agent-fix", NO_REVIEW)
    assert result.ret == 0
    assert not (project / "blob.py").exists()
    (refusal,) = fake_anthropic.requests[1].tool_results()
    assert refusal["is_error"] is True
    assert "over write_max_bytes (1048576)" in refusal["content"]
    for request in fake_anthropic.requests[1:]:
        assert len(json.dumps(request.body)) < 100_000
    for transcript in project.glob(".agentic/runs/*/transcripts/*.json"):
        assert transcript.stat().st_size < 200_000


def test_unreadable_globs_come_from_pyproject(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    (project / "pyproject.toml").write_text(
        PYPROJECT + '[tool.pytest-agentic]\nunreadable = ["private/"]\nview_max_chars = 100\n'
    )
    (project / "private").mkdir()
    (project / "private/keys.py").write_text("KEY = 'PRIVATE-FAKE-KEY'\n")
    (project / ".env").write_text("SHOWN=1\n")  # the list replaces the defaults
    views = [
        tool_use("str_replace_based_edit_tool", command="view", path=path)
        for path in ("private/keys.py", ".env", "tests/test_calc.py")
    ]
    fake_anthropic.reply(message(*views), message(FIX), done())
    result = pytester.runpytest("--agent-fix", NO_REVIEW)
    assert result.ret == 0
    keys, env, test = fake_anthropic.requests[1].tool_results()
    assert keys["is_error"] is True and "unreadable" in keys["content"]
    assert env["content"] == "     1\tSHOWN=1"
    assert "[output capped at view_max_chars (100 characters)" in test["content"]
