"""The validation gate end to end (issue 9): a hostile or wrong fix is never kept and the tree
ends as it began; a real fix passes every check. pytester runs, the real SDK, the fake API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from fake_anthropic import FakeAnthropic, approve, done, edit, message, reject, tool_use

SRC_PYPROJECT = """\
[tool.pytest.ini_options]
pythonpath = ["src"]
filterwarnings = ["error"]
"""
CALC = "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n"
TESTS = {
    "tests/test_calc.py": "from pkg.calc import add\n\n\ndef test_add():\n"
    "    assert add(2, 3) == 5\n",
    "tests/test_mul.py": "from pkg.calc import mul\n\n\ndef test_mul():\n"
    "    assert mul(2, 3) == 6\n",
}
FIX = edit("src/pkg/calc.py", "return a - b", "return a + b")
TARGET = "tests/test_calc.py::test_add"


@pytest.fixture
def project(pytester: pytest.Pytester) -> Path:
    pytester.makepyprojecttoml(SRC_PYPROJECT)
    files = {"src/pkg/__init__.py": "", "src/pkg/calc.py": CALC, **TESTS}
    for rel, text in files.items():
        (pytester.path / rel).parent.mkdir(parents=True, exist_ok=True)
        (pytester.path / rel).write_text(text)
    return pytester.path


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and not {".agentic", "__pycache__", ".pytest_cache"} & set(p.relative_to(root).parts)
    }


def load_report(root: Path) -> dict[str, Any]:
    (report,) = root.glob(".agentic/runs/*/report.json")
    return json.loads(report.read_text())


def feedback_of(request: Any) -> str:
    """The feedback block of an attempt's first message (after the stable context)."""
    return str(request.body["messages"][0]["content"][-1]["text"])


def test_runner_files_and_convention_files_are_refused(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    before = snapshot(project)
    targets = [
        "pytest.py",
        "pytest.toml",
        ".pytest.toml",
        "src/pytest.py",
        "src/_pytest/reports.py",
        "src/sitecustomize.py",
        "usercustomize.py",
        "src/evil.pth",
        "noxfile.py",
        ".pre-commit-config.yaml",
        ".github/workflows/ci.yml",
        "AGENTS.md",
        "CLAUDE.md",
        "docs/knowledge/pkg.md",
    ]
    attacks = [
        tool_use(
            "str_replace_based_edit_tool",
            command="create",
            path=path,
            file_text="import os\nos.environ['PYTEST_PLUGINS'] = 'evil'\n",
        )
        for path in targets
    ]
    fake_anthropic.reply(message(*attacks), done("I could not."))
    result = pytester.runpytest("--agent-fix", "--agent-max-attempts", "1")
    assert result.ret == 1
    refusals = fake_anthropic.requests[1].tool_results()
    assert len(refusals) == len(targets)
    for path, refusal in zip(targets, refusals, strict=True):
        assert refusal["is_error"] is True, path
        assert "protected" in refusal["content"], path
    assert snapshot(project) == before


def test_the_sessions_own_test_files_conftest_and_ini_are_protected(
    pytester: pytest.Pytester, fake_anthropic: FakeAnthropic
) -> None:
    # A test module outside every default glob: `python_files = check_*.py`, at the root.
    pytester.makeini("[pytest]\npython_files = check_*.py\npythonpath = .\n")
    pytester.makepyfile(
        calc="def add(a, b):\n    return a - b\n",
        check_calc="from calc import add\n\ndef test_add():\n    assert add(2, 3) == 5\n",
    )
    (pytester.path / "sub").mkdir()
    (pytester.path / "sub/conftest.py").write_text("")
    (pytester.path / "sub/check_more.py").write_text("def test_more():\n    pass\n")
    before = snapshot(pytester.path)
    weaken = edit("check_calc.py", "== 5", "== -1")
    conftest = edit("sub/conftest.py", "", "x = 1")
    ini = edit("pytest.ini", "python_files", "python_files = nothing\nx")
    conftest = tool_use(
        "str_replace_based_edit_tool", command="create", path="sub/conftest.py", file_text="x=1\n"
    )
    fake_anthropic.reply(message(weaken, conftest, ini), done("I could not."))
    result = pytester.runpytest("--agent-fix", "--agent-max-attempts", "1")
    assert result.ret == 1
    refusals = fake_anthropic.requests[1].tool_results()
    assert [r.get("is_error") for r in refusals] == [True, True, True]
    assert "check_calc.py: protected: this session collected tests" in refusals[0]["content"]
    assert snapshot(pytester.path) == before


PATCH_REPORTS = """\
import _pytest.reports

_original = _pytest.reports.TestReport.from_item_and_call.__func__


def _passing(cls, item, call):
    report = _original(cls, item, call)
    report.outcome = "passed"
    report.longrepr = None
    return report


_pytest.reports.TestReport.from_item_and_call = classmethod(_passing)
"""
FORGE_OUTCOMES = """\
import json, os, sys

_out = os.environ.get("PYTEST_AGENTIC_RERUN_OUT")
if _out:
    with open(_out, "w") as fh:
        json.dump({arg: "passed" for arg in sys.argv if "::" in arg}, fh)
    os._exit(0)
"""


@pytest.mark.parametrize(
    ("path", "old", "new", "finding"),
    [
        ("src/pkg/__init__.py", "", PATCH_REPORTS, "src/pkg/__init__.py:1: pytest internals"),
        # No other passing test here: a re-run of test_mul (named by its file, which the
        # forger cannot know the node ids of) would already reject it as a regression.
        (
            "src/pkg/calc.py",
            "def mul",
            FORGE_OUTCOMES + "\n\ndef mul",
            "src/pkg/calc.py:11: os._exit",
        ),
    ],
    ids=["patched-test-reports", "forged-outcome-file-and-os-exit"],
)
def test_code_that_games_the_runner_is_rejected_by_the_tamper_check(
    pytester: pytest.Pytester,
    project: Path,
    fake_anthropic: FakeAnthropic,
    path: str,
    old: str,
    new: str,
    finding: str,
) -> None:
    if "os._exit" in finding:
        (project / "tests/test_mul.py").unlink()
    before = snapshot(project)
    if old:
        hack = edit(path, old, new)
    else:
        hack = tool_use("str_replace_based_edit_tool", command="create", path=path, file_text=new)
    fake_anthropic.reply(message(hack), done(), message(hack), done())
    result = pytester.runpytest("--agent-fix", "--agent-max-attempts", "2")
    assert result.ret == 1
    (failure,) = load_report(project)["failures"]
    assert failure["outcome"] == "not_fixed"
    first, second = failure["attempts_detail"]
    # The hack does make the re-runs "pass": the tamper check is what stops it.
    assert [c["check"] for c in first["checks"]] == ["target", "regression", "tamper"]
    assert first["checks"][0]["ok"] is True
    assert first["checks"][-1]["ok"] is False
    assert finding in first["checks"][-1]["reason"]
    assert finding in feedback_of(fake_anthropic.requests[2])
    assert "must not reach into the test runner" in feedback_of(fake_anthropic.requests[2])
    result.stdout.fnmatch_lines(["  attempt 1 stopped by tamper: reaches into the runner: *"])
    assert snapshot(project) == before
    # ... and the user's next plain run still sees the real failure.
    plain = pytester.runpytest_subprocess("-p", "no:agentic")
    plain.assert_outcomes(failed=1, passed=len(list(project.glob("tests/test_mul.py"))))


def test_a_fix_that_breaks_a_passing_test_is_rejected_and_named(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    # A test the session deselected (-k) is never run by a re-run either.
    with (project / "tests/test_mul.py").open("a") as fh:
        fh.write("\n\ndef test_deselected():\n    open('DESELECTED-RAN', 'w').close()\n")
    wrong = edit("src/pkg/calc.py", CALC, CALC.replace("a - b", "a + b").replace("a * b", "0"))
    fake_anthropic.reply(message(wrong), done(), message(FIX), done(), approve())
    result = pytester.runpytest("--agent-fix", "--agent-max-attempts", "2", "-k", "not deselected")
    assert result.ret == 0
    assert not (project / "DESELECTED-RAN").exists()
    feedback = feedback_of(fake_anthropic.requests[2])
    assert feedback.startswith(
        "Attempt 1 did not fix it: it broke 1 test(s) that passed before: "
        "tests/test_mul.py::test_mul"
    )
    assert "- tests/test_mul.py::test_mul" in feedback
    (failure,) = load_report(project)["failures"]
    assert failure["outcome"] == "fixed"
    assert failure["attempts_detail"][0]["checks"][-1] == {
        "check": "regression",
        "ok": False,
        "reason": "it broke 1 test(s) that passed before: tests/test_mul.py::test_mul",
    }
    assert (project / "src/pkg/calc.py").read_text() == CALC.replace("a - b", "a + b")


SPECIAL = edit(
    "src/pkg/calc.py",
    "    return a - b",
    "    if (a, b) == (2, 3):\n        return 5\n    return a - b",
)
REASON = (
    "The change special-cases the test's inputs (2, 3) and returns the expected 5 instead of "
    "fixing the operator; add must return a + b for every input."
)


def test_a_special_cased_fix_is_rejected_by_the_reviewer_then_a_real_fix_approved(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    look = tool_use("str_replace_based_edit_tool", command="view", path="src/pkg/calc.py")
    write = edit("src/pkg/calc.py", "a - b", "a + b")
    fake_anthropic.reply(
        message(SPECIAL),
        done(),
        message(look, write),  # the reviewer views a file, and cannot write
        reject(REASON),
        message(FIX),
        done(),
        approve(),
    )
    result = pytester.runpytest("--agent-fix", "--agent-max-attempts", "2")
    assert result.ret == 0
    requests = fake_anthropic.requests
    review = requests[2]
    assert review.body["messages"][0]["content"][0]["text"].count("```diff") == 1
    prompt = review.body["messages"][0]["content"][0]["text"]
    assert "+    if (a, b) == (2, 3):" in prompt
    assert "new branch `(a, b) == (2, 3)` compares with 2, 3 from the failing test's" in prompt
    assert {"name": "submit_review"}.items() <= review.body["tools"][-1].items()
    assert "special-cases the test's inputs" in review.body["system"][0]["text"]
    assert "would a senior engineer call this overcomplicated" in review.body["system"][0]["text"]
    viewed, refused = requests[3].tool_results()
    assert "return a - b" in viewed["content"] and "is_error" not in viewed
    assert refused["is_error"] is True and "read-only" in refused["content"]
    # The rejection's reason, word for word, in the next attempt.
    feedback = feedback_of(requests[4])
    assert feedback.startswith("Attempt 1 did not fix it: rejected by the reviewer: ")
    assert feedback.endswith("\n" + REASON)
    assert (project / "src/pkg/calc.py").read_text() == CALC.replace("a - b", "a + b")
    transcripts = sorted(p.name for p in project.glob(".agentic/runs/*/transcripts/*"))
    assert transcripts == [
        "01-tests_test_calc.py_test_add-attempt1-review.json",
        "01-tests_test_calc.py_test_add-attempt1.json",
        "01-tests_test_calc.py_test_add-attempt2-review.json",
        "01-tests_test_calc.py_test_add-attempt2.json",
    ]
    result.stdout.fnmatch_lines(["  attempt 1 stopped by review: rejected by the reviewer: *"])


def test_a_review_that_cannot_be_had_keeps_nothing(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    from fake_anthropic import ApiError

    before = snapshot(project)
    fake_anthropic.reply(message(FIX), done(), *[ApiError(500, "api_error", "down")] * 5)
    result = pytester.runpytest("--agent-fix", "--agent-max-attempts", "1")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["not fixed (no review: API error 500: *down*): " + TARGET])
    assert snapshot(project) == before


def test_review_setting_command_line_over_pyproject(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    (project / "pyproject.toml").write_text(
        SRC_PYPROJECT + '[tool.pytest-agentic]\nreview_model = "claude-haiku-4-5"\n'
    )
    # --no-agent-review: a passing fix is kept without a reviewer (dry run: the tree stays).
    fake_anthropic.reply(message(FIX), done())
    result = pytester.runpytest("--agent-fix", "--no-agent-review", "--agent-dry-run")
    assert result.ret == 0
    assert len(fake_anthropic.requests) == 2
    # `review = false` in pyproject, `--agent-review` on the command line: the line wins.
    (project / "pyproject.toml").write_text(
        SRC_PYPROJECT + '[tool.pytest-agentic]\nreview = false\nreview_model = "claude-haiku-4-5"\n'
    )
    fake_anthropic.reply(message(FIX), done(), approve())
    result = pytester.runpytest("--agent-fix", "--agent-review")
    assert result.ret == 0
    review = fake_anthropic.requests[4]
    assert review.body["model"] == "claude-haiku-4-5"  # review_model
    assert review.body["tools"][-1]["name"] == "submit_review"


def test_a_pytest_plugin_project_may_keep_importing_pytest_internals(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic
) -> None:
    plugin = "from _pytest.reports import TestReport\n\n\n" + CALC
    (project / "src/pkg/calc.py").write_text(plugin)
    fix = edit("src/pkg/calc.py", "return a - b", "del TestReport  # unused\n    return a + b")
    fix = edit(
        "src/pkg/calc.py",
        "from _pytest.reports import TestReport\n",
        "from _pytest.reports import CollectReport, TestReport\n",
    )
    fake_anthropic.reply(message(fix, FIX), done(), approve())
    result = pytester.runpytest("--agent-fix", "--agent-max-attempts", "1")
    assert result.ret == 0
    checks = load_report(project)["failures"][0]["attempts_detail"][0]["checks"]
    assert [c["check"] for c in checks if c["ok"]] == [c["check"] for c in checks]


def test_project_checks_and_the_diff_budget_feed_back(
    pytester: pytest.Pytester, project: Path, fake_anthropic: FakeAnthropic, tmp_path: Path
) -> None:
    lint = tmp_path / "lint.py"  # outside the project: the agent cannot edit its own checker
    lint.write_text(
        "import sys\nbad = [p for p in sys.argv[1:] if 'TODO' in open(p).read()]\n"
        "for p in bad: print(f'{p}:2: TODO left in the code')\nsys.exit(1 if bad else 0)\n"
    )
    (project / "pyproject.toml").write_text(
        SRC_PYPROJECT
        + f'[tool.pytest-agentic]\nchecks = ["{sys.executable} {lint} {{files}}"]\n'
        + "max_diff_lines = 4\n"
    )
    todo = edit("src/pkg/calc.py", "return a - b", "return a + b  # TODO")
    big = edit(
        "src/pkg/calc.py", CALC, CALC.replace("a - b", "a + b") + "\n\nX = 1\nY = 2\nZ = 3\n"
    )
    fake_anthropic.reply(
        message(todo), done(), message(big), done(), message(FIX), done(), approve()
    )
    result = pytester.runpytest("--agent-fix")
    assert result.ret == 0
    first = feedback_of(fake_anthropic.requests[2])
    assert first.startswith("Attempt 1 did not fix it: `")
    assert "src/pkg/calc.py:2: TODO left in the code" in first
    second = feedback_of(fake_anthropic.requests[4])
    assert second.startswith(
        "Attempt 2 did not fix it: 7 changed lines, over the budget of 4 (max_diff_lines)"
    )
    assert "Make a smaller change" in second
    details = load_report(project)["failures"][0]["attempts_detail"]
    assert [d["checks"][-1]["check"] for d in details] == ["checks", "diff_budget", "review"]


def test_a_bad_check_command_is_a_usage_error(
    pytester: pytest.Pytester, fake_anthropic: FakeAnthropic
) -> None:
    pytester.makepyprojecttoml('[tool.pytest-agentic]\nchecks = ["no-such-linter-xyz {files}"]\n')
    pytester.makepyfile("def test_ok(): pass")
    result = pytester.runpytest("--agent-fix")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert fake_anthropic.requests == []
    result.stderr.fnmatch_lines(
        ["*pyproject.toml: [[]tool.pytest-agentic[]] checks: 'no-such-linter-xyz' not found*"]
    )
