"""Live progress of a fix run and its last screen: pytester runs against the fake Messages API."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fake_anthropic import FakeAnthropic, done, edit, message, text, tool_use
from pytest_agentic.progress import LiveProgress, parse_refusal, tool_summary

# The reviewer (issue 9) is on by default and has its own tests (test_gate.py); the runs
# here are about other behaviour, so they leave it out rather than interleave a scripted
# review with every conversation.
NO_REVIEW = "--no-agent-review"

PYPROJECT = '[tool.pytest.ini_options]\npythonpath = ["."]\nfilterwarnings = ["error"]\n'
CALC = "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n"
TEST_CALC = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
TEST_MORE = "from calc import add\n\n\ndef test_more():\n    assert add(1, 1) == 2\n"
FIX = edit("calc.py", "return a - b", "return a + b")
VIEW = tool_use("str_replace_based_edit_tool", command="view", path="calc.py")
WEAKEN = edit("tests/test_calc.py", "== 5", "== -1")


@pytest.fixture
def project(pytester: pytest.Pytester) -> Path:
    pytester.makepyprojecttoml(PYPROJECT)
    (pytester.path / "calc.py").write_text(CALC)
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_calc.py").write_text(TEST_CALC)
    (pytester.path / "tests" / "test_more.py").write_text(TEST_MORE)
    return pytester.path


def test_progress_lines_and_the_last_screen_in_ci(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.reply(
        message(text("The operator is wrong."), VIEW, WEAKEN, FIX, tool_use("run_tests")), done()
    )
    # One worker: the scripted replies are consumed in order.
    result = pytester.runpytest("--agent-fix", NO_REVIEW, "--agent-workers", "1")
    assert result.ret == 0
    lines = result.stdout.lines
    # Not a terminal: every event is a plain line, in order, right after the test dots.
    result.stdout.fnmatch_lines(
        [
            "tests/test_calc.py F*",
            "tests/test_more.py F*",
            "pytest-agentic: re-running 2 failures to confirm them",
            "pytest-agentic: 2 confirmed",
            "[[]1/2] tests/test_calc.py::test_add attempt 1/3",
            "[[]1/2]   view calc.py",
            "[[]1/2]   refused tests/test_calc.py: protected",
            "[[]1/2]   edit calc.py",
            "[[]1/2]   run_tests → 1 passed",
            "[[]1/2]   re-running the test to judge the attempt",
            "[[]1/2] tests/test_calc.py::test_add: fixed in 1 attempt · * tokens, ~$0.0* so far",
            "[[]2/2] tests/test_more.py::test_more: fixed by the fix for "
            "tests/test_calc.py::test_add",
            "*= FAILURES =*",
        ],
        consecutive=False,
    )
    assert not any("\r" in line for line in lines)
    assert not any("The operator is wrong." in line for line in lines)  # -v only
    # The last screen: pytest's short summary, its stats line, then our section; the very
    # last line states the result and the exit status.
    short = lines.index(next(x for x in lines if "short test summary info" in x))
    stats = lines.index(next(x for x in lines if re.search(r"=+ 2 failed in ", x)))
    section = lines.index(next(x for x in lines if "= pytest-agentic fix =" in x))
    assert short < stats < section
    assert lines[section + 1 :] == [
        "fixed in 1 attempt: tests/test_calc.py::test_add",
        lines[section + 2],
        "fixed by the fix for tests/test_calc.py::test_add: tests/test_more.py::test_more",
        "files changed: calc.py",
        lines[section + 5],
        lines[section + 6],
        lines[section + 7],
        "pytest-agentic: 2 of 2 failures fixed — exit 0",
    ]
    assert lines[section + 7].startswith("sandbox: ")
    refused = "    refused tests/test_calc.py: protected (matches the `protected` globs)"
    assert lines[section + 2].startswith(refused)
    assert lines[section + 5].startswith("tokens: ")
    assert "fixed in 0 attempts" not in result.stdout.str()
    (report,) = project.glob(".agentic/runs/*/report.json")
    failures = {f["nodeid"]: f for f in json.loads(report.read_text())["failures"]}
    (refusal,) = failures["tests/test_calc.py::test_add"]["refusals"]
    assert refusal["path"] == "tests/test_calc.py"
    assert refusal["reason"].startswith("protected (matches the `protected` globs)")
    assert failures["tests/test_more.py::test_more"]["fixed_by"] == "tests/test_calc.py::test_add"
    assert (project / "tests/test_calc.py").read_text() == TEST_CALC


def test_quiet_shows_verdicts_only_and_the_final_line_says_exit_1(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    (project / "tests/test_more.py").unlink()
    wrong = edit("calc.py", "return a - b", "return a * b")
    fake_anthropic.reply(message(VIEW, wrong), done())
    result = pytester.runpytest("--agent-fix", "-q", "--agent-max-attempts", "1")
    assert result.ret == 1
    out = result.stdout.str()
    assert "attempt 1/1" not in out and "view calc.py" not in out and "confirm" not in out
    result.stdout.fnmatch_lines(
        ["[[]1/1] tests/test_calc.py::test_add: not fixed (the test still fails*) · * so far"]
    )
    assert result.stdout.lines[-1] == "pytest-agentic: 0 of 1 failure fixed, 1 not fixed — exit 1"


def test_verbose_adds_the_models_words(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    (project / "tests/test_more.py").unlink()
    said = "The operator is wrong: add() subtracts. " + "x" * 300
    fake_anthropic.reply(message(text(said), FIX), done())
    result = pytester.runpytest("--agent-fix", NO_REVIEW, "-v")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        ["[[]1/1]   “The operator is wrong: add() subtracts. xxx*…”", "[[]1/1]   edit calc.py"]
    )
    (line,) = [x for x in result.stdout.lines if "The operator is wrong" in x]
    assert len(line) < 140  # the model's words are cut, not pasted whole


def test_on_a_terminal_tool_calls_update_in_place(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    """A real pseudo-terminal: pytest's writer sees a TTY, as in an interactive shell."""
    (project / "tests/test_more.py").unlink()
    fake_anthropic.reply(message(VIEW, WEAKEN, FIX), done())
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "--agent-fix", NO_REVIEW, "-p", "no:cacheprovider"],
        cwd=project,
        stdin=subprocess.DEVNULL,
        stdout=child,
        stderr=child,
        env={**os.environ, "COLUMNS": "100", "TERM": "xterm"},
    )
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    assert proc.wait(timeout=120) == 0
    out = re.sub(r"\x1b\[[0-9;]*m", "", b"".join(chunks).decode("utf-8", "replace"))
    out = out.replace("\r\n", "\n")
    # A tool call is written over the previous one (carriage return, padded to the width) ...
    assert re.search(r"\r\[1/1\]   view calc\.py {20,}", out), out
    assert re.search(r"\r\[1/1\]   edit calc\.py {20,}", out), out
    # ... while the refusal and the verdict stay on lines of their own.
    assert "\r[1/1]   refused tests/test_calc.py: protected" in out
    assert re.search(r"\r\[1/1\] tests/test_calc\.py::test_add: fixed in 1 attempt[^\r]*\n", out)
    assert out.rstrip().splitlines()[-1] == "pytest-agentic: 1 of 1 failure fixed — exit 0"


def test_parallel_workers_name_their_failure_and_never_mix_lines() -> None:
    written: list[str] = []
    progress = LiveProgress(written.append, parallel=True)

    def worker(index: int) -> None:
        for _ in range(200):
            progress(
                "tool",
                nodeid=f"tests/test_{index}.py::test_it",
                index=index,
                total=4,
                name="str_replace_based_edit_tool",
                input={"command": "view", "path": f"src/m{index}.py"},
                result="",
                is_error=False,
            )

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(written) == 800
    for line in written:
        index = re.match(r"\[(\d)/4\] ", line).group(1)  # type: ignore[union-attr]
        assert line == f"[{index}/4] tests/test_{index}.py::test_it   view src/m{index}.py\n"


def test_progress_never_breaks_the_run_on_odd_events() -> None:
    written: list[str] = []
    progress = LiveProgress(written.append)
    progress("tool", name="str_replace_based_edit_tool", input="not a dict", result=None)
    progress("verdict", attempts="many")  # a bad field: dropped, no exception
    progress("some-future-event", anything=1)
    assert written == ["[-]   editor ?\n"]


@pytest.mark.parametrize(
    ("name", "params", "result", "is_error", "expected"),
    [
        (
            "str_replace_based_edit_tool",
            {"command": "view", "path": "src/a.py"},
            "1\tx",
            False,
            "view src/a.py",
        ),
        (
            "str_replace_based_edit_tool",
            {"command": "insert", "path": "src/a.py"},
            "ok",
            False,
            "edit src/a.py",
        ),
        (
            "str_replace_based_edit_tool",
            {"command": "create", "path": "b.py"},
            "ok",
            False,
            "create b.py",
        ),
        (
            "str_replace_based_edit_tool",
            {"command": "str_replace", "path": "a.py"},
            "a.py: `old_str` occurs 0 times; it must occur exactly once",
            True,
            "edit a.py failed: a.py: `old_str` occurs 0 times; it must occur exactly once",
        ),
        (
            "str_replace_based_edit_tool",
            {"command": "create", "path": "tests/x.py"},
            "refused: tests/x.py: protected (matches the `protected` globs). The file was not "
            "changed.",
            True,
            "refused tests/x.py: protected",
        ),
        ("run_tests", {}, "Still failing.\nF\n1 failed in 0.03s\n", False, "run_tests → 1 failed"),
        (
            "run_tests",
            {},
            "All 1 test(s) passed.\n.\n1 passed, 1 warning in 0.01s",
            False,
            "run_tests → 1 passed, 1 warning",
        ),
        (
            "give_up",
            {"reason": "the test is wrong\nsecond line"},
            "ok",
            False,
            "give_up: the test is wrong",
        ),
    ],
)
def test_tool_calls_in_a_few_words(
    name: str, params: dict[str, object], result: str, is_error: bool, expected: str
) -> None:
    assert tool_summary(name, params, result, is_error) == expected


def test_refusals_are_read_from_the_policy_wording() -> None:
    assert parse_refusal(
        "refused: ../x.py: outside the project root. The file was not changed.", {"path": "../x.py"}
    ) == ("../x.py", "outside the project root")
    assert parse_refusal("Edited calc.py.", {"path": "calc.py"}) is None
    assert parse_refusal("refused: .env: unreadable (secrets)", {"path": ".env"}) == (
        ".env",
        "unreadable (secrets)",
    )
    assert parse_refusal("refused: ValueError: embedded null byte", {"path": "a\0b"}) == (
        "a\0b",
        "ValueError: embedded null byte",
    )


def test_progress_comes_before_the_failures_section_not_after_minutes_of_silence(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    """The first lines are on screen while the model is still thinking."""
    from fake_anthropic import Delay

    (project / "tests/test_more.py").unlink()
    fake_anthropic.reply(Delay(4, message(FIX)), done())
    out_path = project / "out.txt"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "--agent-fix", "-p", "no:cacheprovider"],
            cwd=project,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        start = time.monotonic()
        while not fake_anthropic.requests and time.monotonic() - start < 60:
            time.sleep(0.05)
        time.sleep(0.5)
        seen = out_path.read_text()
        proc.wait(timeout=120)
    assert "[1/1] tests/test_calc.py::test_add attempt 1/3" in seen
    assert "FAILURES" not in seen


def test_the_last_line_states_the_exit_status_the_shell_sees(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    """pytest's `--max-warnings` changes the exit status after every plugin's
    `pytest_sessionfinish`; the last line and the report follow it."""
    pytester.makepyprojecttoml('[tool.pytest.ini_options]\npythonpath = ["."]\n')
    (project / "tests/test_more.py").write_text(
        "import warnings\n\n\ndef test_warns():\n    warnings.warn(UserWarning('x'))\n"
    )
    fake_anthropic.reply(message(FIX), done())
    result = pytester.runpytest(
        "--agent-fix", NO_REVIEW, "--max-warnings", "0", "-W", "default::UserWarning"
    )
    assert result.ret not in (0, 1)
    assert result.stdout.lines[-1] == (
        f"pytest-agentic: 1 of 1 failure fixed — exit {int(result.ret)}"
    )
    (report,) = project.glob(".agentic/runs/*/report.json")
    assert json.loads(report.read_text())["exit_status"] == int(result.ret)


def test_failures_of_one_cause_read_fixed_by_the_fix_for_the_first(
    pytester: pytest.Pytester, fake_anthropic: FakeAnthropic
) -> None:
    """The issue's 29 failures of one root cause: one conversation, one fix, and the others
    say whose fix repaired them (not "fixed in 0 attempts")."""
    pytester.makepyprojecttoml(PYPROJECT)
    (pytester.path / "halve.py").write_text("def half(x):\n    return x / 0\n")
    pytester.makepyfile(
        test_half="""
        from halve import half

        def test_one():
            assert half(2) == 1

        def test_two():
            assert half(4) == 2

        def test_three():
            assert half(6) == 3
        """
    )
    fake_anthropic.reply(message(edit("halve.py", "x / 0", "x / 2")), done())
    result = pytester.runpytest("--agent-fix", NO_REVIEW)
    assert result.ret == 0
    assert len(fake_anthropic.requests) == 2  # one conversation for the three
    lines = result.stdout.lines
    section = lines.index(next(x for x in lines if "= pytest-agentic fix =" in x))
    assert lines[section + 1 : section + 4] == [
        "fixed in 1 attempt: test_half.py::test_one",
        "fixed by the fix for test_half.py::test_one: test_half.py::test_two",
        "fixed by the fix for test_half.py::test_one: test_half.py::test_three",
    ]
    assert lines[-1] == "pytest-agentic: 3 of 3 failures fixed — exit 0"
    result.stdout.fnmatch_lines(
        [
            "[[]1/1] test_half.py::test_one: fixed in 1 attempt · *",
            "[[]1/1] test_half.py::test_two: fixed by the fix for test_half.py::test_one",
        ]
    )
    assert "fixed in 0 attempts" not in result.stdout.str()


def test_with_parallel_workers_every_line_names_its_failure(
    pytester: pytest.Pytester, fake_anthropic: FakeAnthropic
) -> None:
    pytester.makepyprojecttoml(PYPROJECT)
    (pytester.path / "calc.py").write_text(CALC)
    (pytester.path / "text.py").write_text("def shout(s):\n    return s.lower()\n")
    pytester.makepyfile(
        test_calc=TEST_CALC,
        test_text="from text import shout\n\n\ndef test_shout():\n    assert shout('a') == 'A'\n",
    )

    def reply(request: Any) -> Any:
        # Workers ask at the same time, in any order: answer by what the request is about.
        if len(request.body["messages"]) > 1:
            return done()
        prompt = request.body["messages"][0]["content"][0]["text"]
        if "test_shout" in prompt:
            return message(edit("text.py", "s.lower()", "s.upper()"))
        return message(FIX)

    fake_anthropic.reply(*[reply] * 8)
    result = pytester.runpytest("--agent-fix", NO_REVIEW, "--agent-workers", "2")
    assert result.ret == 0
    ours = [x for x in result.stdout.lines if x.startswith("[")]
    assert ours, result.stdout.str()
    for line in ours:
        assert re.match(r"\[[12]/2\] test_(calc\.py::test_add|text\.py::test_shout)\b", line), line
    result.stdout.fnmatch_lines_random(
        [
            "[[]?/2] test_calc.py::test_add   edit calc.py",
            "[[]?/2] test_text.py::test_shout   edit text.py",
            "[[]?/2] test_calc.py::test_add: fixed in 1 attempt*",
            "[[]?/2] test_text.py::test_shout: fixed in 1 attempt*",
        ]
    )
