"""The fix run's records and shared state: settings, failures, jobs, fixes, the `Run`.

Everything below `fixer.py`, `attempt.py` and `integrate.py` share: the records a job carries
from plan to report, and the `Run` every worker thread shares (its client, workspaces, token
budget and re-runs). Imports none of them.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pytest_agentic.agent import Budget, Usage, fatal_error
from pytest_agentic.config import DEFAULT_UNREADABLE
from pytest_agentic.errors import AgenticError
from pytest_agentic.progress import parse_refusal
from pytest_agentic.report import AttemptDetail, Outcome, Refused
from pytest_agentic.runner import RerunSettings, RunResult, run_tests
from pytest_agentic.sandbox import Base, Workspace, fingerprint
from pytest_agentic.scope import PathPolicy
from pytest_agentic.tasks import Task
from pytest_agentic.workspace import Journal

T = TypeVar("T")


def in_thread(fn: Callable[..., T], *args: Any, name: str) -> Future[T]:
    """`fn(*args)` on a daemon thread, its result or exception in the future: an interrupted
    run does not wait at exit for a thread stuck in an API request (a ThreadPoolExecutor's
    threads are joined at exit)."""
    future: Future[T] = Future()

    def target() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # Cancelled, Tainted, bugs: whoever waits decides
            future.set_exception(exc)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


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

    def agent_policy(self, root: Path, protected_paths: frozenset[str] = frozenset()) -> PathPolicy:
        """The agent's path policy rooted at `root` (the project, or an attempt's workspace):
        one place, so the first message, the agent's tools and the reviewer read alike."""
        return PathPolicy(
            root,
            task=self.task,
            protected=self.protected,
            for_agent=True,
            protected_paths=protected_paths,
            unreadable=self.unreadable,
        )


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
        # id(fix) -> the fix and its state, derived ahead (the fix held, so its id stays its)
        self._ahead: dict[int, tuple[Fix, Future[Base]]] = {}
        self._spares: dict[str, Workspace] = {}  # a base's path -> a fresh workspace of it
        self._made: list[Future[Base]] = []  # every state derived ahead, for close()
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
        base = base or self.integrated
        with self._lock:
            ws = self._spares.pop(str(base.path), None)
        if ws is None:
            ws = base.workspace()
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

    # --- made ahead, on daemon threads, while something else runs (issue 13) ---

    def spare(self, base: Base, ws: Workspace) -> None:
        """`ws`, a fresh workspace of `base` made ahead, for the next `workspace(base)`."""
        with self._lock:
            self._spares[str(base.path)] = ws

    def derive_ahead(self, fix: Fix) -> None:
        """Start deriving `fix.base` plus `fix.patch`, and a spare workspace of it (the final
        verification's), when its target tests pass: their git runs then overlap the gate's
        re-run, and `next_state` finds the state ready when the fix is kept and nothing was
        integrated in between.
        """

        def derive() -> Base:
            state = fix.base.derive(fix.patch)
            self.spare(state, state.workspace())
            return state

        future = in_thread(derive, name="agentic-derive")
        with self._lock:
            self._ahead[id(fix)] = (fix, future)
            self._made.append(future)

    def next_state(self, fix: Fix) -> Base:
        """The integrated state with `fix` applied (raises AgenticError when it does not
        apply): the one derived ahead while the integrated state is still the fix's base."""
        ahead = self._take_ahead(fix)
        if ahead is not None and fix.base is self.integrated:
            return ahead.result()
        if ahead is not None:
            ahead.add_done_callback(self._forget)
        return self.integrated.derive(fix.patch)

    def drop_ahead(self, fix: Fix) -> None:
        """`fix` will not be integrated as it is: its state goes once it is derived."""
        ahead = self._take_ahead(fix)
        if ahead is not None:
            ahead.add_done_callback(self._forget)

    def _take_ahead(self, fix: Fix) -> Future[Base] | None:
        with self._lock:
            _, ahead = self._ahead.pop(id(fix), (None, None))
        return ahead

    def _forget(self, state: Future[Base]) -> None:
        """Remove a state made ahead that no one will use, with its spare workspace."""
        if state.exception() is not None:
            return
        path = state.result().path
        with self._lock:
            spare = self._spares.pop(str(path), None)
        if spare is not None:
            spare.remove()
        shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        """Remove every workspace and close the client (also after an interrupt)."""
        with self._lock:
            left = list(self._workspaces.values())
            self._workspaces.clear()
            ahead = [future for _, future in self._ahead.values()]
            self._ahead.clear()
            client, self._client = self._client, None
            early, self._early = self._early, None
        # Made ahead: a few git runs each, waited for before the scratch folder goes.
        futures_wait(self._made)
        for state in ahead:
            self._forget(state)
        with self._lock:
            spares = list(self._spares.values())
            self._spares.clear()
        left += spares
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


def _tainted(exc: Tainted) -> str:
    return (
        "running the tests changed files the editor did not write "
        f"({', '.join(exc.files)}); the attempt was rejected"
    )


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


def _make_client(settings: Settings) -> Any:
    import anthropic

    return anthropic.Anthropic(max_retries=settings.max_retries, timeout=settings.api_timeout)


def _import_sdk() -> bool:
    """`import anthropic` at its fastest (~0.25 s less): True when its objects were frozen.

    - The collector off while it runs, its objects frozen afterwards (see `EarlyClient`),
      unless the user froze objects of their own: their freeze is left alone.
    - pytest's assertion-rewriting import hook out of `sys.meta_path` meanwhile: it is asked
      first about each of the SDK's ~1,500 modules (~0.15 s) and rewrites none (the SDK is
      neither a test module nor a pytest plugin). No user code runs in this process
      meanwhile (the session is over, or this is an xdist controller, which runs no test):
      only our own modules or pytest's can be imported beside it, then unrewritten.
    Both are put back as they were.
    """
    enabled = gc.isenabled()
    freeze = gc.get_freeze_count() == 0
    gc.disable()
    hidden = [
        (i, finder)
        for i, finder in enumerate(sys.meta_path)
        if type(finder).__name__ == "AssertionRewritingHook"
    ]
    for _, finder in hidden:
        sys.meta_path.remove(finder)
    try:
        import anthropic  # noqa: F401
    finally:
        for i, finder in hidden:
            sys.meta_path.insert(i, finder)
        if freeze:
            gc.freeze()
        if enabled:
            gc.enable()
    return freeze


class EarlyClient:
    """The SDK client, built in a thread started before the confirmation re-run (in an xdist
    controller at the session's first failure): importing
    `anthropic` and building the client take ~1 s, which then overlaps the re-run's subprocess
    instead of following it (issue 13). `get()` waits for it; `close()` closes it, used or not;
    `thaw()` (at the end of the run) undoes the import's garbage-collector freeze.

    The import creates a few hundred thousand long-lived objects and next to no garbage. With
    the collector on, its full passes over them cost ~0.15 s during the import, and the first
    full pass after it ~0.1 s more in whatever thread allocates next (measured: the first
    `ast.parse` of the first message took 120 ms instead of 1 ms). So the import runs with the
    collector off and its objects are then frozen (`gc.freeze`: left out of every later pass)
    until the run ends. Nothing of the user's runs in this process meanwhile: the session is
    over (or this is an xdist controller, which runs no test) and re-runs are subprocesses.
    """

    def __init__(self, settings: Settings) -> None:
        self._client: Any = None
        self._error: BaseException | None = None
        self._frozen = False
        self._thread = threading.Thread(
            target=self._build, args=(settings,), name="agentic-client", daemon=True
        )
        self._thread.start()

    def _build(self, settings: Settings) -> None:
        try:
            if "anthropic" not in sys.modules:
                self._frozen = _import_sdk()
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

    def thaw(self) -> None:
        """The frozen objects back in the collector's care (after the run)."""
        self._thread.join()
        if self._frozen:
            self._frozen = False
            gc.unfreeze()
