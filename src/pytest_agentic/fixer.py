"""The fix session: collect failures, confirm them, run bounded attempts, verify, report.

Registered by `plugin.py` only with `--agent-fix` and only in the controller process (under
pytest-xdist the workers just run tests; their reports reach the controller). Importing this
module imports `anthropic` lazily, when the first failure is dispatched.
"""

from __future__ import annotations

import ast
import contextlib
import os
import time
import traceback as tb
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_agentic.agent import (
    Budget,
    BudgetSpent,
    Conversation,
    FatalApiError,
    Toolbox,
    Usage,
    converse,
)
from pytest_agentic.config import DEFAULT_UNREADABLE
from pytest_agentic.interrupts import interruptible
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
    max_cost_usd: float | None = None
    unreadable: tuple[str, ...] = DEFAULT_UNREADABLE
    view_max_chars: int = 40_000
    write_max_bytes: int = 1 << 20


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
        self.budget = Budget(
            self.usage,
            max_tokens=settings.budget_tokens,
            max_cost_usd=settings.max_cost_usd,
            model=settings.model,
        )
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
        with warnings.catch_warnings(), interruptible():
            # SDK warnings (a deprecated model name, an unclosed client) would become errors
            # in suites with `filterwarnings = error`; they are not the user's tests' business.
            warnings.simplefilter("ignore")
            try:
                self.report = self.run(list(self.failures.values()))
            except Exception as exc:  # run() failed outside its loop (writing the report)
                self.report = RunReport(model=self.settings.model)
                self.report.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if self.report.fatal:
            session.exitstatus = pytest.ExitCode.USAGE_ERROR  # a key or URL the user must fix
        elif self.report.error:
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
        elif self.report.interrupted:
            session.exitstatus = pytest.ExitCode.INTERRUPTED
        elif all(o.outcome == "fixed" for o in self.report.outcomes):
            session.exitstatus = pytest.ExitCode.OK
        else:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        report = self.report
        if report is None or not (
            report.outcomes or report.interrupted or report.fatal or report.error
        ):
            return
        terminalreporter.write_sep("=", "pytest-agentic fix")
        if report.fatal:
            terminalreporter.write_line(f"stopped: {report.fatal}", red=True, bold=True)
        if report.error:
            terminalreporter.write_line(
                f"internal error: {report.error} (the open attempt was restored, verified "
                "fixes kept"
                + (f"; traceback in {report.run_dir / 'error.log'})" if report.run_dir else ")"),
                red=True,
                bold=True,
            )
        if report.interrupted:
            terminalreporter.write_line("interrupted: every file the fixer touched was restored")
        for line in report.lines():
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
                stopped = ""
                try:
                    for index, item in enumerate(pending, start=1):
                        if stopped or self._over_budget():
                            item.outcome = "skipped"
                            item.reason = stopped or "budget spent"
                            continue
                        if kept and self._run([item.failure.nodeid]).passed([item.failure.nodeid]):
                            item.outcome, item.reason = "fixed", "fixed by an earlier fix"
                            continue
                        if client is None:
                            client = _make_client(settings)
                        try:
                            self._fix(client, index, item, report.run_dir)
                        except BudgetSpent as exc:
                            # _fix restored the attempt; the failures after it are skipped.
                            stopped = item.reason = str(exc).splitlines()[0]
                        except FatalApiError as exc:
                            # Said once, in the summary's `stopped:` line; not per failure.
                            report.fatal = str(exc)
                            stopped = item.reason = "the run stopped on an API error"
                        if item.outcome == "fixed":
                            kept.append(item)
                finally:
                    if client is not None:
                        client.close()
                self._verify(progress, kept)
        except KeyboardInterrupt:
            # A second Ctrl-C is ignored from here on (interrupts.py): the restore runs out.
            report.interrupted = True
            for item in reversed(kept):
                if item.journal is not None:
                    item.journal.restore()
                    item.journal = None
                item.outcome, item.reason, item.files = "not_fixed", "interrupted", []
            kept = []
        except Exception as exc:
            # Our bug or the machine's (a full disk): one line, the traceback in the run
            # folder, the open attempt restored (below) and verified fixes kept (exit 3).
            report.error = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            if report.run_dir is not None:
                with contextlib.suppress(OSError):
                    (report.run_dir / "error.log").write_text(tb.format_exc())
        finally:
            for item in progress.values():
                # A journal still open here belongs to an attempt cut short: put it back.
                if item.journal is not None and item not in kept:
                    try:
                        item.journal.restore()
                    except KeyboardInterrupt:
                        pass  # held until that replay was done (interrupts.py); carry on
                    item.journal = None
        for item in kept:
            assert item.journal is not None
            if settings.dry_run:
                item.journal.restore()  # the patches stay in the run folder
            else:
                item.journal.keep()
        for item in progress.values():
            if report.interrupted and item.outcome == "fixed":  # its fix was restored
                item.outcome, item.reason, item.files = "not_fixed", "", []
            if item.outcome == "not_fixed" and not item.reason:  # never "not fixed ()"
                item.reason = "interrupted" if report.interrupted else "stopped by an error"
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
        budget = self.budget
        return (budget.max_tokens is not None and self.usage.total >= budget.max_tokens) or (
            budget.max_cost_usd is not None and budget.cost() >= budget.max_cost_usd
        )

    def _fix(self, client: Any, index: int, item: Progress, run_dir: Path | None) -> None:
        import anthropic

        settings = self.settings
        nodeid = item.failure.nodeid
        policy = PathPolicy(
            self.root,
            task=settings.task,
            protected=settings.protected,
            for_agent=True,
            unreadable=settings.unreadable,
        )
        context = first_message(self.root, [item.failure], settings.task, policy)
        feedback = ""

        def rerun() -> str:
            return describe(self._run([nodeid]), [nodeid])

        for attempt in range(1, settings.max_attempts + 1):
            if self._over_budget():
                item.reason = item.reason or "budget spent"
                if attempt == 1:
                    item.outcome = "skipped"
                return
            item.attempts = attempt
            journal = Journal(self.root, f"{os.getpid()}-{index}-{attempt}")
            item.journal = journal
            toolbox = Toolbox(
                self.root,
                policy,
                journal,
                rerun,
                view_max_chars=settings.view_max_chars,
                write_max_bytes=settings.write_max_bytes,
            )
            message = list(context)
            if feedback:
                message.append({"type": "text", "text": feedback})
            try:
                conversation = converse(
                    client,
                    model=settings.model,
                    first_message=message,
                    toolbox=toolbox,
                    max_turns=settings.max_turns,
                    usage=self.usage,
                    api_error=anthropic.APIError,
                    budget=self.budget,
                )
            except (BudgetSpent, FatalApiError) as exc:
                # The run stops here: this attempt's edits go back now, before the kept
                # fixes are verified. An attempt that never reached the model is no attempt.
                journal.restore()
                item.journal = None
                if getattr(exc, "requests", 1) == 0 and attempt == 1:
                    item.attempts = 0
                    item.outcome = "skipped"
                raise
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


def describe(result: RunResult, nodeids: Sequence[str]) -> str:
    if result.passed(nodeids):
        return f"All {len(nodeids)} test(s) passed.\n" + result.output[-2000:]
    return "Still failing.\n" + result.output


def _make_client(settings: Settings) -> Any:
    import anthropic

    return anthropic.Anthropic(max_retries=settings.max_retries, timeout=settings.api_timeout)


# --- the first message ------------------------------------------------------------------------


def _read(root: Path, rel: str, policy: PathPolicy | None = None) -> list[str] | None:
    # The agent's read policy applies to its context too: no secret reaches a prompt.
    if policy is not None and policy.check_read(rel) is not None:
        return None
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
    root: Path, failures: Sequence[Failure], task: Task | None, policy: PathPolicy | None = None
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
        test_lines = _read(root, failure.path, policy) if failure.path else None
        tree = _parse(test_lines) if test_lines is not None else None
        if failure.path and failure.lineno is not None and test_lines is not None:
            source = _test_source(failure.path, failure.lineno, test_lines, tree)
            parts.append("Test source (read-only to you):\n```python\n" + source + "\n```")
        shown = 0
        for path, lineno in reversed(failure.frames):
            rel = _rel_inside(root, path)
            if rel is None or (failure.path and rel == failure.path) or shown >= MAX_FRAMES:
                continue
            lines = _read(root, rel, policy)
            if lines is None:
                continue
            frame_files.append(rel)
            shown += 1
            excerpt = _excerpt(lines, lineno - CONTEXT_LINES, lineno + CONTEXT_LINES)
            parts.append(f"Source around {rel}:{lineno}:\n```python\n{excerpt}\n```")
        if tree is not None:
            for rel in _imported_files(root, tree)[:MAX_FRAMES]:
                lines = _read(root, rel, policy)
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
