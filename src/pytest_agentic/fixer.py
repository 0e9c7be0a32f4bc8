"""The fix session: plan, dispatch, validate, integrate, verify, report (DESIGN.md's data flow).

Registered by `plugin.py` only with `--agent-fix` and only in the controller process (under
pytest-xdist the workers just run tests; their reports reach the controller). `anthropic` is
imported lazily, when the first failure is dispatched.

- plan: confirmed failures that share a cause (innermost project frame and error type) form
  one job, one conversation; every other failure is a job of its own.
- dispatch: up to `workers` jobs at once, on threads (the work is API calls and subprocesses).
  Every attempt gets its own workspace, a copy of the project as the run began plus the fixes
  integrated so far (`sandbox.py`); the agent's tools and every re-run work there, never in
  the user's tree. The shared prompt prefix (tools, system prompt) is cached by one request
  before the others go out.
- validate: `judge` decides an attempt, after sandboxed re-runs each followed by the integrity
  check (files changed by anything but the editor reject the attempt).
- integrate: on the main thread, one kept fix at a time in node-id order: re-verified on the
  integrated state, then written to the user's tree journalled (`workspace.Journal`), unless
  the user changed one of its files since the run began (their version wins; the patch is
  saved). A fix that no longer applies or breaks an earlier one goes back as a new attempt.
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import signal
import threading
import time
import traceback as tb
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_agentic.agent import (
    EDITOR_TOOL,
    Budget,
    BudgetSpent,
    Conversation,
    FatalApiError,
    Toolbox,
    Usage,
    converse,
    fatal_error,
)
from pytest_agentic.atomic import write_atomic
from pytest_agentic.config import DEFAULT_UNREADABLE
from pytest_agentic.errors import AgenticError
from pytest_agentic.interrupts import finishing, interruptible
from pytest_agentic.plugin import RUN_LOCK
from pytest_agentic.report import (
    Outcome,
    RunReport,
    new_run_dir,
    write_patch,
    write_report,
    write_transcript,
)
from pytest_agentic.runner import RerunSettings, RunResult, run_tests
from pytest_agentic.sandbox import Base, Workspace, acquire_lock, fingerprint, snapshot_base
from pytest_agentic.sandbox import describe as describe_sandbox
from pytest_agentic.scope import PathPolicy
from pytest_agentic.tasks import Task
from pytest_agentic.workspace import Journal

CONTEXT_LINES = 12
MAX_FRAMES = 6
MAX_IMPORTED_LINES = 300
# How long an interrupted run waits for its workers to reach their next step; a worker still
# inside an API request after that is abandoned (a daemon thread: it never touches the user's
# tree, and its workspace is removed here).
STOP_GRACE_SECONDS = 5.0


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
    workers: int = 4
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
    error: str = ""  # the exception's type name, as pytest's crash line shows it


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
    crash = getattr(longrepr, "reprcrash", None)
    crash_line = (str(getattr(crash, "message", "") or "").splitlines() or [""])[0]
    path, lineno, _ = report.location
    return Failure(
        nodeid=report.nodeid,
        when=report.when or "call",
        report=report.longreprtext,
        path=path,
        lineno=(lineno + 1) if isinstance(lineno, int) else None,
        frames=tuple(frames),
        error=_error_type(crash_line),
    )


def _error_type(crash_line: str) -> str:
    # "ZeroDivisionError: division by zero", "mod.Error", or a rewritten "assert x == y".
    match = re.match(r"[A-Za-z_][\w.]*(?=:|$)", crash_line)
    return match.group(0) if match else "AssertionError"


# --- plan -----------------------------------------------------------------------------------


@dataclass
class Job:
    """One conversation's worth of work: failures that share a cause, and what became of them.

    Owned by the worker thread while an attempt runs, by the main thread otherwise."""

    index: int
    failures: tuple[Failure, ...]
    context: list[dict[str, Any]] = field(default_factory=list)  # the first message
    attempts: int = 0
    outcome: str = "not_fixed"
    reason: str = ""
    files: tuple[str, ...] = ()
    feedback: str = ""
    journal: Journal | None = None  # the integration into the user's tree, until kept

    @property
    def nodeids(self) -> list[str]:
        return [f.nodeid for f in self.failures]


def cause(root: Path, failure: Failure) -> tuple[str, ...]:
    """What a failure is grouped by: its innermost project frame and its error type; a
    failure without a project frame is a cause of its own."""
    for path, lineno in reversed(failure.frames):
        full = Path(path) if os.path.isabs(path) else root / path
        try:
            rel = full.resolve().relative_to(root.resolve()).as_posix()
        except (ValueError, OSError):
            continue
        if "site-packages" not in rel and not rel.startswith((".venv/", "venv/")):
            return (rel, str(lineno), failure.error)
    return ("", failure.nodeid)


def plan(root: Path, failures: Sequence[Failure]) -> list[Job]:
    """Jobs in node-id order (the order fixes are integrated in)."""
    groups: dict[tuple[str, ...], list[Failure]] = {}
    for failure in sorted(failures, key=lambda f: f.nodeid):
        groups.setdefault(cause(root, failure), []).append(failure)
    return [Job(i, tuple(group)) for i, group in enumerate(groups.values(), start=1)]


# --- the run's shared state -------------------------------------------------------------------


class Cancelled(BaseException):
    """The run was interrupted: a worker stops at its next step. A BaseException, like
    KeyboardInterrupt, so no `except Exception` on the way swallows it."""


class Halted(Exception):
    """Another worker stopped the run (`Run.halt`): this attempt ends before its next request."""

    requests = 1


class Tainted(BaseException):
    """A re-run changed files the editor did not write: the attempt is rejected at once."""

    def __init__(self, files: Sequence[str]) -> None:
        super().__init__(", ".join(files))
        self.files = list(files)


def _no_event(kind: str, **fields: Any) -> None:
    pass


class Run:
    """What every thread of one fix run shares: settings, the integrated base, the client,
    token totals, the cancel flag and the workspaces to remove."""

    def __init__(
        self,
        root: Path,
        settings: Settings,
        base: Base,
        run_dir: Path | None,
        on_event: Callable[..., None],
    ) -> None:
        self.root = root
        self.settings = settings
        self.base = base
        self.integrated = base  # the base plus every fix integrated so far
        self.chain: list[tuple[Job, Fix]] = []  # the integrated fixes, in order
        self.verified: tuple[Base, frozenset[str]] | None = None  # a state, the ids passing
        self.written: dict[str, str | None] = {}  # what we left in the user's files
        self.run_dir = run_dir
        self.on_event = on_event
        self.usage = Usage()
        self.budget = Budget(
            self.usage,
            max_tokens=settings.budget_tokens,
            max_cost_usd=settings.max_cost_usd,
            model=settings.model,
        )
        # Why the whole run stops (budget spent, a refused key, an unreachable API, our own
        # bug): set once, by the first worker that hits it; no request goes out after it.
        self.halt: BaseException | None = None
        self.rerun_seconds = 0.0
        self.cancel = threading.Event()
        self.primed = threading.Event()
        self._primer_taken = False
        self._lock = threading.Lock()
        self._workspaces: dict[int, Workspace] = {}
        self.futures: list[Future[Fix | None]] = []
        self._client: Any = None

    # --- resources ---

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = _make_client(self.settings)
            return self._client

    def workspace(self, base: Base | None = None) -> Workspace:
        self.check_cancel()
        ws = (base or self.integrated).workspace()
        with self._lock:
            self._workspaces[id(ws)] = ws
        if self.cancel.is_set():  # interrupted while copying: the cleanup may have run
            self.discard(ws)
            raise Cancelled
        return ws

    def discard(self, ws: Workspace) -> None:
        with self._lock:
            self._workspaces.pop(id(ws), None)
        ws.remove()

    def close(self) -> None:
        """Remove every workspace and close the client (also after an interrupt)."""
        with self._lock:
            left = list(self._workspaces.values())
            self._workspaces.clear()
            client, self._client = self._client, None
        for ws in left:
            ws.remove()
        if client is not None:
            client.close()

    # --- accounting ---

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Cancelled

    def over_budget(self) -> bool:
        budget = self.budget
        return (budget.max_tokens is not None and self.usage.total >= budget.max_tokens) or (
            budget.max_cost_usd is not None and budget.cost() >= budget.max_cost_usd
        )

    def stop(self, exc: BaseException) -> None:
        """The run stops for `exc` (the first reason wins): no new job, no new request."""
        with self._lock:
            if self.halt is None:
                self.halt = exc

    def rerun(self, nodeids: Sequence[str], ws: Workspace | None) -> RunResult:
        """Re-run `nodeids` in `ws` (sandboxed), or in the user's tree before any agent code."""
        self.check_cancel()
        result = run_tests(nodeids, self.settings.rerun, workspace=ws)
        with self._lock:
            self.rerun_seconds += result.seconds
        self.check_cancel()
        return result

    def user_changed(self, rel: str) -> bool:
        """Whether the user's `rel` differs from what the run began with (or last wrote)."""
        expected = self.written[rel] if rel in self.written else self.base.fingerprints.get(rel)
        return fingerprint(self.root / rel) != expected

    def take_primer(self) -> bool:
        """True for the run's very first request: it goes out alone and caches the prefix."""
        with self._lock:
            first, self._primer_taken = not self._primer_taken, True
            return first


class _Client:
    """The SDK client as one attempt sees it: checks the cancel flag before each request, lets
    the run's first request cache the shared prefix before any other goes out, and keeps the
    conversation so far for the transcript of an attempt cut short."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.messages = self
        self.transcript: list[dict[str, Any]] = []
        self.sent = 0

    def create(self, **request: Any) -> Any:
        run = self.run
        run.check_cancel()
        primer = not run.primed.is_set() and run.take_primer()
        while not primer and not run.primed.wait(0.1):
            run.check_cancel()
        if run.halt is not None:  # another worker stopped the run: this attempt ends here
            halted = Halted()
            halted.requests = self.sent
            raise halted
        self.sent += 1
        client = run.client()
        try:
            response = client.messages.create(**request)
        except Exception as exc:
            # A refused key or an unreachable API stops the run before the primer's gate
            # lets the other workers send theirs (issue #10: one request, not one per job).
            fatal = fatal_error(exc, client, str(request.get("model", "")))
            if fatal is not None:
                run.stop(fatal)
            raise
        finally:
            if primer:
                run.primed.set()
        assistant = [block.to_dict() for block in response.content]
        self.transcript = [*request["messages"], {"role": "assistant", "content": assistant}]
        return response


class _EditLog(Journal):
    """The editor's record in a workspace: which files it wrote. No originals are saved: the
    workspace is thrown away, never restored."""

    def save(self, rel: str) -> None:
        self.entries.setdefault(rel, len(self.entries))


class _AttemptTools(Toolbox):
    """The agent's tools rooted at the workspace: each call checks the cancel flag first, and
    every editor write is recorded for the integrity check."""

    def __init__(self, run: Run, ws: Workspace, rerun: Callable[[], str]) -> None:
        settings = run.settings
        policy = PathPolicy(
            ws.path,
            task=settings.task,
            protected=settings.protected,
            for_agent=True,
            unreadable=settings.unreadable,
        )
        super().__init__(
            ws.path,
            policy,
            _EditLog(ws.path, "editor"),
            rerun,
            view_max_chars=settings.view_max_chars,
            write_max_bytes=settings.write_max_bytes,
        )
        self.ws = ws
        self.run = run

    def call(self, name: str, params: Any) -> tuple[str, bool]:
        self.run.check_cancel()
        try:
            return super().call(name, params)
        finally:
            if name == EDITOR_TOOL["name"]:
                for rel in self.journal.touched:
                    self.ws.note_edit(rel)


# --- one attempt ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """The judgement of one attempt: kept or not, why (one line), and what the next attempt
    is told. `final`: no further attempt (the agent gave up)."""

    kept: bool
    reason: str = ""
    detail: str = ""
    final: bool = False


@dataclass(frozen=True)
class Fix:
    """A kept attempt's change: the editor's files as a git patch against `base`, the state
    its workspace was copied from."""

    patch: str
    files: tuple[str, ...]
    base: Base


def checked_rerun(run: Run, ws: Workspace, nodeids: Sequence[str]) -> RunResult:
    """A sandboxed re-run in the workspace, then the integrity check: anything but the editor
    changing a file (tracked, protected, `.git`) raises `Tainted`."""
    result = run.rerun(nodeids, ws)
    foreign = ws.foreign_changes()
    if foreign:
        raise Tainted(foreign)
    return result


def judge(
    run: Run, conversation: Conversation, ws: Workspace, fix: Fix, nodeids: list[str]
) -> Verdict:
    """The one place an attempt is judged: `fix` is the editor's change in `ws`. The
    validation gate (regression, tamper, diff budget, project checks, reviewer) plugs in
    after the target tests pass; every re-run in `ws` goes through `checked_rerun`."""
    if conversation.ended == "tainted":
        return Verdict(False, conversation.reason)
    if conversation.ended == "api_error":
        return Verdict(False, conversation.reason)
    if conversation.ended == "gave_up":
        return Verdict(False, f"the agent gave up: {conversation.reason}", final=True)
    if not fix.patch.strip():
        return Verdict(False, "the agent changed no file")
    try:
        result = checked_rerun(run, ws, nodeids)
    except Tainted as exc:
        return Verdict(False, _tainted(exc))
    if result.passed(nodeids):
        return Verdict(True)
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
    return Verdict(False, why, result.output[-4000:])


def _tainted(exc: Tainted) -> str:
    return (
        "running the tests changed files the editor did not write "
        f"({', '.join(exc.files)}); the attempt was rejected"
    )


def attempt(run: Run, job: Job) -> tuple[Fix | None, Verdict]:
    """One attempt of `job` in a fresh workspace of the integrated state; the workspace is
    removed whatever happens."""
    import anthropic

    settings = run.settings
    nodeids = job.nodeids
    base = run.integrated  # read once: the main thread moves it on as fixes are integrated
    ws = run.workspace(base)
    try:

        def for_the_model() -> str:
            return describe(checked_rerun(run, ws, nodeids), nodeids)

        tools = _AttemptTools(run, ws, for_the_model)
        client = _Client(run)
        message = list(job.context)
        if job.feedback:
            message.append({"type": "text", "text": job.feedback})
        try:
            conversation = converse(
                client,
                model=settings.model,
                first_message=message,
                toolbox=tools,
                max_turns=settings.max_turns,
                usage=run.usage,
                api_error=anthropic.APIError,
                budget=run.budget,  # shared by the workers, checked before each request
            )
        except Tainted as exc:
            conversation = Conversation("tainted", _tainted(exc), client.transcript)
        if run.run_dir is not None:
            write_transcript(
                run.run_dir, job.index, nodeids[0], job.attempts, conversation.transcript
            )
        files = tools.journal.touched
        fix = Fix(ws.diff(files), tuple(files), base)
        verdict = judge(run, conversation, ws, fix, nodeids)
        return (fix if verdict.kept else None), verdict
    finally:
        run.discard(ws)


def work(run: Run, job: Job) -> Fix | None:
    """Attempts until one is kept, the agent gives up or `max_attempts` are spent (a worker)."""
    try:
        while job.attempts < run.settings.max_attempts:
            if run.over_budget():
                job.reason = job.reason or "budget spent"
                if job.attempts == 0:
                    job.outcome = "skipped"
                return None
            job.attempts += 1
            run.on_event("attempt", job=job, attempt=job.attempts)
            fix, verdict = attempt(run, job)
            run.on_event("judged", job=job, attempt=job.attempts, verdict=verdict)
            if fix is not None:
                return fix
            job.reason = verdict.reason
            job.feedback = feedback(job.attempts, verdict.reason, verdict.detail)
            if verdict.final:
                return None
        return None
    except Exception as exc:
        # Stop the others before the primer's gate opens: after a refused key, no worker
        # waiting on the first request may send one of its own.
        if not isinstance(exc, Halted):
            run.stop(exc)
        raise
    finally:
        run.primed.set()  # a job that never sent a request must not hold the others back


def feedback(attempt: int, reason: str, detail: str = "") -> str:
    return (
        f"Attempt {attempt} did not fix it: {reason}. Its changes were discarded; you start "
        "again from the code as it was. Try a different approach."
        + (f"\n```\n{detail}\n```" if detail else "")
    )


# --- integrate --------------------------------------------------------------------------------


def integrate(run: Run, job: Job, fix: Fix, fixed_before: list[str]) -> str | None:
    """Apply a kept fix on top of the integrated state: None when it is in (or the user's
    version won, or an earlier fix already mended it), else why it must be tried again.

    Re-verified first on the integrated state with the fix applied (sandboxed, together with
    every test fixed before); only then written to the user's tree, journalled. The re-run is
    skipped when that state is exactly the one the attempt was judged in.
    """
    if _users_version_wins(run, job, fix):
        return None
    try:
        candidate = run.integrated.derive(fix.patch)
    except AgenticError:
        if _passes(run, run.integrated, job.nodeids):
            job.outcome, job.reason = "fixed", "fixed by an earlier fix"
            return None
        return "its fix conflicts with the fixes integrated before it; not integrated"
    nodeids = [*job.nodeids, *fixed_before]
    if fix.base is not run.integrated or fixed_before:
        try:
            result = _rerun_in(run, candidate, nodeids)
        except Tainted as exc:
            return _tainted(exc)
        broken = [n for n in fixed_before if n in result.failing(nodeids)]
        if broken:
            return f"its fix broke {', '.join(broken)}, fixed before it; not integrated"
        if not result.passed(nodeids):
            return "its fix no longer makes the test pass on top of the fixes integrated before it"
    _apply(run, job, fix, candidate)
    run.verified = (candidate, frozenset(nodeids))
    return None


def integrate_together(run: Run, batch: list[tuple[Job, Fix]], fixed_before: list[str]) -> bool:
    """Kept fixes of jobs that finished together, verified with one re-run of all their tests
    and every earlier fix's, then applied one at a time in node-id order. False (nothing
    done) when a file is shared, the user changed one, or the lot fails: then one by one."""
    files = [rel for _, fix in batch for rel in fix.files]
    if len(files) != len(set(files)) or (
        not run.settings.dry_run and any(run.user_changed(rel) for rel in files)
    ):
        return False
    try:
        candidate = run.integrated.derive("".join(fix.patch for _, fix in batch))
    except AgenticError:
        return False
    nodeids = [n for job, _ in batch for n in job.nodeids] + fixed_before
    try:
        if not _rerun_in(run, candidate, nodeids).passed(nodeids):
            return False
    except Tainted:
        return False
    for job, fix in batch:
        _apply(run, job, fix, candidate)
    run.verified = (candidate, frozenset(nodeids))
    return True


def _users_version_wins(run: Run, job: Job, fix: Fix) -> bool:
    """The user changed one of the fix's files during the run: the fix is saved, not applied."""
    theirs = [] if run.settings.dry_run else [rel for rel in fix.files if run.user_changed(rel)]
    if not theirs:
        return False
    path = _save_patch(run, job, fix)
    job.outcome = "not_fixed"
    job.reason = (
        f"you changed {', '.join(theirs)} during the run: your version was kept; "
        f"the fix is saved as {path}"
    )
    run.on_event("user_won", job=job, files=theirs, patch=path)
    return True


def _apply(run: Run, job: Job, fix: Fix, state: Base) -> None:
    """A verified fix into the user's tree (journalled; not in a dry run) and the chain."""
    path = _save_patch(run, job, fix)
    if not run.settings.dry_run:
        job.journal = Journal(run.root, f"{os.getpid()}-{job.index}")
        for rel in fix.files:
            _write_user_file(run, job.journal, rel, state.path / rel)
    run.chain.append((job, fix))
    run.integrated = state
    job.outcome, job.reason, job.files = "fixed", "", fix.files
    run.on_event("integrated", job=job, patch=path)


def _save_patch(run: Run, job: Job, fix: Fix) -> Path | None:
    if run.run_dir is None:
        return None
    return write_patch(run.run_dir, job.index, job.nodeids[0], fix.patch)


def _write_user_file(run: Run, journal: Journal, rel: str, source: Path) -> None:
    """One file of a verified fix into the user's tree: the original journalled first."""
    journal.save(rel)
    target = run.root / rel
    if source.is_file():
        write_atomic(target, source.read_bytes())
    elif target.is_file() or target.is_symlink():
        target.unlink()
    run.written[rel] = fingerprint(target)


def _rerun_in(run: Run, state: Base, nodeids: list[str]) -> RunResult:
    """A checked re-run in a fresh workspace of `state` (raises `Tainted`)."""
    ws = run.workspace(state)
    try:
        return checked_rerun(run, ws, nodeids)
    finally:
        run.discard(ws)


def _passes(run: Run, state: Base, nodeids: list[str]) -> bool:
    try:
        return _rerun_in(run, state, nodeids).passed(nodeids)
    except Tainted:
        return False


# --- the session ------------------------------------------------------------------------------


class FixSession:
    """The pytest hooks, and the orchestration of one fix run over the session's failures.

    `on_event(kind, **fields)` hears what happens, from worker threads too (`attempt` and
    `judged` come from workers): `planned` (jobs), `attempt` (job, attempt), `judged` (job,
    attempt, verdict), `integrated` and `user_won` (job, patch), `done` (report). The default
    ignores it.
    """

    def __init__(
        self,
        config: pytest.Config,
        settings: Settings,
        on_event: Callable[..., None] | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        # The project root (plugin.py took the run lock there); pytest's rootdir may lie
        # above it and serves only to run tests as pytest did.
        lock = config.stash.get(RUN_LOCK, None)
        self.root = lock.root if lock is not None else Path(config.rootpath)
        self.rootdir = Path(config.rootpath)
        self.failures: dict[str, Failure] = {}
        self.report: RunReport | None = None
        self.on_event = on_event or _no_event
        self._rerun_seconds = 0.0

    # --- pytest hooks -----------------------------------------------------------------------

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
                self.report.error = _one_line(exc)
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
        if report.outcomes:
            rerun = self.settings.rerun
            terminalreporter.write_line(describe_sandbox(rerun.sandbox, rerun.sandbox_network))

    # --- the run ----------------------------------------------------------------------------

    def run(self, failures: list[Failure]) -> RunReport:
        settings = self.settings
        report = RunReport(model=settings.model, dry_run=settings.dry_run)
        started = time.perf_counter()
        jobs: list[Job] = []
        flaky: list[str] = []
        run: Run | None = None
        children = _child_pids()
        try:
            if failures:
                report.run_dir = new_run_dir(self.root)
                flaky = self._confirm([f.nodeid for f in failures])
                jobs = plan(self.rootdir, [f for f in failures if f.nodeid not in flaky])
                if jobs:
                    base = snapshot_base(self.root, self._scratch())
                    run = Run(self.root, settings, base, report.run_dir, self.on_event)
                    # The first message is read under the agent's read policy too.
                    policy = PathPolicy(
                        self.root,
                        task=settings.task,
                        protected=settings.protected,
                        for_agent=True,
                        unreadable=settings.unreadable,
                    )
                    for job in jobs:
                        job.context = first_message(
                            self.rootdir, job.failures, settings.task, policy
                        )
                    self.on_event("planned", jobs=jobs)
                    dispatch(run, jobs)
                    verify(run, jobs)
        except KeyboardInterrupt:
            # A second Ctrl-C is ignored from here on (interrupts.py): the restore runs out.
            report.interrupted = True
        except Exception as exc:
            # Our bug or the machine's (a full disk): one line, the traceback in the run
            # folder; _stop puts back an integration cut short, verified fixes are kept.
            if run is not None:
                run.stop(exc)
            else:
                report.error = _one_line(exc)
                _error_log(report.run_dir, exc)
        finally:
            try:
                finishing()  # a Ctrl-C from here on is ignored: nothing is left half done
            except KeyboardInterrupt:
                pass  # one already on its way when the run got here: too late to matter
            if run is not None:
                stop(run, jobs, children, restore=report.interrupted)
        if run is not None and run.halt is not None:
            if isinstance(run.halt, FatalApiError):
                report.fatal = str(run.halt)
            elif not isinstance(run.halt, BudgetSpent):
                report.error = _one_line(run.halt)
                _error_log(report.run_dir, run.halt)
        for job in jobs:
            if job.outcome == "not_fixed" and not job.reason:  # never "not fixed ()"
                job.reason = "interrupted" if report.interrupted else "stopped by an error"
        report.outcomes = outcomes(failures, flaky, jobs)
        usage = run.usage if run is not None else Usage()
        report.usage = {name: getattr(usage, name) for name in vars(usage)}
        report.seconds = {
            "fix_loop": round(time.perf_counter() - started, 3),
            "test_reruns": round(self._rerun_seconds + (run.rerun_seconds if run else 0.0), 3),
        }
        paths = [
            p
            for p in (report.run_dir and report.run_dir / "report.json", settings.report)
            if p is not None
        ]
        write_report(report, paths)
        self.on_event("done", report=report)
        return report

    def _confirm(self, nodeids: list[str]) -> list[str]:
        """Re-run every failure once, in the user's tree (no agent code exists yet); one that
        passes is flaky and never sent to the model."""
        result = run_tests(nodeids, self.settings.rerun)
        self._rerun_seconds = result.seconds
        return [n for n in nodeids if result.outcomes.get(n) == "passed"]

    def _scratch(self) -> Path:
        lock = self.config.stash.get(RUN_LOCK, None)
        if lock is None:  # the plugin took none (the fixer used on its own): take it here
            lock = acquire_lock(self.root)
            self.config.stash[RUN_LOCK] = lock
            self.config.add_cleanup(lock.release)
        return lock.scratch


# --- orchestration ----------------------------------------------------------------------------


def dispatch(run: Run, jobs: list[Job]) -> None:
    """Up to `workers` jobs at once; their fixes integrated one at a time, in node-id
    order, each as soon as every job before it is settled."""
    waiting = list(jobs)
    running: dict[Future[Fix | None], Job] = {}
    settled: dict[int, Fix | None] = {}
    position = 0
    while position < len(jobs):
        job = jobs[position]
        if job.index in settled:
            batch: list[tuple[Job, Fix]] = []
            for later in jobs[position:]:
                fix = settled.get(later.index)
                if fix is None:
                    break
                batch.append((later, fix))
            before = _fixed(jobs[:position])
            if len(batch) > 1 and integrate_together(run, batch, before):
                for done_job, _ in batch:
                    del settled[done_job.index]
                position += len(batch)
            elif settle(run, job, settled.pop(job.index), before):
                position += 1
            else:
                waiting.insert(0, job)  # again, against the integrated state
            continue
        while waiting and len(running) < run.settings.workers:
            ready = waiting.pop(0)
            if run.halt is not None:  # the run stopped: nothing more is dispatched
                _stopped(run, ready, run.halt)
                settled[ready.index] = None
                continue
            if run.chain and ready.attempts == 0 and _passes(run, run.integrated, ready.nodeids):
                ready.outcome, ready.reason = "fixed", "fixed by an earlier fix"
                settled[ready.index] = None
                continue
            future = _spawn(work, run, ready)
            run.futures.append(future)
            running[future] = ready
        # A timeout, so Ctrl-C and SIGTERM reach the main thread while workers run.
        finished, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
        for future in finished:
            ready = running.pop(future)
            try:
                settled[ready.index] = future.result()
            except Exception as exc:
                # Budget spent, a refused key, an unreachable API, or our bug in a worker:
                # the whole run stops (the attempt's workspace is already discarded).
                if not isinstance(exc, Halted):
                    run.stop(exc)
                _stopped(run, ready, exc)
                settled[ready.index] = None


def _fixed(jobs: list[Job]) -> list[str]:
    return [n for job in jobs if job.outcome == "fixed" for n in job.nodeids]


def settle(run: Run, job: Job, fix: Fix | None, fixed_before: list[str]) -> bool:
    """Integrate a finished job's fix; False when it goes back for another attempt."""
    if fix is None:
        return True
    why = integrate(run, job, fix, fixed_before)
    if why is None:
        return True
    job.reason = why
    if job.attempts >= run.settings.max_attempts or run.over_budget() or run.halt is not None:
        return True
    job.feedback = feedback(job.attempts, why)
    return False


def verify(run: Run, jobs: list[Job]) -> None:
    """All fixed tests together on the integrated state (sandboxed); undo the newest
    integrated fix while any fails (a later fix broke an earlier one). Skipped when the last
    integration already ran every fixed test on this very state."""
    while run.chain:
        fixed = _fixed(jobs)
        if run.verified is not None and run.verified[0] is run.integrated:
            if set(fixed) <= run.verified[1]:
                return
        try:
            broken = _rerun_in(run, run.integrated, fixed).failing(fixed)
        except Tainted as exc:
            broken = exc.files
        if not broken:
            return
        last, _ = run.chain.pop()
        state = run.base
        for _, fix in run.chain:  # rebuilt: fixes integrated together share one state
            state = state.derive(fix.patch)
        run.integrated = state
        _undo(run, last)
        last.outcome = "not_fixed"
        last.reason = f"its fix broke {', '.join(broken)} in the final verification; reverted"
        last.files = ()


def stop(run: Run, jobs: list[Job], children: set[int], restore: bool) -> None:
    """Stop the workers; put back a fix cut short while being written to the user's tree
    (after an interrupt or a bug) and, interrupted, every integrated fix; remove every
    workspace. The integrated fixes that stay have their journals kept."""
    run.cancel.set()
    if any(not f.done() for f in run.futures):
        _kill_new_children(children)  # re-runs in flight end now, not at their timeout
        wait(run.futures, timeout=STOP_GRACE_SECONDS)
    integrated = [job for job, _ in reversed(run.chain)]
    # A job cut short while being written to the user's tree is the newest of all; it goes
    # back whatever stopped the run (an error too), the integrated ones only on Ctrl-C.
    cut = [j for j in jobs if j.journal is not None and j not in integrated]
    for job in cut + (integrated if restore else []):
        try:
            _undo(run, job)
        except KeyboardInterrupt:
            pass  # held until that replay was done (interrupts.py); carry on restoring
        job.outcome, job.files = "not_fixed", ()
        job.reason = "interrupted" if restore else "stopped while its fix was written"
    for job in integrated:
        if job.journal is not None:
            job.journal.keep()
    run.close()


def outcomes(failures: list[Failure], flaky: list[str], jobs: list[Job]) -> list[Outcome]:
    """One entry per original failure, in the session's order, whatever job it was in."""
    by_id = {f.nodeid: job for job in jobs for f in job.failures}
    found = []
    for f in failures:
        if f.nodeid in flaky:
            found.append(Outcome(f.nodeid, "flaky", 0, (), "passed on re-run"))
        elif f.nodeid in by_id:
            job = by_id[f.nodeid]
            found.append(Outcome(f.nodeid, job.outcome, job.attempts, job.files, job.reason))
    return found


def _undo(run: Run, job: Job) -> None:
    """Take an integrated fix out of the user's tree again (its journal restored)."""
    if job.journal is not None:
        for rel in job.journal.restore():
            run.written[rel] = fingerprint(run.root / rel)
        job.journal = None


def _spawn(fn: Callable[..., Fix | None], *args: Any) -> Future[Fix | None]:
    """`fn(*args)` on a daemon thread: an interrupted run does not wait at exit for a worker
    stuck in an API request (a ThreadPoolExecutor's threads are joined at exit)."""
    future: Future[Fix | None] = Future()

    def target() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # Cancelled, Tainted, bugs: the main thread decides
            future.set_exception(exc)

    threading.Thread(target=target, name="pytest-agentic-worker", daemon=True).start()
    return future


def _child_pids() -> set[int]:
    """This process's children (Linux /proc; elsewhere none are known)."""
    me = str(os.getpid())
    found: set[int] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and fields[1] == me:
            found.add(int(entry))
    return found


def _kill_new_children(before: set[int]) -> None:
    """Kill the child processes the run started (re-runs, git) that are still running; the
    session's own children from before the run are left alone."""
    for pid in _child_pids() - before:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def _error_log(run_dir: Path | None, exc: BaseException) -> None:
    if run_dir is not None:
        with contextlib.suppress(OSError):
            (run_dir / "error.log").write_text("".join(tb.format_exception(exc)))


def _stopped(run: Run, job: Job, exc: BaseException) -> None:
    """`job` ends because the run stopped (`run.halt`); `exc` is what ended it, if it ran."""
    halt = run.halt
    if isinstance(halt, BudgetSpent):
        job.reason = str(halt).splitlines()[0]
    elif isinstance(halt, FatalApiError):
        job.reason = "the run stopped on an API error"  # said once, in the `stopped:` line
    else:
        job.reason = "the run stopped on an internal error"
    # An attempt that never reached the model is no attempt.
    if job.attempts <= 1 and getattr(exc, "requests", 1) == 0:
        job.attempts = 0
    if job.attempts == 0:
        job.outcome = "skipped"


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
    if policy is not None and policy.check_read(os.path.join(root, rel)) is not None:
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
