"""The fix run's orchestration: the session's hooks, then confirm, plan, dispatch, verify, stop.

Registered by `plugin.py` only with `--agent-fix` and only in the controller process (under
pytest-xdist the workers just run tests; their reports reach the controller). `anthropic` is
imported lazily: in a thread, while the failures' confirmation re-run runs.

- plan (`jobs.py`): confirmed failures that share a cause (innermost project frame and error
  type) form one job, one conversation; every other failure is a job of its own.
- dispatch: up to `workers` jobs at once, on threads (the work is API calls and subprocesses).
  Every attempt (`attempt.py`) gets its own workspace, a copy of the project as the run began
  plus the fixes integrated so far (`sandbox.py`); the agent's tools and every re-run work
  there, never in the user's tree. The shared prompt prefix (tools, system prompt) is cached
  by one request before the others go out.
- validate (`attempt.judge`): sandboxed re-runs each followed by the integrity check (files
  changed by anything but the editor reject the attempt), then the gate (`validate.py`).
- integrate (`integrate.py`): on the main thread, one kept fix at a time in node-id order:
  re-verified on the integrated state, then written to the user's tree journalled
  (`workspace.Journal`), unless the user changed one of its files since the run began (their
  version wins; the patch is saved). A fix that no longer applies or breaks an earlier one
  goes back as a new attempt.
- verify: the session's whole selection once on the integrated state; the newest fix is
  undone while any test fails. Then the report, the progress lines' verdicts and commits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import traceback as tb
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any

import pytest

from pytest_agentic.agent import BudgetSpent, FatalApiError, Usage
from pytest_agentic.attempt import feedback, work
from pytest_agentic.context import first_message, rel_inside
from pytest_agentic.integrate import _undo, integrate, integrate_together
from pytest_agentic.interrupts import child_pids, finishing, interruptible, kill_new_children
from pytest_agentic.jobs import (
    EarlyClient,
    Failure,
    Fix,
    Halted,
    Job,
    Run,
    Settings,
    Tainted,
    _no_event,
    _passes,
    _rerun_in,
    failure_from_report,
    in_thread,
    mender,
    outcomes,
    plan,
)
from pytest_agentic.plugin import RUN_LOCK
from pytest_agentic.progress import RunEvents
from pytest_agentic.report import (
    CheckResult,
    RunReport,
    estimate_cost,
    new_run_dir,
    write_report,
    write_section,
)
from pytest_agentic.runner import RerunSettings, run_tests
from pytest_agentic.sandbox import Base, Workspace, acquire_lock, snapshot_base
from pytest_agentic.sandbox import describe as describe_sandbox
from pytest_agentic.validate import compact

# How long an interrupted run waits for its workers to reach their next step; a worker still
# inside an API request after that is abandoned (a daemon thread: it never touches the user's
# tree, and its workspace is removed here).
STOP_GRACE_SECONDS = 5.0


# --- the session ------------------------------------------------------------------------------


class FixSession:
    """The pytest hooks, and the top of one fix run over the session's failures.

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
        self.events = RunEvents(self.listener, settings.max_attempts)  # the progress lines
        self._rerun_seconds = 0.0
        self._live: Run | None = None  # the run in progress, for the tokens spent so far
        self.passed: dict[str, None] = {}  # node ids that passed in the session, in order
        self.test_files: set[str] = set()  # files the session collected tests from
        self.reported_files: set[str] = set()  # the same, from node ids (xdist controller)
        self.partial_files: set[str] = set()  # files some of whose tests were deselected
        # Under xdist the controller runs no test: the SDK import starts at the first
        # failure there, hidden behind the rest of the session (issue 13).
        self._early: EarlyClient | None = None

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
            if self._early is None and self.config.pluginmanager.hasplugin("dsession"):
                # Not in a process that runs tests: a thread importing beside them would
                # slow them, and a fork() meanwhile (multiprocessing) warns or deadlocks.
                self._early = EarlyClient(self.settings)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
            self._drop_early()
            return  # interrupted, internal or usage errors, no tests: nothing to fix
        if not self.failures and self.settings.report is None:
            return
        from pytest_agentic import progress

        self.events.progress = progress.for_config(
            self.config,
            spent=lambda: _spent(self._live, self.settings.model),
            parallel=self.settings.workers > 1,
            dry_run=self.settings.dry_run,
        )
        self.on_event = self.events
        with warnings.catch_warnings(), interruptible():
            # SDK warnings (a deprecated model name, an unclosed client) would become errors
            # in suites with `filterwarnings = error`; they are not the user's tests' business.
            warnings.simplefilter("ignore")
            try:
                self.report = self.run(list(self.failures.values()))
            except Exception as exc:  # run() failed outside its loop (writing the report)
                self.report = RunReport(model=self.settings.model)
                self.report.error = _one_line(exc)
        self.events.progress.close()
        session.exitstatus = _exit_status(self.report)
        self.report.exit_status = int(session.exitstatus)
        self.session = session
        _write_reports(self.report, self.settings.report)

    def _drop_early(self) -> None:
        """The SDK client started at a failure and never used (the run never began)."""
        early, self._early = self._early, None
        if early is not None:
            early.close()
            early.thaw()

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        """The fix section goes last, after pytest's short summary (printed in its
        `pytest_terminal_summary` wrapper, after every other plugin's summary) and after its
        `N failed, M passed` line (printed in its `pytest_sessionfinish` wrapper): the last
        lines on screen say what the fix loop did and which exit status follows."""
        self._drop_early()  # a session that ended before its fix run could begin
        report = self.report
        session = getattr(self, "session", None)
        if report is None or session is None:
            return
        if int(session.exitstatus) != report.exit_status:
            # A plugin after us changed it (pytest's own `--max-warnings` does, after every
            # `pytest_sessionfinish`): the last line and the report say what the shell sees.
            report.exit_status = int(session.exitstatus)
            _write_reports(report, self.settings.report)
        _last_screen(config, report, self.settings.rerun)

    # --- the run ----------------------------------------------------------------------------

    def run(self, failures: list[Failure]) -> RunReport:
        settings = self.settings
        report = RunReport(model=settings.model, dry_run=settings.dry_run)
        started = time.perf_counter()
        jobs: list[Job] = []
        flaky: list[str] = []
        run: Run | None = None
        children = child_pids()
        early: EarlyClient | None = None
        prepared: Future[tuple[Base, Workspace]] | None = None
        try:
            if failures:
                report.run_dir = new_run_dir(self.root)
                self.on_event("confirm", count=len(failures))
                # The SDK import overlaps the confirm re-run (or began at the first failure).
                early, self._early = self._early or EarlyClient(settings), None
                flaky = self._confirm([f.nodeid for f in failures])
                self.on_event("confirmed", confirmed=len(failures) - len(flaky), flaky=flaky)
                jobs = plan(self.rootdir, [f for f in failures if f.nodeid not in flaky])
                self.events.total = len(jobs)
                # Lines name their failure when workers interleave them.
                self.events.progress.parallel = settings.workers > 1 and len(jobs) > 1
                if jobs:
                    # The snapshot and the first attempt's workspace (git runs) while the first
                    # messages are built here and the SDK may still be importing. Not during
                    # the confirm re-run: on two cores the three slowed each other (issue 13).
                    scratch = _scratch(self.config, self.root)
                    prepared = in_thread(_prepare, self.root, scratch, name="agentic-snapshot")
                    contexts = _first_messages(self.root, self.rootdir, settings, jobs)
                    for job, context in zip(jobs, contexts, strict=True):
                        job.context = context
                    base, first = prepared.result()
                    run = Run(self.root, settings, base, report.run_dir, self.on_event, early)
                    run.spare(base, first)
                    self._live = run
                    files = self.test_files or self.reported_files
                    run.protected_paths = frozenset(_session_files(self.config, self.root, files))
                    run.passed = list(self.passed)
                    run.whole_files = _whole_files(self.config, self.test_files, self.partial_files)
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
            if early is not None:
                early.thaw()
            if prepared is not None:
                wait([prepared])  # its git runs end before the scratch folder is removed
        if run is not None and run.halt is not None:
            _halted(report, run.halt)
        for job in jobs:
            if job.outcome == "not_fixed" and not job.reason:  # never "not fixed ()"
                job.reason = "interrupted" if report.interrupted else "stopped by an error"
        for job in jobs:
            if settings.commit and not report.interrupted and job.outcome == "fixed" and job.diff:
                self._commit(job)  # integrated and verified; its journal was kept in `stop`
            self.events.announce(job)  # what no event announced: skipped, mended, reverted
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
        """`--agent-commit` (deliver.py): after the final verification, not at integration."""
        from pytest_agentic.deliver import commit_kept

        settings = self.settings
        problem = commit_kept(self.root, job, settings.max_attempts, settings.model)
        self.events.committed(job, problem)

    def _confirm(self, nodeids: list[str]) -> list[str]:
        """Re-run every failure once, in the user's tree (no agent code exists yet); one that
        passes is flaky and never sent to the model."""
        result = run_tests(nodeids, self.settings.rerun)
        self._rerun_seconds = result.seconds
        return [n for n in nodeids if result.outcomes.get(n) == "passed"]


def _prepare(root: Path, scratch: Path) -> tuple[Base, Workspace]:
    """The project's snapshot and a first workspace of it."""
    base = snapshot_base(root, scratch)
    return base, base.workspace()


def _first_messages(
    root: Path, rootdir: Path, settings: Settings, jobs: list[Job]
) -> list[list[dict[str, Any]]]:
    """Each job's first message, read under the agent's read policy too."""
    policy = settings.agent_policy(root)
    return [
        first_message(
            rootdir,
            job.failures,
            settings.task,
            policy=policy,
            max_chars=settings.context_max_chars,
        )
        for job in jobs
    ]


def _session_files(config: pytest.Config, root: Path, test_files: set[str]) -> set[str]:
    """The session's own test files (relative to pytest's rootdir), the conftests it loaded
    and its ini file, relative to the project root: the agent's tools are rooted at its copy."""
    rootdir = Path(config.rootpath)
    files = {rel_inside(root, str(rootdir / rel)) or "" for rel in test_files}
    for plugin in config.pluginmanager.get_plugins():
        path = getattr(plugin, "__file__", None)
        if isinstance(path, str) and os.path.basename(path) == "conftest.py":
            files.add(rel_inside(root, path) or "")
    if config.inipath is not None:
        files.add(rel_inside(root, str(config.inipath)) or "")
    files.discard("")
    return files


def _whole_files(config: pytest.Config, test_files: set[str], partial: set[str]) -> set[str]:
    """Test files a re-run may name by path: the session ran every test collected from
    them (no `-k`/`-m`/`--deselect` took any away, no `file::test` argument chose some).
    Known only where collection happened (not in an xdist controller)."""
    if any("::" in arg for arg in config.invocation_params.args):
        return set()
    return test_files - partial


def _last_screen(config: pytest.Config, report: RunReport, rerun: RerunSettings) -> None:
    """The CI step summary, then the fix section on pytest's terminal (report.py)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if report.outcomes:
        from pytest_agentic.deliver import append_step_summary

        problem = append_step_summary(report)
        if problem and reporter is not None:
            reporter.write_line(f"pytest-agentic: {problem}")
    if reporter is not None:
        sandbox = describe_sandbox(rerun.sandbox, rerun.sandbox_network)
        write_section(reporter, report, sandbox)


def _scratch(config: pytest.Config, root: Path) -> Path:
    lock = config.stash.get(RUN_LOCK, None)
    if lock is None:  # the plugin took none (the fixer used on its own): take it here
        lock = acquire_lock(root)
        config.stash[RUN_LOCK] = lock
        config.add_cleanup(lock.release)
    return lock.scratch


def _spent(run: Run | None, model: str) -> tuple[int, float]:
    """Tokens spent so far and their estimated cost, for the progress lines."""
    total = run.usage if run is not None else Usage()
    usage = {name: getattr(total, name) for name in vars(total)}
    return total.total, estimate_cost(model, usage)


def _exit_status(report: RunReport) -> pytest.ExitCode:
    if report.fatal:
        return pytest.ExitCode.USAGE_ERROR  # a key or URL the user must fix
    if report.error:
        return pytest.ExitCode.INTERNAL_ERROR
    if report.interrupted:
        return pytest.ExitCode.INTERRUPTED
    if all(o.outcome == "fixed" for o in report.outcomes):
        return pytest.ExitCode.OK
    return pytest.ExitCode.TESTS_FAILED


def _write_reports(report: RunReport, extra: Path | None) -> None:
    """report.json in the run folder, and `--agent-report`'s copy."""
    paths = [p for p in (report.run_dir and report.run_dir / "report.json", extra) if p is not None]
    write_report(report, paths)


def _halted(report: RunReport, halt: BaseException) -> None:
    """Why the run stopped, into the report: a fatal API error, or our bug (its traceback
    in the run folder); a spent budget is said on each job's line instead."""
    if isinstance(halt, FatalApiError):
        report.fatal = str(halt)
    elif not isinstance(halt, BudgetSpent):
        report.error = _one_line(halt)
        _error_log(report.run_dir, halt)


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
        kill_new_children(children)  # re-runs in flight end now, not at their timeout
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


def _spawn(fn: Callable[..., Fix | None], *args: Any) -> Future[Fix | None]:
    return in_thread(fn, *args, name="pytest-agentic-worker")


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
