"""The fix session: collect failures, confirm them, run bounded attempts, verify, report.

Registered by `plugin.py` only with `--agent-fix` and only in the controller process (under
pytest-xdist the workers just run tests; their reports reach the controller). Importing this
module imports `anthropic` lazily, when the first failure is dispatched.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_agentic.agent import Conversation, Toolbox, Usage, converse
from pytest_agentic.report import (
    AttemptDetail,
    CheckResult,
    Outcome,
    RunReport,
    new_run_dir,
    write_patch,
    write_report,
    write_transcript,
)
from pytest_agentic.runner import RerunSettings, RunResult, run_tests
from pytest_agentic.scope import PathPolicy
from pytest_agentic.tasks import Task
from pytest_agentic.validate import (
    FileChange,
    Verdict,
    affected_tests,
    assertion_literals,
    compact,
    diff_budget,
    project_checks,
    regression,
    special_cases,
    tamper,
)
from pytest_agentic.workspace import Journal

CONTEXT_LINES = 12
MAX_FRAMES = 6
MAX_IMPORTED_LINES = 300


@dataclass(frozen=True)
class Settings:
    """The fix loop's settings, resolved command line -> [tool.pytest-agentic] -> default."""

    max_attempts: int
    model: str
    max_turns: int
    budget_tokens: int | None
    dry_run: bool
    report: Path | None
    rerun: RerunSettings
    protected: tuple[str, ...]
    task: Task | None
    api_timeout: float
    max_retries: int = 2
    review: bool = True
    review_model: str = ""
    max_diff_lines: int = 200
    checks: tuple[str, ...] = ()
    workers: str | None = None  # the session's `-n` under pytest-xdist, for the final run


@dataclass(frozen=True)
class Failure:
    """A failing test as pytest reported it: where it is and where it failed."""

    nodeid: str
    when: str
    report: str
    path: str | None = None
    lineno: int | None = None
    frames: tuple[tuple[str, int], ...] = ()


def failure_from_report(report: pytest.TestReport) -> Failure:
    frames: list[tuple[str, int]] = []
    longrepr = report.longrepr
    chain = getattr(longrepr, "chain", None)
    tracebacks = [element[0] for element in chain] if chain else []
    if not tracebacks and getattr(longrepr, "reprtraceback", None) is not None:
        tracebacks = [longrepr.reprtraceback]  # type: ignore[union-attr]
    for traceback in tracebacks:
        for entry in getattr(traceback, "reprentries", []):
            loc = getattr(entry, "reprfileloc", None)
            if loc is not None and isinstance(getattr(loc, "lineno", None), int):
                frames.append((str(loc.path), int(loc.lineno)))
    path, lineno, _ = report.location
    return Failure(
        nodeid=report.nodeid,
        when=report.when or "call",
        report=report.longreprtext,
        path=path,
        lineno=(lineno + 1) if isinstance(lineno, int) else None,
        frames=tuple(frames),
    )


@dataclass
class Progress:
    """What happened to one failure so far."""

    failure: Failure
    attempts: int = 0
    outcome: str = "not_fixed"
    reason: str = ""
    files: list[str] = field(default_factory=list)
    journal: Journal | None = None
    details: list[AttemptDetail] = field(default_factory=list)


class FixSession:
    """State across the whole session: failures seen, attempts made, tokens spent."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.root = Path(config.rootpath)
        self.failures: dict[str, Failure] = {}
        self.usage = Usage()
        self.report: RunReport | None = None
        self.rerun_seconds = 0.0
        self.passed: dict[str, None] = {}  # node ids that passed in the session, in order
        self.test_files: set[str] = set()  # files the session collected tests from
        self.reported_files: set[str] = set()  # the same, from node ids (xdist controller)
        self.partial_files: set[str] = set()  # files some of whose tests were deselected
        self._target_output = ""
        self._review_transcript: list[dict[str, Any]] = []

    def _run(self, nodeids: Sequence[str]) -> RunResult:
        result = run_tests(nodeids, self.settings.rerun)
        self.rerun_seconds += result.seconds
        return result

    # --- pytest hooks ---------------------------------------------------------------------

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            # A doctest's "test file" is the module under test: that one stays fixable.
            if type(item).__name__ == "DoctestItem" and item.path.suffix == ".py":
                continue
            rel = _rel_inside(self.root, str(item.path))
            if rel is not None:
                self.test_files.add(rel)

    def pytest_deselected(self, items: Sequence[pytest.Item]) -> None:
        for item in items:
            self.partial_files.add(_rel_inside(self.root, str(item.path)) or "")

    def _whole_files(self) -> set[str]:
        """Test files a re-run may name by path: the session ran every test collected from
        them (no `-k`/`-m`/`--deselect` took any away, no `file::test` argument chose some).
        Known only where collection happened (not in an xdist controller)."""
        if any("::" in arg for arg in self.config.invocation_params.args):
            return set()
        return self.test_files - self.partial_files

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Under xdist the controller collects nothing: the node ids name the test files.
        test_file = _collected_file(report.nodeid)
        if test_file is not None:
            self.reported_files.add(test_file)
        if report.failed:
            self.passed.pop(report.nodeid, None)
        elif report.when == "call" and report.passed and report.nodeid not in self.failures:
            self.passed[report.nodeid] = None
        if (
            report.failed
            and report.when in ("setup", "call")
            and report.nodeid not in self.failures
        ):
            self.failures[report.nodeid] = failure_from_report(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
            return  # interrupted, internal or usage errors, no tests: nothing to fix
        if not self.failures and self.settings.report is None:
            return
        with warnings.catch_warnings(), _sigterm_interrupts():
            # SDK warnings (a deprecated model name, an unclosed client) would become errors
            # in suites with `filterwarnings = error`; they are not the user's tests' business.
            warnings.simplefilter("ignore")
            self.report = self.run(list(self.failures.values()))
        if self.report.interrupted:
            session.exitstatus = pytest.ExitCode.INTERRUPTED
        elif all(o.outcome == "fixed" for o in self.report.outcomes):
            session.exitstatus = pytest.ExitCode.OK
        else:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.report is None or not (self.report.outcomes or self.report.interrupted):
            return
        terminalreporter.write_sep("=", "pytest-agentic fix")
        if self.report.interrupted:
            terminalreporter.write_line("interrupted: every file the fixer touched was restored")
        for line in self.report.lines():
            terminalreporter.write_line(line)

    # --- the loop ---------------------------------------------------------------------------

    def run(self, failures: list[Failure]) -> RunReport:
        settings = self.settings
        report = RunReport(model=settings.model, dry_run=settings.dry_run)
        started = time.perf_counter()
        progress = {f.nodeid: Progress(f) for f in failures}
        kept: list[Progress] = []
        try:
            if failures:
                report.run_dir = new_run_dir(self.root)
                self._confirm(progress)
                pending = [p for p in progress.values() if p.outcome == "not_fixed"]
                client = None
                try:
                    for index, item in enumerate(pending, start=1):
                        if self._over_budget():
                            item.outcome, item.reason = "skipped", "token budget spent"
                            continue
                        if kept and self._run([item.failure.nodeid]).passed([item.failure.nodeid]):
                            item.outcome, item.reason = "fixed", "fixed by an earlier fix"
                            continue
                        if client is None:
                            client = _make_client(settings)
                        self._fix(client, index, item, report.run_dir)
                        if item.outcome == "fixed":
                            kept.append(item)
                finally:
                    if client is not None:
                        client.close()
                self._verify(progress, kept)
        except KeyboardInterrupt:
            report.interrupted = True
            for item in reversed(kept):
                if item.journal is not None:
                    item.journal.restore()
            kept = []
        finally:
            for item in progress.values():
                # A journal still open here belongs to an attempt cut short: put it back.
                if item.journal is not None and item not in kept:
                    item.journal.restore()
        for item in kept:
            assert item.journal is not None
            if settings.dry_run:
                item.journal.restore()  # the patches stay in the run folder
            else:
                item.journal.keep()
        report.outcomes = [
            Outcome(
                p.failure.nodeid,
                p.outcome,
                p.attempts,
                tuple(p.files),
                p.reason,
                tuple(p.details),
            )
            for p in progress.values()
        ]
        report.usage = {name: getattr(self.usage, name) for name in vars(self.usage)}
        report.seconds = {
            "fix_loop": round(time.perf_counter() - started, 3),
            "test_reruns": round(self.rerun_seconds, 3),
        }
        paths = [
            p
            for p in (report.run_dir and report.run_dir / "report.json", settings.report)
            if p is not None
        ]
        write_report(report, paths)
        return report

    def _confirm(self, progress: dict[str, Progress]) -> None:
        """Re-run every failure once; one that passes is flaky and never sent to the model."""
        nodeids = list(progress)
        result = self._run(nodeids)
        for nodeid in nodeids:
            if result.outcomes.get(nodeid) == "passed":
                progress[nodeid].outcome = "flaky"
                progress[nodeid].reason = "passed on re-run"

    def _over_budget(self) -> bool:
        budget = self.settings.budget_tokens
        return budget is not None and self.usage.total >= budget

    def _session_files(self) -> set[str]:
        """The session's own test files, the conftests it loaded and its ini file."""
        files = set(self.test_files or self.reported_files)
        for plugin in self.config.pluginmanager.get_plugins():
            path = getattr(plugin, "__file__", None)
            if isinstance(path, str) and os.path.basename(path) == "conftest.py":
                files.add(_rel_inside(self.root, path) or "")
        if self.config.inipath is not None:
            files.add(_rel_inside(self.root, str(self.config.inipath)) or "")
        files.discard("")
        return files

    def _fix(self, client: Any, index: int, item: Progress, run_dir: Path | None) -> None:
        import anthropic

        settings = self.settings
        nodeid = item.failure.nodeid
        policy = PathPolicy(
            self.root,
            task=settings.task,
            protected=settings.protected,
            for_agent=True,
            protected_paths=self._session_files(),
        )
        context = first_message(self.root, [item.failure], settings.task)
        feedback = ""

        def rerun() -> str:
            return describe(self._run([nodeid]), [nodeid])

        for attempt in range(1, settings.max_attempts + 1):
            if self._over_budget():
                item.reason = item.reason or "token budget spent"
                if attempt == 1:
                    item.outcome = "skipped"
                return
            item.attempts = attempt
            journal = Journal(self.root, f"{os.getpid()}-{index}-{attempt}")
            item.journal = journal
            toolbox = Toolbox(self.root, policy, journal, rerun)
            message = list(context)
            if feedback:
                message.append({"type": "text", "text": feedback})
            conversation = converse(
                client,
                model=settings.model,
                first_message=message,
                toolbox=toolbox,
                max_turns=settings.max_turns,
                usage=self.usage,
                api_error=anthropic.APIError,
            )
            if run_dir is not None:
                write_transcript(run_dir, index, nodeid, attempt, conversation.transcript)
            verdicts = self._judge(conversation, journal, item, client, context)
            if run_dir is not None and self._review_transcript:
                write_transcript(run_dir, index, nodeid, attempt, self._review_transcript, "review")
            failed = next((v for v in verdicts if not v.ok), None)
            item.details.append(
                AttemptDetail(
                    attempt,
                    failed is None,
                    tuple(CheckResult(v.check, v.ok, v.reason) for v in verdicts),
                )
            )
            if failed is None:
                item.outcome, item.reason = "fixed", ""
                item.files = journal.touched
                if run_dir is not None:
                    write_patch(run_dir, index, nodeid, journal.diff())
                return
            journal.restore()
            item.journal = None
            item.reason = failed.reason
            feedback = (
                f"Attempt {attempt} did not fix it: {failed.reason}. Every change it made was "
                "reverted. Try a different approach."
                + (f"\n{failed.feedback}" if failed.feedback else "")
            )
            if conversation.ended == "gave_up":
                return

    def _judge(
        self,
        conversation: Conversation,
        journal: Journal,
        item: Progress,
        client: Any,
        context: list[dict[str, Any]],
    ) -> list[Verdict]:
        """The gate, in order; it stops at the first check that says no (the last verdict).
        Target passes -> no regression in affected passing tests -> tamper -> diff budget ->
        project checks -> reviewer."""
        self._review_transcript = []
        if conversation.ended == "api_error":
            return [Verdict("agent", False, conversation.reason)]
        if conversation.ended == "gave_up":
            return [Verdict("agent", False, f"the agent gave up: {conversation.reason}")]
        if not journal.touched:
            return [Verdict("agent", False, "the agent changed no file")]
        nodeid = item.failure.nodeid
        verdicts = [self._target(conversation, nodeid)]
        changes = _changes(self.root, journal)
        settings = self.settings
        steps: list[Callable[[], Verdict]] = [
            lambda: self._regression(item, [c.path for c in changes]),
            lambda: tamper(changes),
            lambda: diff_budget(changes, settings.max_diff_lines),
            lambda: project_checks(
                settings.checks,
                [c.path for c in changes if c.new is not None],
                self.root,
                settings.rerun.timeout,
            ),
        ]
        if settings.review:
            steps.append(lambda: self._review(client, item, journal, changes, context, verdicts))
        for step in steps:
            if not verdicts[-1].ok:
                break
            verdicts.append(step())
        return verdicts

    def _target(self, conversation: Conversation, nodeid: str) -> Verdict:
        result = self._run([nodeid])
        self._target_output = result.output
        if result.passed([nodeid]):
            return Verdict("target", True, "the failing test passes")
        summary = next(
            (
                line
                for line in reversed(result.output.splitlines())
                if line.startswith(("FAILED", "ERROR"))
            ),
            "timed out" if result.timed_out else "",
        )
        why = "the test still fails" + (f": {summary}" if summary else "")
        if conversation.ended == "max_turns":
            why = f"{conversation.reason}, and {why}"
        return Verdict("target", False, why, f"```\n{result.output[-4000:]}\n```")

    def _regression(self, item: Progress, changed: list[str]) -> Verdict:
        """Re-run the session's passing tests the change can affect (static import graph)."""
        passing = [n for n in self.passed if n != item.failure.nodeid]
        nodeids = affected_tests(self.root, changed, passing, [item.failure.nodeid])
        if not nodeids:
            return Verdict("regression", True, "no passing test imports the changed files")
        result = self._run(compact(nodeids, self._whole_files()))
        self._target_output += f"\n[{len(nodeids)} affected passing test(s) re-run]\n"
        return regression(nodeids, result.outcomes, result.output, result.timed_out)

    def _review(
        self,
        client: Any,
        item: Progress,
        journal: Journal,
        changes: list[FileChange],
        context: list[dict[str, Any]],
        verdicts: list[Verdict],
    ) -> Verdict:
        import anthropic

        from pytest_agentic.review import review, review_message

        failure = item.failure
        literals: set[object] = set()
        lines = _read(self.root, failure.path) if failure.path else None
        if lines is not None:
            literals = assertion_literals("\n".join(lines), failure.lineno)
        flags = special_cases(changes, literals)
        ran = "\n".join(f"{v.check}: {v.reason}" for v in verdicts)
        message = review_message(
            context[0]["text"], journal.diff(), ran + "\n" + self._target_output, flags
        )
        policy = PathPolicy(self.root, for_agent=True)
        toolbox = Toolbox(self.root, policy, journal, lambda: "", read_only=True)
        outcome = review(
            client,
            model=self.settings.review_model or self.settings.model,
            message=message,
            toolbox=toolbox,
            usage=self.usage,
            api_error=anthropic.APIError,
        )
        self._review_transcript = outcome.transcript
        return outcome.verdict

    def _verify(self, progress: dict[str, Progress], kept: list[Progress]) -> None:
        """The session's whole selection once (the tests that passed and the fixed ones,
        with the session's `-n`); undo the newest kept fix while any of them fails (a later
        fix broke an earlier one, or a test the per-attempt graph did not reach)."""
        args = list(self.settings.rerun.extra_args)
        if self.settings.workers and args[-2:] == ["-n", "0"]:
            args[-1] = self.settings.workers
        final = dataclasses.replace(self.settings.rerun, extra_args=tuple(args))
        while kept:
            fixed = [p.failure.nodeid for p in progress.values() if p.outcome == "fixed"]
            selection = list(dict.fromkeys([*self.passed, *fixed]))
            result = run_tests(compact(selection, self._whole_files()), final)
            self.rerun_seconds += result.seconds
            broken = result.failing(selection)
            if not broken:
                return
            last = kept.pop()
            assert last.journal is not None
            last.journal.restore()
            last.journal = None
            last.outcome = "not_fixed"
            last.reason = f"its fix broke {', '.join(broken)} in the final verification; reverted"
            last.files = []


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a CI job cancelled, `timeout`) restores the tree like Ctrl-C does."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _collected_file(nodeid: str) -> str | None:
    """The file a node id's test was collected from, unless it looks like a doctest in a
    module (`pkg/mod.py::pkg.mod.func`, `calc.py::calc`): that file is the code under test."""
    path, sep, name = nodeid.partition("::")
    name = name.split("[", 1)[0]
    if not sep or (path.endswith(".py") and ("." in name or name == Path(path).stem)):
        return None
    return path


def _changes(root: Path, journal: Journal) -> list[FileChange]:
    """What an attempt changed, as text before and after."""

    def text(data: bytes | None) -> str | None:
        return None if data is None else data.decode("utf-8", "replace")

    changes = []
    for rel, old in journal.originals().items():
        path = root / rel
        new = path.read_bytes() if path.is_file() else None
        if new != old:
            changes.append(FileChange(rel, text(old), text(new)))
    return changes


def describe(result: RunResult, nodeids: Sequence[str]) -> str:
    if result.passed(nodeids):
        return f"All {len(nodeids)} test(s) passed.\n" + result.output[-2000:]
    return "Still failing.\n" + result.output


def _make_client(settings: Settings) -> Any:
    import anthropic

    return anthropic.Anthropic(max_retries=settings.max_retries, timeout=settings.api_timeout)


# --- the first message ------------------------------------------------------------------------


def _read(root: Path, rel: str) -> list[str] | None:
    try:
        return (root / rel).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None


def _excerpt(lines: list[str], first: int, last: int) -> str:
    first, last = max(1, first), min(len(lines), last)
    return "\n".join(f"{n:5} {lines[n - 1]}" for n in range(first, last + 1))


def _parse(lines: list[str]) -> ast.Module | None:
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def _test_source(path: str, lineno: int, lines: list[str], tree: ast.Module | None) -> str:
    end = lineno + 30
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
            node.lineno <= lineno <= (node.end_lineno or node.lineno)
            or any(d.lineno == lineno for d in node.decorator_list)
        ):
            end = node.end_lineno or end
            break
    return f"{path}\n{_excerpt(lines, lineno, end)}"


def _rel_inside(root: Path, path: str) -> str | None:
    full = Path(path) if os.path.isabs(path) else root / path
    try:
        rel = full.resolve().relative_to(root.resolve()).as_posix()
    except (ValueError, OSError):
        return None
    if "site-packages" in rel or rel.startswith((".venv/", "venv/")):
        return None
    return rel


def _imported_files(root: Path, tree: ast.Module) -> list[str]:
    """Project files the test module imports (`from calc import add` -> calc.py): the code
    under test, even when it returned a wrong value instead of raising inside a frame."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    found: list[str] = []
    for name in names:
        base = name.replace(".", "/")
        for prefix in ("", "src/"):
            for candidate in (f"{prefix}{base}.py", f"{prefix}{base}/__init__.py"):
                if candidate not in found and (root / candidate).is_file():
                    found.append(candidate)
    return found


def first_message(
    root: Path, failures: Sequence[Failure], task: Task | None
) -> list[dict[str, Any]]:
    """The stable context of every attempt: identical bytes across attempts, so it caches."""
    from pytest_agentic.conventions import context_for

    parts = ["Fix the code so that these failing tests pass (pytest node ids):"]
    parts += [f"- {f.nodeid}" for f in failures]
    frame_files: list[str] = []
    for failure in failures:
        parts.append(
            f"\n## {failure.nodeid} ({'setup error' if failure.when == 'setup' else 'failure'})"
        )
        parts.append("Failure report:\n```\n" + failure.report.strip()[-6000:] + "\n```")
        test_lines = _read(root, failure.path) if failure.path else None
        tree = _parse(test_lines) if test_lines is not None else None
        if failure.path and failure.lineno is not None and test_lines is not None:
            source = _test_source(failure.path, failure.lineno, test_lines, tree)
            parts.append("Test source (read-only to you):\n```python\n" + source + "\n```")
        shown = 0
        for path, lineno in reversed(failure.frames):
            rel = _rel_inside(root, path)
            if rel is None or (failure.path and rel == failure.path) or shown >= MAX_FRAMES:
                continue
            lines = _read(root, rel)
            if lines is None:
                continue
            frame_files.append(rel)
            shown += 1
            excerpt = _excerpt(lines, lineno - CONTEXT_LINES, lineno + CONTEXT_LINES)
            parts.append(f"Source around {rel}:{lineno}:\n```python\n{excerpt}\n```")
        if tree is not None:
            for rel in _imported_files(root, tree)[:MAX_FRAMES]:
                lines = _read(root, rel)
                if rel in frame_files or not lines:
                    continue
                frame_files.append(rel)
                more = (
                    f"\n[... {len(lines) - MAX_IMPORTED_LINES} more lines]"
                    if (len(lines) > MAX_IMPORTED_LINES)
                    else ""
                )
                parts.append(
                    f"Imported by the test: {rel}\n```python\n"
                    f"{_excerpt(lines, 1, MAX_IMPORTED_LINES)}{more}\n```"
                )
    if task is not None:
        goal = task.goal or task.title
        parts.append(
            f"\n## Active task {task.id!r}\n{goal}\nYou may change only files matching: "
            + ", ".join(task.scope)
        )
    # AGENTS.md plus the knowledge files whose `paths` globs cover the files shown.
    conventions = context_for(root, sorted(set(frame_files)))
    if conventions.strip():
        parts.append("\n## Repository conventions\n" + conventions)
    return [{"type": "text", "text": "\n".join(parts), "cache_control": {"type": "ephemeral"}}]
