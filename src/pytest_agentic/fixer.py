"""The fix session: plan, dispatch, validate, integrate, verify, report (DESIGN.md's data flow).

Registered by `plugin.py` only with `--agent-fix` and only in the controller process (under
pytest-xdist the workers just run tests; their reports reach the controller). `anthropic` is
imported lazily: in a thread, while the failures' confirmation re-run runs.

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

import contextlib
import dataclasses
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
from pytest_agentic.context import first_message, read_lines, rel_inside
from pytest_agentic.errors import AgenticError
from pytest_agentic.interrupts import finishing, interruptible
from pytest_agentic.plugin import RUN_LOCK
from pytest_agentic.progress import LiveProgress, parse_refusal
from pytest_agentic.report import (
    AttemptDetail,
    CheckResult,
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
from pytest_agentic.sandbox import Base, Workspace, acquire_lock, fingerprint, snapshot_base
from pytest_agentic.sandbox import _git as sandbox_git
from pytest_agentic.sandbox import describe as describe_sandbox
from pytest_agentic.scope import PathPolicy
from pytest_agentic.tasks import Task
from pytest_agentic.validate import (
    FileChange,
    affected_tests,
    assertion_literals,
    compact,
    diff_budget,
    project_checks,
    regression,
    special_cases,
    tamper,
)
from pytest_agentic.validate import Verdict as Check
from pytest_agentic.workspace import Journal

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
    context_max_chars: int = 24_000
    workers: int = 4
    commit: bool = False
    review: bool = True
    review_model: str = ""
    max_diff_lines: int = 200
    checks: tuple[str, ...] = ()
    xdist_workers: str | None = None  # the session's `-n`, repeated by the final run
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
    # What a person acts on (issue 11): edits refused, the agent's question, tokens spent,
    # the kept patch (its file in the run folder and its text), the commit made of it, and
    # the job whose fix mended this one before it was tried.
    refusals: list[Refused] = field(default_factory=list)
    question: str = ""
    usage: Usage = field(default_factory=Usage)
    patch: str = ""
    diff: str = ""
    commit: str = ""
    fixed_by: str = ""
    details: list[AttemptDetail] = field(default_factory=list)  # the gate's say, per attempt

    @property
    def nodeids(self) -> list[str]:
        return [f.nodeid for f in self.failures]

    def heard(self, kind: str, fields: dict[str, Any]) -> None:
        """Keep what the tool calls showed: refusals and a give-up question."""
        if kind != "tool":
            return
        raw = fields.get("input")
        params: dict[str, Any] = raw if isinstance(raw, dict) else {}
        if fields.get("is_error"):
            refusal = parse_refusal(str(fields.get("result", "")), params)
            if refusal is not None and Refused(*refusal) not in self.refusals:
                self.refusals.append(Refused(*refusal))
        if fields.get("name") == "give_up":
            self.question = str(params.get("question", "")).strip()

    def outcomes(self) -> list[Outcome]:
        """One entry per node id; the others of a job read `fixed by the fix for` its first."""
        first = self.nodeids[0]
        reason = self.reason
        if self.question:  # reported on its own line and in the JSON `question`
            reason = reason.replace(f" (question: {self.question})", "")
        usage = {name: getattr(self.usage, name) for name in vars(self.usage)}
        return [
            Outcome(
                nodeid,
                self.outcome,
                self.attempts,
                self.files if nodeid == first else (),
                reason,
                refusals=tuple(self.refusals) if nodeid == first else (),
                question=self.question if nodeid == first else "",
                fixed_by=self.fixed_by
                or (first if nodeid != first and self.outcome == "fixed" else ""),
                usage=usage if nodeid == first else {},
                patch=self.patch if nodeid == first else "",
                commit=self.commit if nodeid == first else "",
                attempts_detail=tuple(self.details) if nodeid == first else (),
            )
            for nodeid in self.nodeids
        ]


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
        early: EarlyClient | None = None,
    ) -> None:
        self.root = root
        self._early = early
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
        # From the session (issue 9): files the agent may not write on top of `protected`,
        # the node ids that passed, and test files a re-run may name by path.
        self.protected_paths: frozenset[str] = frozenset()
        self.passed: list[str] = []
        self.whole_files: set[str] = set()

    # --- resources ---

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                early, self._early = self._early, None
                self._client = early.get() if early else _make_client(self.settings)
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
            early, self._early = self._early, None
        if early is not None:  # built during the confirm re-run, never asked for
            early.close()
        for ws in left:
            ws.remove()
        if client is not None:
            client.close()

    # --- accounting ---

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Cancelled

    def add_usage(self, usage: Usage) -> None:
        self.usage.add(usage)

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

    def rerun(
        self, nodeids: Sequence[str], ws: Workspace | None, rerun: RerunSettings | None = None
    ) -> RunResult:
        """Re-run `nodeids` in `ws` (sandboxed), or in the user's tree before any agent code."""
        self.check_cancel()
        result = run_tests(nodeids, rerun or self.settings.rerun, workspace=ws)
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
            protected_paths=run.protected_paths,
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
    checks: tuple[Check, ...] = ()  # the gate's checks that ran, in order (issue 9)


@dataclass(frozen=True)
class Fix:
    """A kept attempt's change: the editor's files as a git patch against `base`, the state
    its workspace was copied from."""

    patch: str
    files: tuple[str, ...]
    base: Base


def checked_rerun(
    run: Run, ws: Workspace, nodeids: Sequence[str], rerun: RerunSettings | None = None
) -> RunResult:
    """A sandboxed re-run in the workspace, then the integrity check: anything but the editor
    changing a file (tracked, protected, `.git`) raises `Tainted`."""
    result = run.rerun(nodeids, ws, rerun)
    foreign = ws.foreign_changes()
    if foreign:
        raise Tainted(foreign)
    return result


def judge(
    run: Run,
    conversation: Conversation,
    ws: Workspace,
    fix: Fix,
    nodeids: list[str],
    job: Job | None = None,
) -> Verdict:
    """The one place an attempt is judged: `fix` is the editor's change in `ws`. The target
    tests pass (every re-run in `ws` goes through `checked_rerun`, the integrity check), then
    the validation gate (`gate`): regression, tamper, diff budget, project checks, reviewer."""
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
        return Verdict(False, _tainted(exc), checks=(Check("integrity", False, _tainted(exc)),))
    if result.passed(nodeids):
        checks = [Check("target", True, "the failing test(s) pass")]
        if job is not None:
            checks += gate(run, job, ws, fix.files, result.output)
        failed = next((c for c in checks if not c.ok), None)
        if failed is None:
            return Verdict(True, checks=tuple(checks))
        return Verdict(False, failed.reason, failed.feedback, checks=tuple(checks))
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
    detail = f"```\n{result.output[-4000:]}\n```"
    return Verdict(False, why, detail, checks=(Check("target", False, why, detail),))


def gate(run: Run, job: Job, ws: Workspace, files: Sequence[str], output: str) -> list[Check]:
    """The validation gate after the target passes, in order, until the first "no"."""
    settings = run.settings
    changes = _changes(ws, files)
    changed = [c.path for c in changes]

    def no_regression() -> Check:
        # The session's passing tests the change can reach, re-run in the workspace.
        passing = [n for n in run.passed if n not in job.nodeids]
        affected = affected_tests(ws.path, changed, passing, job.nodeids)
        if not affected:
            return Check("regression", True, "no passing test imports the changed files")
        try:
            result = checked_rerun(run, ws, compact(affected, run.whole_files))
        except Tainted as exc:
            return Check("integrity", False, _tainted(exc))
        return regression(affected, result.outcomes, result.output, result.timed_out)

    steps: list[Callable[[], Check]] = [
        no_regression,
        lambda: tamper(changes),
        lambda: diff_budget(changes, settings.max_diff_lines),
        lambda: project_checks(
            settings.checks,
            [c.path for c in changes if c.new is not None],
            ws.path,
            settings.rerun.timeout,
        ),
    ]
    if settings.review:
        steps.append(lambda: _review(run, job, ws, files, changes, output, checks))
    checks: list[Check] = []
    for step in steps:
        run.check_cancel()
        checks.append(step())
        if not checks[-1].ok:
            break
    return checks


def _changes(ws: Workspace, files: Sequence[str]) -> list[FileChange]:
    """The editor's files, as text before (the workspace's one commit: the state it was
    checked out from) and after."""

    def text(data: bytes | None) -> str | None:
        return None if data is None else data.decode("utf-8", "replace")

    changes = []
    for rel in files:
        proc = sandbox_git(ws.path, "show", f"HEAD:{rel}", check=False)
        old = proc.stdout if proc.returncode == 0 else None
        path = ws.path / rel
        new = path.read_bytes() if path.is_file() else None
        if old != new:
            changes.append(FileChange(rel, text(old), text(new)))
    return changes


def _review(
    run: Run,
    job: Job,
    ws: Workspace,
    files: Sequence[str],
    changes: list[FileChange],
    output: str,
    checks: list[Check],
) -> Check:
    """The reviewer's conversation: its own thread, read-only tools rooted at the workspace."""
    import anthropic

    from pytest_agentic.review import review, review_message

    literals: set[object] = set()
    for failure in job.failures:
        lines = read_lines(ws.path, failure.path) if failure.path else None
        if lines is not None:
            literals |= assertion_literals("\n".join(lines), failure.lineno)
    ran = "\n".join(f"{c.check}: {c.reason}" for c in checks)
    message = review_message(
        job.context[0]["text"] if job.context else "\n".join(job.nodeids),
        ws.diff(files),
        f"{ran}\n{output}",
        special_cases(changes, literals),
    )
    toolbox = Toolbox(
        ws.path,
        PathPolicy(ws.path, for_agent=True),
        _EditLog(ws.path, "review"),
        lambda: "",
        read_only=True,
    )
    usage = Usage()
    try:
        outcome = review(
            _Client(run),
            model=run.settings.review_model or run.settings.model,
            message=message,
            toolbox=toolbox,
            usage=usage,
            api_error=anthropic.APIError,
        )
    finally:
        run.add_usage(usage)
    if run.run_dir is not None:
        write_transcript(
            run.run_dir, job.index, job.nodeids[0], job.attempts, outcome.transcript, "review"
        )
    return outcome.verdict


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
                usage=job.usage,  # its own tokens; the shared budget counts the run's
                api_error=anthropic.APIError,
                budget=run.budget,  # shared by the workers, checked before each request
                on_event=lambda kind, **fields: run.on_event(kind, job=job, **fields),
            )
        except Tainted as exc:
            conversation = Conversation("tainted", _tainted(exc), client.transcript)
        if run.run_dir is not None:
            write_transcript(
                run.run_dir, job.index, nodeids[0], job.attempts, conversation.transcript
            )
        files = tools.journal.touched
        if conversation.ended in ("end_turn", "max_turns") and files:
            run.on_event("judge", job=job)  # the re-run that decides can take a while
        fix = Fix(ws.diff(files), tuple(files), base)
        verdict = judge(run, conversation, ws, fix, nodeids, job)
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
            job.details.append(
                AttemptDetail(
                    job.attempts,
                    fix is not None,
                    tuple(CheckResult(c.check, c.ok, c.reason) for c in verdict.checks),
                )
            )
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
    """What the next attempt is told. `detail` comes formatted (a re-run's output fenced, a
    reviewer's reason word for word)."""
    return (
        f"Attempt {attempt} did not fix it: {reason}. Its changes were discarded; you start "
        "again from the code as it was. Try a different approach."
        + (f"\n{detail}" if detail else "")
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
            job.outcome, job.fixed_by = "fixed", mender(run, job.nodeids)
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
    job.patch, job.diff = (path.name if path else ""), fix.patch
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


def _rerun_in(
    run: Run, state: Base, nodeids: list[str], rerun: RerunSettings | None = None
) -> RunResult:
    """A checked re-run in a fresh workspace of `state` (raises `Tainted`)."""
    ws = run.workspace(state)
    try:
        return checked_rerun(run, ws, nodeids, rerun)
    finally:
        run.discard(ws)


def mender(run: Run, nodeids: list[str]) -> str:
    """The node id whose integrated fix first made `nodeids` pass: the chain's states are
    rebuilt and tried oldest first (rare: most such failures share a job with their mender)."""
    state = run.base
    for earlier, fix in run.chain[:-1]:
        try:
            state = state.derive(fix.patch)
        except AgenticError:
            break
        if _passes(run, state, nodeids):
            return earlier.nodeids[0]
    return run.chain[-1][0].nodeids[0] if run.chain else ""


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
        self.listener = on_event or _no_event
        self.on_event: Callable[..., None] = self.listener
        self.progress = LiveProgress(lambda text: None)
        self._rerun_seconds = 0.0
        self._announced: dict[int, tuple[str, str]] = {}  # job index -> (outcome, reason) shown
        self._announcing = threading.Lock()
        self._total = 0
        self._live: Run | None = None  # the run in progress, for the tokens spent so far
        self.passed: dict[str, None] = {}  # node ids that passed in the session, in order
        self.test_files: set[str] = set()  # files the session collected tests from
        self.reported_files: set[str] = set()  # the same, from node ids (xdist controller)
        self.partial_files: set[str] = set()  # files some of whose tests were deselected

    # --- pytest hooks -----------------------------------------------------------------------

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            # A doctest's "test file" is the module under test: that one stays fixable.
            if type(item).__name__ == "DoctestItem" and item.path.suffix == ".py":
                continue
            rel = rel_inside(self.rootdir, str(item.path))
            if rel is not None:
                self.test_files.add(rel)

    def pytest_deselected(self, items: Sequence[pytest.Item]) -> None:
        for item in items:
            self.partial_files.add(rel_inside(self.rootdir, str(item.path)) or "")

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
        from pytest_agentic import progress

        self.progress = progress.for_config(
            self.config,
            spent=self._spent,
            parallel=self.settings.workers > 1,
            dry_run=self.settings.dry_run,
        )
        self.on_event = self._event
        with warnings.catch_warnings(), interruptible():
            # SDK warnings (a deprecated model name, an unclosed client) would become errors
            # in suites with `filterwarnings = error`; they are not the user's tests' business.
            warnings.simplefilter("ignore")
            try:
                self.report = self.run(list(self.failures.values()))
            except Exception as exc:  # run() failed outside its loop (writing the report)
                self.report = RunReport(model=self.settings.model)
                self.report.error = _one_line(exc)
        self.progress.close()
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
        self.report.exit_status = int(session.exitstatus)
        self.session = session
        self._write_reports(self.report)

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
        if reporter is None or not (
            report.outcomes or report.interrupted or report.fatal or report.error
        ):
            return
        reporter.write_sep("=", "pytest-agentic fix")
        if report.fatal:
            reporter.write_line(f"stopped: {report.fatal}", red=True, bold=True)
        if report.error:
            reporter.write_line(
                f"internal error: {report.error} (the open attempt was restored, verified "
                "fixes kept"
                + (f"; traceback in {report.run_dir / 'error.log'})" if report.run_dir else ")"),
                red=True,
                bold=True,
            )
        for line in report.lines():
            reporter.write_line(line)
        if report.outcomes:
            rerun = self.settings.rerun
            reporter.write_line(describe_sandbox(rerun.sandbox, rerun.sandbox_network))
        fixed_all = report.exit_status == 0
        reporter.write_line(report.result_line(), bold=True, green=fixed_all, red=not fixed_all)

    def _write_reports(self, report: RunReport) -> None:
        paths = [
            p
            for p in (report.run_dir and report.run_dir / "report.json", self.settings.report)
            if p is not None
        ]
        write_report(report, paths)

    # --- live progress ----------------------------------------------------------------------

    def _spent(self) -> tuple[int, float]:
        total = self._live.usage if self._live is not None else Usage()
        usage = {name: getattr(total, name) for name in vars(total)}
        return total.total, estimate_cost(self.settings.model, usage)

    def _event(self, kind: str, **fields: Any) -> None:
        """The run's events (from worker threads too) as progress lines: each job's node id
        and place, its verdict once it is final."""
        self.listener(kind, **fields)
        job = fields.pop("job", None)
        if job is None:
            self.progress(kind, **fields)  # confirm, confirmed; others are not shown
            return
        job.heard(kind, fields)
        where = {"nodeid": job.nodeids[0], "index": job.index, "total": self._total}
        if kind == "attempt":
            self.progress(kind, **where, max_attempts=self.settings.max_attempts, **fields)
        elif kind in ("tool", "text", "judge"):
            self.progress(kind, **where, **fields)
        elif kind == "judged":
            verdict = fields.get("verdict")
            if verdict is not None and not verdict.kept:
                self.progress("rejected", **where, reason=verdict.reason)
            if verdict is not None and (
                verdict.final or (not verdict.kept and job.attempts >= self.settings.max_attempts)
            ):
                self._announce(job, final_reason=verdict.reason)
        elif kind in ("integrated", "user_won"):
            self._announce(job)

    def _announce(self, job: Job, final_reason: str | None = None) -> None:
        """A job's verdict line(s), once per change of its outcome."""
        outcome = "not_fixed" if final_reason is not None else job.outcome
        reason = final_reason if final_reason is not None else job.reason
        with self._announcing:  # workers announce too
            if self._announced.get(job.index) == (outcome, reason):
                return
            self._announced[job.index] = (outcome, reason)
        for record in job.outcomes():
            self.progress(
                "verdict",
                nodeid=record.nodeid,
                index=job.index,
                total=self._total,
                outcome=outcome,
                reason=reason.replace(f" (question: {job.question})", "")
                if job.question
                else reason,
                attempts=record.attempts if not record.fixed_by else 0,
                fixed_by=record.fixed_by,
            )

    # --- the run ----------------------------------------------------------------------------

    def run(self, failures: list[Failure]) -> RunReport:
        settings = self.settings
        report = RunReport(model=settings.model, dry_run=settings.dry_run)
        started = time.perf_counter()
        jobs: list[Job] = []
        flaky: list[str] = []
        run: Run | None = None
        children = _child_pids()
        early: EarlyClient | None = None
        try:
            if failures:
                report.run_dir = new_run_dir(self.root)
                self.on_event("confirm", count=len(failures))
                early = EarlyClient(settings)  # the SDK import overlaps the confirm re-run
                flaky = self._confirm([f.nodeid for f in failures])
                self.on_event("confirmed", confirmed=len(failures) - len(flaky), flaky=flaky)
                jobs = plan(self.rootdir, [f for f in failures if f.nodeid not in flaky])
                self._total = len(jobs)
                # Lines name their failure when workers interleave them.
                self.progress.parallel = settings.workers > 1 and len(jobs) > 1
                if jobs:
                    base = snapshot_base(self.root, self._scratch())
                    run = Run(self.root, settings, base, report.run_dir, self.on_event, early)
                    self._live = run
                    run.protected_paths = frozenset(self._session_files())
                    run.passed = list(self.passed)
                    run.whole_files = self._whole_files()
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
                            self.rootdir,
                            job.failures,
                            settings.task,
                            policy=policy,
                            max_chars=settings.context_max_chars,
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
            elif early is not None:
                early.close()
        if run is not None and run.halt is not None:
            if isinstance(run.halt, FatalApiError):
                report.fatal = str(run.halt)
            elif not isinstance(run.halt, BudgetSpent):
                report.error = _one_line(run.halt)
                _error_log(report.run_dir, run.halt)
        for job in jobs:
            if job.outcome == "not_fixed" and not job.reason:  # never "not fixed ()"
                job.reason = "interrupted" if report.interrupted else "stopped by an error"
        for job in jobs:
            if settings.commit and not report.interrupted and job.outcome == "fixed" and job.diff:
                self._commit(job)  # integrated and verified; its journal was kept in `stop`
            self._announce(job)  # what no event announced: skipped, mended, reverted
        report.outcomes = outcomes(failures, flaky, jobs)
        usage = run.usage if run is not None else Usage()
        report.usage = {name: getattr(usage, name) for name in vars(usage)}
        report.seconds = {
            "fix_loop": round(time.perf_counter() - started, 3),
            "test_reruns": round(self._rerun_seconds + (run.rerun_seconds if run else 0.0), 3),
        }
        self.on_event("done", report=report)
        return report

    def _commit(self, job: Job) -> None:
        """`--agent-commit`: a kept fix becomes a commit of its own changes only. After the
        final verification, not at integration: a fix that verification takes out again
        must not already be history."""
        from pytest_agentic.deliver import commit_fix

        nodeid = job.nodeids[0]
        body = [
            f"pytest-agentic kept this fix after re-running {nodeid}: it passes "
            f"(attempt {job.attempts} of {self.settings.max_attempts}, "
            f"model {self.settings.model}).",
        ]
        if job.reason:
            body.append(job.reason)
        if len(job.nodeids) > 1:
            body.append("It also fixes:\n" + "\n".join(f"- {n}" for n in job.nodeids[1:]))
        try:
            job.commit = commit_fix(self.root, nodeid, job.diff, job.files, "\n\n".join(body))
        except AgenticError as exc:
            job.reason = str(exc)
            self.progress("note", text=f"{nodeid}: {exc}")
            return
        self.progress("commit", nodeid=nodeid, index=job.index, total=self._total, sha=job.commit)

    def _confirm(self, nodeids: list[str]) -> list[str]:
        """Re-run every failure once, in the user's tree (no agent code exists yet); one that
        passes is flaky and never sent to the model."""
        result = run_tests(nodeids, self.settings.rerun)
        self._rerun_seconds = result.seconds
        return [n for n in nodeids if result.outcomes.get(n) == "passed"]

    def _session_files(self) -> set[str]:
        """The session's own test files, the conftests it loaded and its ini file (relative
        to the project root: the agent's tools are rooted at its copy)."""
        files = {
            rel_inside(self.root, str(self.rootdir / rel)) or ""
            for rel in (self.test_files or self.reported_files)
        }
        for plugin in self.config.pluginmanager.get_plugins():
            path = getattr(plugin, "__file__", None)
            if isinstance(path, str) and os.path.basename(path) == "conftest.py":
                files.add(rel_inside(self.root, path) or "")
        if self.config.inipath is not None:
            files.add(rel_inside(self.root, str(self.config.inipath)) or "")
        files.discard("")
        return files

    def _whole_files(self) -> set[str]:
        """Test files a re-run may name by path: the session ran every test collected from
        them (no `-k`/`-m`/`--deselect` took any away, no `file::test` argument chose some).
        Known only where collection happened (not in an xdist controller)."""
        if any("::" in arg for arg in self.config.invocation_params.args):
            return set()
        return self.test_files - self.partial_files

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
                ready.outcome, ready.fixed_by = "fixed", mender(run, ready.nodeids)
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
    if job.details:  # the gate said yes; integration said no: the report shows both
        last = job.details[-1]
        job.details[-1] = dataclasses.replace(
            last, kept=False, checks=(*last.checks, CheckResult("integration", False, why))
        )
    job.reason = why
    if job.attempts >= run.settings.max_attempts or run.over_budget() or run.halt is not None:
        return True
    job.feedback = feedback(job.attempts, why)
    return False


def verify(run: Run, jobs: list[Job]) -> None:
    """The session's whole selection once on the integrated state (sandboxed: the tests that
    passed in the session and the fixed ones, with the session's `-n` under xdist); undo the
    newest integrated fix while any fails (a later fix broke an earlier one, or a test the
    per-attempt import graph did not reach). Issue 9: never skipped, since the integration's
    re-run covers only the fixed tests."""
    settings = run.settings
    args = list(settings.rerun.extra_args)
    if settings.xdist_workers and args[-2:] == ["-n", "0"]:
        args[-1] = settings.xdist_workers
    final = dataclasses.replace(settings.rerun, extra_args=tuple(args))
    while run.chain:
        selection = list(dict.fromkeys([*run.passed, *_fixed(jobs)]))
        try:
            result = _rerun_in(run, run.integrated, compact(selection, run.whole_files), final)
            broken = result.failing(selection)
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
            found += [o for o in by_id[f.nodeid].outcomes() if o.nodeid == f.nodeid]
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


def _collected_file(nodeid: str) -> str | None:
    """The file a node id's test was collected from, unless it looks like a doctest in a
    module (`pkg/mod.py::pkg.mod.func`, `calc.py::calc`): that file is the code under test."""
    path, sep, name = nodeid.partition("::")
    name = name.split("[", 1)[0]
    if not sep or (path.endswith(".py") and ("." in name or name == Path(path).stem)):
        return None
    return path


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
