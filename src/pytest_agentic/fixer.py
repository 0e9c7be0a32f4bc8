"""The fix session: collect failures, confirm them, run bounded attempts, verify, report.

Registered by `plugin.py` only with `--agent-fix` and only in the controller process (under
pytest-xdist the workers just run tests; their reports reach the controller). Importing this
module imports `anthropic` lazily: in a thread, while the failures' confirmation re-run runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_agentic.agent import Conversation, Toolbox, Usage, converse
from pytest_agentic.context import first_message
from pytest_agentic.report import (
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
from pytest_agentic.workspace import Journal


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
    context_max_chars: int = 24_000


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

    def _run(self, nodeids: Sequence[str]) -> RunResult:
        result = run_tests(nodeids, self.settings.rerun)
        self.rerun_seconds += result.seconds
        return result

    # --- pytest hooks ---------------------------------------------------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
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
                early = EarlyClient(settings)  # the SDK import overlaps the confirm re-run
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
                            client = early.get()
                        self._fix(client, index, item, report.run_dir)
                        if item.outcome == "fixed":
                            kept.append(item)
                finally:
                    early.close()
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
            Outcome(p.failure.nodeid, p.outcome, p.attempts, tuple(p.files), p.reason)
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

    def _fix(self, client: Any, index: int, item: Progress, run_dir: Path | None) -> None:
        import anthropic

        settings = self.settings
        nodeid = item.failure.nodeid
        policy = PathPolicy(
            self.root, task=settings.task, protected=settings.protected, for_agent=True
        )
        context = first_message(
            self.root, [item.failure], settings.task, max_chars=settings.context_max_chars
        )
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
            verdict, detail = self._judge(conversation, journal, nodeid)
            if not verdict:
                item.outcome, item.reason = "fixed", ""
                item.files = journal.touched
                if run_dir is not None:
                    write_patch(run_dir, index, nodeid, journal.diff())
                return
            journal.restore()
            item.journal = None
            item.reason = verdict
            feedback = (
                f"Attempt {attempt} did not fix it: {verdict}. Every change it made was "
                "reverted. Try a different approach." + (f"\n```\n{detail}\n```" if detail else "")
            )
            if conversation.ended == "gave_up":
                return

    def _judge(self, conversation: Conversation, journal: Journal, nodeid: str) -> tuple[str, str]:
        """("", "") when the attempt's change makes the test pass, else (why not in one
        line, the re-run's output for the next attempt)."""
        if conversation.ended == "api_error":
            return conversation.reason, ""
        if conversation.ended == "gave_up":
            return f"the agent gave up: {conversation.reason}", ""
        if not journal.touched:
            return "the agent changed no file", ""
        result = self._run([nodeid])
        if result.passed([nodeid]):
            return "", ""
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
        return why, result.output[-4000:]

    def _verify(self, progress: dict[str, Progress], kept: list[Progress]) -> None:
        """All originally failing tests together; undo the newest kept fix while any fixed
        test fails again (a later fix broke an earlier one)."""
        while kept:
            fixed = [p.failure.nodeid for p in progress.values() if p.outcome == "fixed"]
            result = self._run(fixed)
            broken = result.failing(fixed)
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


def describe(result: RunResult, nodeids: Sequence[str]) -> str:
    if result.passed(nodeids):
        return f"All {len(nodeids)} test(s) passed.\n" + result.output[-2000:]
    return "Still failing.\n" + result.output


def _make_client(settings: Settings) -> Any:
    import anthropic

    return anthropic.Anthropic(max_retries=settings.max_retries, timeout=settings.api_timeout)


class EarlyClient:
    """The SDK client, built in a thread started before the confirmation re-run: importing
    `anthropic` and building the client take ~1 s, which then overlaps the re-run's subprocess
    instead of following it (issue 13). `get()` waits for it; `close()` closes it, used or not.
    """

    def __init__(self, settings: Settings) -> None:
        self._client: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._build, args=(settings,), name="agentic-client", daemon=True
        )
        self._thread.start()

    def _build(self, settings: Settings) -> None:
        try:
            self._client = _make_client(settings)
        except BaseException as exc:  # re-raised in the caller's thread by get()
            self._error = exc

    def get(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._client

    def close(self) -> None:
        self._thread.join()
        if self._client is not None:
            self._client.close()
