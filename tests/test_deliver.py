"""What a person does with a fix run: the markdown report, CI summaries, transcripts as text,
`apply` for a dry run's patches, `--agent-commit`, `--version` and init's pre-push hint."""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest

from fake_anthropic import FakeAnthropic, done, edit, message, text, tool_use
from pytest_agentic.cli import main
from pytest_agentic.report import RunReport

# The reviewer (issue 9) is on by default and has its own tests (test_gate.py); the runs
# here are about other behaviour, so they leave it out rather than interleave a scripted
# review with every conversation.
NO_REVIEW = "--no-agent-review"

PYPROJECT = '[tool.pytest.ini_options]\npythonpath = ["."]\nfilterwarnings = ["error"]\n'
CALC = "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n"
TEST_CALC = (
    "from calc import add, mul\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\n"
    "def test_weird():\n    assert mul(2, 2) == 5\n"
)
FIX = edit("calc.py", "return a - b", "return a + b")
HOSTILE_QUESTION = "@octocat should ![img](http://evil.example/a.png) <b>x</b> be 5?"


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    pytester.makepyprojecttoml(PYPROJECT)
    (pytester.path / "calc.py").write_text(CALC)
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_calc.py").write_text(TEST_CALC)
    monkeypatch.chdir(pytester.path)
    return pytester.path


def run_dir(root: Path) -> Path:
    (report,) = root.glob(".agentic/runs/*/report.json")
    return report.parent


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_markdown_report_step_summary_and_transcript(
    pytester: pytest.Pytester,
    project: Path,
    fake_anthropic: FakeAnthropic,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    summary = tmp_path / "step-summary.md"
    summary.write_text("# an earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    give_up = tool_use(
        "give_up", reason="2*2 is 4 | `the test` is wrong", question=HOSTILE_QUESTION
    )
    fake_anthropic.reply(message(text("Subtraction, not addition."), FIX), done(), message(give_up))
    # One worker: the scripted replies are consumed in order.
    result = pytester.runpytest("--agent-fix", NO_REVIEW, "--agent-workers", "1")
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "not fixed (the agent gave up: 2*2 is 4 | `the test` is wrong): *test_weird",
            f"    the agent asks: {HOSTILE_QUESTION}",
        ]
    )

    # $GITHUB_STEP_SUMMARY: appended to, never overwritten.
    written = summary.read_text()
    assert written.startswith("# an earlier step\n## pytest-agentic: 1 of 2 failures fixed")
    body = written.removeprefix("# an earlier step\n")
    lines = body.splitlines()
    assert lines[0] == "## pytest-agentic: 1 of 2 failures fixed, 1 not fixed — exit 1"
    assert "| failure | verdict | attempts | tokens | cost |" in lines
    row = next(line for line in lines if line.startswith("| `tests/test_calc.py::test_add`"))
    assert "| fixed in 1 attempt | 1 |" in row and "| $0.0" in row
    diff = body.split("```diff\n", 1)[1].split("```", 1)[0]
    assert "--- a/calc.py\n+++ b/calc.py\n" in diff
    assert "-    return a - b\n+    return a + b\n \n \n def mul(a, b):\n```" in body
    # Model-written text is inert in a PR body: no mention, image, link or HTML.
    assert "@octocat" not in body.replace("\\@octocat", "")
    assert "![img](" not in body and "<b>" not in body
    assert "\\@octocat should \\!\\[img\\](http://evil.example/a.png) &lt;b&gt;x&lt;/b&gt;" in body

    # The same markdown from the command line, for a pull request body.
    status, out, _ = cli(capsys, "report", "--format", "markdown")
    assert status == 0
    assert out == body.removesuffix("\n")  # the step summary ends with an extra blank line
    data = json.loads((run_dir(project) / "report.json").read_text())
    weird = next(f for f in data["failures"] if f["nodeid"].endswith("test_weird"))
    assert weird["question"] == HOSTILE_QUESTION
    assert data["exit_status"] == 1

    # A transcript as readable text.
    status, out, _ = cli(capsys, "report", "--transcript", "test_add")
    assert status == 0
    assert out.splitlines()[0].startswith("=== tests/test_calc.py::test_add: ")
    assert "--- user\nFix the code so that these failing tests pass" in out
    assert "--- assistant\nSubtraction, not addition.\n→ edit calc.py: 1 line(s) → 1 line(s)" in out
    assert "← edit calc.py\n   Edited calc.py." in out
    status, _, err = cli(capsys, "report", "--transcript", "tests/test_calc.py")
    assert status == 2
    assert err.strip() == (
        "pytest-agentic: error: tests/test_calc.py: matches several failures; the run's "
        "failures: tests/test_calc.py::test_add, tests/test_calc.py::test_weird"
    )

    # This run was not a dry run: there is nothing to apply.
    status, _, err = cli(capsys, "apply")
    assert status == 1
    assert f"{run_dir(project).name}: not a dry run" in err


def test_markdown_diffs_are_cut_to_fit_a_pull_request_body(tmp_path: Path) -> None:
    from pytest_agentic.report import Outcome

    (tmp_path / "01-big.patch").write_text("".join(f"+line {i} ```\n" for i in range(20000)))
    report = RunReport(
        outcomes=[Outcome("t.py::test_big", "fixed", 1, ("big.py",), patch="01-big.patch")],
        model="claude-sonnet-4-6",
        run_dir=tmp_path,
        exit_status=0,
    )
    body = report.markdown()
    assert len(body) < 65_536
    assert "````diff\n+line 0 ```\n" in body  # a fence longer than any backtick run inside
    assert "diff cut to fit; the whole patch is `01-big.patch`" in body
    many = RunReport(
        outcomes=[Outcome(f"t.py::test_{i}", "not_fixed", 3, (), "x" * 200) for i in range(2000)],
        run_dir=tmp_path,
    )
    body = many.markdown()
    assert len(body) < 65_536
    assert "more failures not listed; the whole report: `pytest-agentic report`" in body
    assert body.endswith("(patches and transcripts)\n")  # the footer survives


def test_apply_a_dry_run_clean_conflicting_and_twice(
    pytester: pytest.Pytester,
    project: Path,
    fake_anthropic: FakeAnthropic,
    git: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    (project / "tests/test_calc.py").write_text(TEST_CALC.split("\n\n\ndef test_weird")[0] + "\n")
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "base")
    fake_anthropic.reply(message(FIX), done())
    assert pytester.runpytest("--agent-fix", NO_REVIEW, "--agent-dry-run").ret == 0
    assert (project / "calc.py").read_text() == CALC
    (patch,) = run_dir(project).glob("*.patch")

    # The user changed the same line since: refused, one line per file, nothing changed.
    mine = CALC.replace("return a - b", "return b - a")
    (project / "calc.py").write_text(mine)
    status, out, err = cli(capsys, "apply")
    assert status == 1 and out == ""
    assert err.splitlines() == [
        f"{patch.name}: calc.py: patch does not apply",
        "nothing was applied",
    ]
    assert (project / "calc.py").read_text() == mine

    (project / "calc.py").write_text(CALC)
    status, out, _ = cli(capsys, "apply", run_dir(project).name)
    assert status == 0
    assert out.splitlines() == [f"applied {patch.name} (calc.py)"]
    assert (project / "calc.py").read_text() == CALC.replace("a - b", "a + b")

    status, _, err = cli(capsys, "apply")
    assert status == 1
    assert err.splitlines() == [f"{patch.name}: already applied", "nothing was applied"]

    status, _, err = cli(capsys, "apply", "no-such-run")
    assert status == 2
    assert "no-such-run: no fix run there (no report.json)" in err


TEXT = "def shout(s):\n    return s.lower()\n"
TEST_TEXT = "from text import shout\n\n\ndef test_shout():\n    assert shout('a') == 'A'\n"


def test_agent_commit_makes_one_commit_per_fix_with_only_its_files(
    pytester: pytest.Pytester,
    project: Path,
    fake_anthropic: FakeAnthropic,
    git: Callable[..., str],
) -> None:
    (project / "tests/test_calc.py").write_text(TEST_CALC.split("\n\n\ndef test_weird")[0] + "\n")
    (project / "text.py").write_text(TEXT)
    (project / "tests/test_text.py").write_text(TEST_TEXT)
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "base")
    base = git(project, "rev-parse", "HEAD").strip()
    # The user's own work: an unstaged edit in the very file the fix changes, an untracked file.
    (project / "calc.py").write_text(CALC + "\n\n# my note, not committed yet\n")
    (project / "notes.txt").write_text("mine\n")
    fake_anthropic.reply(
        message(FIX), done(), message(edit("text.py", "s.lower()", "s.upper()")), done()
    )
    # One worker: the scripted replies are consumed in order.
    result = pytester.runpytest("--agent-fix", NO_REVIEW, "--agent-workers", "1", "--agent-commit")
    assert result.ret == 0
    log = git(project, "log", "--format=%H %s", f"{base}..HEAD").splitlines()
    assert [line.split(" ", 1)[1] for line in log] == [
        "Fix tests/test_text.py::test_shout",
        "Fix tests/test_calc.py::test_add",
    ]
    newest, older = (line.split()[0] for line in log)
    assert git(project, "show", "--format=", "--name-only", older).split() == ["calc.py"]
    assert git(project, "show", "--format=", "--name-only", newest).split() == ["text.py"]
    assert git(project, "show", f"{older}:calc.py") == CALC.replace("a - b", "a + b")
    body = git(project, "show", "-s", "--format=%b", older)
    assert "re-running tests/test_calc.py::test_add: it passes (attempt 1 of 3" in body
    # The user's note is still theirs: in the tree, unstaged; notes.txt untracked.
    assert (project / "calc.py").read_text().endswith("# my note, not committed yet\n")
    assert git(project, "status", "--porcelain").splitlines() == [
        " M calc.py",
        "?? .agentic/",
        "?? notes.txt",
    ]
    added = [x for x in git(project, "diff").splitlines() if x.startswith("+")]
    assert added == ["+++ b/calc.py", "+", "+", "+# my note, not committed yet"]
    failures = {
        f["nodeid"]: f
        for f in json.loads((run_dir(project) / "report.json").read_text())["failures"]
    }
    assert failures["tests/test_calc.py::test_add"]["commit"] == older
    result.stdout.fnmatch_lines(
        ["fixed in 1 attempt: tests/test_calc.py::test_add", f"    committed as {older[:12]}"]
    )


def test_agent_commit_is_refused_before_tests_run(
    pytester: pytest.Pytester,
    project: Path,
    fake_anthropic: FakeAnthropic,
    git: Callable[..., str],
) -> None:
    result = pytester.runpytest("--agent-fix", "--agent-commit")
    assert result.ret == 4
    assert "--agent-commit: " in result.stderr.str() and "is not inside a git repository" in (
        result.stderr.str()
    )
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "base")
    (project / "notes.txt").write_text("staged by the user\n")
    git(project, "add", "notes.txt")
    result = pytester.runpytest("--agent-fix", "--agent-commit")
    assert result.ret == 4
    result.stderr.fnmatch_lines(
        [
            "ERROR: --agent-commit: the index already holds staged changes (notes.txt); commit "
            "or unstage them first (`git restore --staged .`), so each fix is a commit of its own"
        ]
    )
    assert "passed" not in result.stdout.str() and "failed" not in result.stdout.str()
    git(project, "reset", "-q")
    result = pytester.runpytest("--agent-fix", "--agent-commit", "--agent-dry-run")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["ERROR: --agent-commit and --agent-dry-run contradict*"])
    assert fake_anthropic.requests == []
    assert git(project, "diff", "--cached", "--name-only") == ""


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"pytest-agentic {version('pytest-agentic')}\n"


def test_init_says_to_install_the_pre_push_hook(
    git_repo: Callable[..., Path],
    git: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = git_repo({"pyproject.toml": '[project]\nname = "demo"\n', "demo.py": "x = 1\n"})
    monkeypatch.chdir(root)
    status, out, _ = cli(capsys, "init")
    assert status == 0
    hint = (
        "agentic-scope also runs at pre-push: run `pre-commit install --hook-type pre-push` "
        "to install that hook"
    )
    assert out.splitlines()[-1] == hint
    hooks = Path(git(root, "rev-parse", "--git-path", "hooks").strip())
    (root / hooks / "pre-push").write_text("#!/bin/sh\n# File generated by pre-commit\n")
    status, out, _ = cli(capsys, "init")
    assert status == 0 and hint not in out


def write_run(root: Path, patch: str, *, dry_run: bool = True) -> Path:
    """A run folder as a dry run leaves it: report.json naming one kept fix and its patch."""
    from pytest_agentic.report import Outcome, write_report

    folder = root / ".agentic/runs/20260101-000000"
    folder.mkdir(parents=True)
    (folder / "01-t.patch").write_text(patch)
    outcome = Outcome("t.py::test_x", "fixed", 1, ("calc.py",), patch="01-t.patch")
    write_report(RunReport(outcomes=[outcome], dry_run=dry_run), [folder / "report.json"])
    return folder


PATCH = "".join(
    difflib.unified_diff(
        CALC.splitlines(True),
        CALC.replace("a - b", "a + b").splitlines(True),
        "a/calc.py",
        "b/calc.py",
    )
)


def test_apply_and_commit_when_the_project_is_a_subfolder_of_the_repository(
    git_repo: Callable[..., Path], git: Callable[..., str]
) -> None:
    from pytest_agentic.deliver import apply_run, commit_fix

    top = git_repo({"sub/pyproject.toml": "", "sub/calc.py": CALC, "other.py": "x = 1\n"})
    root = top / "sub"
    applied, problems = apply_run(root, write_run(root, PATCH))
    assert problems == [] and applied == ["applied 01-t.patch (calc.py)"]
    assert (root / "calc.py").read_text() == CALC.replace("a - b", "a + b")
    sha = commit_fix(root, "t.py::test_x", PATCH, ["calc.py"], "body")
    assert git(top, "show", "--format=%s", "--name-only", sha).split() == [
        "Fix",
        "t.py::test_x",
        "sub/calc.py",
    ]
    assert git(top, "status", "--porcelain") == "?? sub/.agentic/\n"


def test_apply_refuses_a_tampered_patch_that_leaves_the_project(
    git_repo: Callable[..., Path], tmp_path: Path
) -> None:
    from pytest_agentic.deliver import apply_run

    root = git_repo({"calc.py": CALC})
    evil = "--- /dev/null\n+++ b/../escaped.py\n@@ -0,0 +1 @@\n+print('hi')\n"
    applied, problems = apply_run(root, write_run(root, evil))
    assert applied == [] and len(problems) == 1 and problems[0].startswith("01-t.patch: ")
    assert not (root.parent / "escaped.py").exists()
    assert not list(tmp_path.rglob("escaped.py"))


def test_a_step_summary_that_cannot_be_written_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_agentic.deliver import append_step_summary

    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path))  # a folder, not a file
    problem = append_step_summary(RunReport(model="claude-sonnet-4-6"))
    assert problem == f"$GITHUB_STEP_SUMMARY: cannot append to {tmp_path}: Is a directory"
    monkeypatch.delenv("GITHUB_STEP_SUMMARY")
    assert append_step_summary(RunReport()) is None


def test_a_transcript_reads_as_text_and_long_results_are_cut() -> None:
    from pytest_agentic.report import render_transcript

    view = {"command": "view", "path": "calc.py"}
    attack = {"command": "create", "path": "tests/t.py", "file_text": "x"}
    transcript = [
        {"role": "user", "content": [{"type": "text", "text": "Fix it:\n- t.py::test_a"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Looking."},
                {
                    "type": "tool_use",
                    "id": "1",
                    "name": "str_replace_based_edit_tool",
                    "input": view,
                },
                {
                    "type": "tool_use",
                    "id": "2",
                    "name": "str_replace_based_edit_tool",
                    "input": attack,
                },
                {"type": "tool_use", "id": "3", "name": "run_tests", "input": {}},
                "junk",
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "1",
                    "content": "\n".join(f"{n:6}\tline {n}" for n in range(1, 3000)),
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "2",
                    "content": "refused: tests/t.py: protected (x). The file was not changed.",
                    "is_error": True,
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "3",
                    "content": "Still failing.\n1 failed in 0.1s",
                },
            ],
        },
        None,
    ]
    text = render_transcript(transcript)
    assert text.splitlines()[:7] == [
        "--- user",
        "Fix it:",
        "- t.py::test_a",
        "--- assistant",
        "Looking.",
        "→ view calc.py",
        "→ create tests/t.py",
    ]
    assert "→ run_tests\n" in text
    assert "← view calc.py\n        1\tline 1\n" in text
    assert "line 9\n" not in text and "[... " in text  # cut after 8 lines
    assert "← refused tests/t.py: protected\n   refused: tests/t.py" in text
    assert "← run_tests → 1 failed\n" in text
