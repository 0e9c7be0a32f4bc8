"""The fix session: collect failures, confirm them, run bounded attempts, verify, report.

Registered by `plugin.py` only with `--agent-fix` and only in the controller process (under
pytest-xdist the workers just run tests; their reports reach the controller). Importing this
module imports `anthropic` lazily, when the first failure is dispatched.
"""

from __future__ import annotations

import ast
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
from pytest_agentic.progress import LiveProgress, parse_refusal
from pytest_agentic.report import (
    Outcome,
    Refused,
    RunReport,
    estimate_cost,
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
    commit: bool = False


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
    index: int = 0
    refusals: list[Refused] = field(default_factory=list)
    question: str = ""
    fixed_by: str = ""
    usage: Usage = field(default_factory=Usage)
    patch: str = ""
    diff: str = ""
    commit: str = ""

    def outcome_record(self) -> Outcome:
        return Outcome(
            self.failure.nodeid,
            self.outcome,
            self.attempts,
            tuple(self.files),
            self.reason,
            refusals=tuple(self.refusals),
            question=self.question,
            fixed_by=self.fixed_by,
            usage={name: getattr(self.usage, name) for name in vars(self.usage)},
            patch=self.patch,
            commit=self.commit,
        )


class _BothUsages:
    """Counts a response's tokens for its failure and for the whole run."""

    def __init__(self, *usages: Usage) -> None:
        self.usages = usages

    def add(self, usage: Any) -> None:
        for target in self.usages:
            target.add(usage)

    @property
    def total(self) -> int:
        return self.usages[-1].total


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
        self.progress = LiveProgress(lambda text: None)

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
        from pytest_agentic import progress

        self.progress = progress.for_config(
            self.config, spent=self._spent, dry_run=self.settings.dry_run
        )
        with warnings.catch_warnings(), _sigterm_interrupts():
            # SDK warnings (a deprecated model name, an unclosed client) would become errors
            # in suites with `filterwarnings = error`; they are not the user's tests' business.
            warnings.simplefilter("ignore")
            self.report = self.run(list(self.failures.values()))
        self.progress.close()
        if self.report.interrupted:
            session.exitstatus = pytest.ExitCode.INTERRUPTED
        elif all(o.outcome == "fixed" for o in self.report.outcomes):
            session.exitstatus = pytest.ExitCode.OK
        else:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        self.report.exit_status = int(session.exitstatus)
        self.session = session
        self._write_reports(self.report)

    def _spent(self) -> tuple[int, float]:
        usage = {name: getattr(self.usage, name) for name in vars(self.usage)}
        return self.usage.total, estimate_cost(self.settings.model, usage)

    def _write_reports(self, report: RunReport) -> None:
        paths = [
            p
            for p in (report.run_dir and report.run_dir / "report.json", self.settings.report)
            if p is not None
        ]
        write_report(report, paths)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        """The fix section goes last, after pytest's short summary (printed in its
        `pytest_terminal_summary` wrapper, after every other plugin's summary) and after its
        `N failed, M passed` line (printed in its `pytest_sessionfinish` wrapper): the last
        lines on screen say what the fix loop did and which exit status follows."""
        report = self.report
        session = getattr(self, "session", None)
        if report is None or session is None:
            return
        if int(session.exitstatus) != report.exit_status:
            # A plugin after us changed it (pytest's own `--max-warnings` does, after every
            # `pytest_sessionfinish`): the last line and the report say what the shell sees.
            report.exit_status = int(session.exitstatus)
            self._write_reports(report)
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if report.outcomes:
            from pytest_agentic.deliver import append_step_summary

            problem = append_step_summary(report)
            if problem and reporter is not None:
                reporter.write_line(f"pytest-agentic: {problem}")
        if reporter is None or not (report.outcomes or report.interrupted):
            return
        reporter.write_sep("=", "pytest-agentic fix")
        for line in report.lines():
            reporter.write_line(line)
        fixed_all = report.exit_status == 0
        reporter.write_line(report.result_line(), bold=True, green=fixed_all, red=not fixed_all)

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
                for index, item in enumerate(pending, start=1):
                    item.index = index
                client = None
                try:
                    for item in pending:
                        if item.fixed_by:
                            continue
                        if self._over_budget():
                            item.outcome, item.reason = "skipped", "token budget spent"
                            self._verdict(item, len(pending))
                            continue
                        if client is None:
                            client = _make_client(settings)
                        self._fix(client, item.index, item, report.run_dir, len(pending))
                        self._verdict(item, len(pending))
                        if item.outcome == "fixed":
                            kept.append(item)
                            self._mended_by(item, pending)
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
                if settings.commit:
                    self._commit(item, progress)
        report.outcomes = [p.outcome_record() for p in progress.values()]
        report.usage = {name: getattr(self.usage, name) for name in vars(self.usage)}
        report.seconds = {
            "fix_loop": round(time.perf_counter() - started, 3),
            "test_reruns": round(self.rerun_seconds, 3),
        }
        return report

    def _verdict(self, item: Progress, total: int) -> None:
        self.progress(
            "verdict",
            nodeid=item.failure.nodeid,
            index=item.index,
            total=total,
            outcome=item.outcome,
            reason=item.reason,
            attempts=item.attempts,
            fixed_by=item.fixed_by,
        )

    def _mended_by(self, fixer: Progress, pending: list[Progress]) -> None:
        """Failures not yet attempted that `fixer`'s fix repaired too: one re-run, and they
        are reported `fixed by the fix for <node id>` instead of being sent to the model."""
        waiting = [p for p in pending if p.attempts == 0 and p.outcome == "not_fixed"]
        waiting = [p for p in waiting if not p.fixed_by and p is not fixer]
        if not waiting:
            return
        result = self._run([p.failure.nodeid for p in waiting])
        for item in waiting:
            if result.passed([item.failure.nodeid]):
                item.outcome, item.fixed_by = "fixed", fixer.failure.nodeid
                self._verdict(item, len(pending))

    def _commit(self, item: Progress, progress: dict[str, Progress]) -> None:
        """`--agent-commit`: the kept fix becomes a commit of its own files only."""
        from pytest_agentic.deliver import commit_fix
        from pytest_agentic.errors import AgenticError

        nodeid = item.failure.nodeid
        also = [p.failure.nodeid for p in progress.values() if p.fixed_by == nodeid]
        body = [
            f"pytest-agentic kept this fix after re-running {nodeid}: it passes "
            f"(attempt {item.attempts} of {self.settings.max_attempts}, "
            f"model {self.settings.model}).",
        ]
        if item.reason:
            body.append(item.reason)
        if also:
            body.append("It also fixes:\n" + "\n".join(f"- {n}" for n in also))
        try:
            item.commit = commit_fix(self.root, nodeid, item.diff, item.files, "\n\n".join(body))
        except AgenticError as exc:
            item.reason = str(exc)
            self.progress("note", text=f"{nodeid}: {exc}")
            return
        self.progress("commit", nodeid=nodeid, index=item.index, sha=item.commit)

    def _confirm(self, progress: dict[str, Progress]) -> None:
        """Re-run every failure once; one that passes is flaky and never sent to the model."""
        nodeids = list(progress)
        self.progress("confirm", count=len(nodeids))
        result = self._run(nodeids)
        flaky = []
        for nodeid in nodeids:
            if result.outcomes.get(nodeid) == "passed":
                progress[nodeid].outcome = "flaky"
                progress[nodeid].reason = "passed on re-run"
                flaky.append(nodeid)
        self.progress("confirmed", confirmed=len(nodeids) - len(flaky), flaky=flaky)

    def _over_budget(self) -> bool:
        budget = self.settings.budget_tokens
        return budget is not None and self.usage.total >= budget

    def _fix(
        self, client: Any, index: int, item: Progress, run_dir: Path | None, total: int = 0
    ) -> None:
        import anthropic

        settings = self.settings
        nodeid = item.failure.nodeid
        policy = PathPolicy(
            self.root, task=settings.task, protected=settings.protected, for_agent=True
        )
        context = first_message(self.root, [item.failure], settings.task)
        feedback = ""

        def rerun() -> str:
            return describe(self._run([nodeid]), [nodeid])

        where = {"nodeid": nodeid, "index": index, "total": total}

        def on_event(kind: str, **fields: Any) -> None:
            if kind == "tool":
                refusal = (
                    parse_refusal(fields["result"], fields["input"])
                    if (fields.get("is_error"))
                    else None
                )
                if refusal is not None and Refused(*refusal) not in item.refusals:
                    item.refusals.append(Refused(*refusal))
                if fields.get("name") == "give_up":
                    item.question = str(fields["input"].get("question", "")).strip()
            self.progress(kind, **where, **fields)

        for attempt in range(1, settings.max_attempts + 1):
            if self._over_budget():
                item.reason = item.reason or "token budget spent"
                if attempt == 1:
                    item.outcome = "skipped"
                return
            item.attempts = attempt
            self.progress("attempt", **where, attempt=attempt, max_attempts=settings.max_attempts)
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
                usage=_BothUsages(item.usage, self.usage),  # type: ignore[arg-type]
                api_error=anthropic.APIError,
                on_event=on_event,
            )
            if run_dir is not None:
                write_transcript(run_dir, index, nodeid, attempt, conversation.transcript)
            if conversation.ended in ("end_turn", "max_turns") and journal.touched:
                self.progress("judge", **where)
            verdict, detail = self._judge(conversation, journal, nodeid)
            if not verdict:
                item.outcome, item.reason = "fixed", ""
                item.files = journal.touched
                item.diff = journal.diff()
                if run_dir is not None:
                    item.patch = write_patch(run_dir, index, nodeid, item.diff).name
                return
            journal.restore()
            item.journal = None
            item.reason = verdict
            if item.question:
                # The question is reported on its own line and in the JSON `question`.
                item.reason = item.reason.replace(f" (question: {item.question})", "")
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
            last.patch = ""
            for item in progress.values():
                if item.fixed_by == last.failure.nodeid:
                    item.outcome, item.fixed_by = "not_fixed", ""
                    item.reason = f"the fix for {last.failure.nodeid} that fixed it was reverted"


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
