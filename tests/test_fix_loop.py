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
    (project / "tests/test_more.py").write_text(
        "from calc import add\n\ndef test_more():\n    assert add(1, 1) == 2\n"
    )
    (project / "calc.py").write_text(CALC)
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
    outcomes = {f["nodeid"]: f for f in load_report(project)["failures"]}
    assert outcomes["tests/test_more.py::test_more"]["outcome"] == "skipped"
    assert outcomes["tests/test_calc.py::test_add"]["attempts"] == 1
    result.stdout.fnmatch_lines(["skipped (token budget spent): tests/test_more.py::test_more"])


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


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_ctrl_c_mid_attempt_restores_and_exits_2(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic, signame: str
) -> None:
    from fake_anthropic import Delay

    before = snapshot(project)
    fake_anthropic.reply(message(FIX), Delay(30, done()))
    import os
    import signal
    import sys

    tmp = project.parent / f"{project.name}-tmp"  # the run's scratch folder goes here
    tmp.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "--agent-fix", "-p", "no:cacheprovider"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp)},
    )
    try:
        deadline = 60
        import time

        start = time.monotonic()
        while len(fake_anthropic.requests) < 2 and time.monotonic() - start < deadline:
            time.sleep(0.05)
        assert len(fake_anthropic.requests) == 2, "the second request never came"
        # Issue 8: the edit is in the attempt's workspace, never in the user's tree.
        assert (project / "calc.py").read_text() == CALC
        (edited,) = tmp.glob("pytest-agentic-run-*/ws-*/calc.py")
        assert "a + b" in edited.read_text()
        proc.send_signal(getattr(signal, signame))
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, out
    assert "interrupted: every file the fixer touched was restored" in out
    assert out.rstrip().splitlines()[-1] == (  # issue 11: the last line says the exit status
        "pytest-agentic: interrupted; every file the fixer touched was restored — exit 2"
    )
    assert "Traceback" not in out
    assert snapshot(project) == before
    assert list(tmp.iterdir()) == []  # every workspace removed


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


def test_unauthorized_is_not_retried_and_fails_the_attempt(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.reply(ApiError(401, "authentication_error", "invalid x-api-key"))
    result = pytester.runpytest("--agent-fix", "--agent-max-attempts", "1")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["not fixed (API error 401: *invalid x-api-key*): *test_add"])
    assert len(fake_anthropic.requests) == 1
