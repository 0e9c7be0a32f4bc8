"""One attempt at a job: the agent's conversation in a fresh workspace, judged by the gate.

A worker runs `work(run, job)`: attempts until one is kept, the agent gives up or
`max_attempts` are spent, each told why the one before failed (`feedback`). `judge` is the
one place an attempt is decided: the target re-run, the integrity check, then `gate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_agentic.agent import EDITOR_TOOL, Conversation, Toolbox, converse
from pytest_agentic.jobs import (
    Fix,
    Halted,
    Job,
    Run,
    Tainted,
    _Client,
    _EditLog,
    _tainted,
    checked_rerun,
)
from pytest_agentic.report import AttemptDetail, CheckResult, write_transcript
from pytest_agentic.review import review_attempt
from pytest_agentic.runner import RunResult
from pytest_agentic.sandbox import Workspace
from pytest_agentic.sandbox import _git as sandbox_git
from pytest_agentic.validate import (
    FileChange,
    affected_tests,
    compact,
    diff_budget,
    project_checks,
    regression,
    tamper,
)
from pytest_agentic.validate import Verdict as Check


class _AttemptTools(Toolbox):
    """The agent's tools rooted at the workspace: each call checks the cancel flag first, and
    every editor write is recorded for the integrity check."""

    def __init__(self, run: Run, ws: Workspace, rerun: Callable[[], str]) -> None:
        settings = run.settings
        policy = settings.agent_policy(ws.path, run.protected_paths)
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
            run.derive_ahead(fix)  # what integrating it will need, during the gate
            checks += gate(run, job, ws, fix, result.output)
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


def gate(run: Run, job: Job, ws: Workspace, fix: Fix, output: str) -> list[Check]:
    """The validation gate after the target passes, in order, until the first "no"."""
    settings = run.settings
    changes = _changes(ws, fix.files)
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
        steps.append(lambda: review_attempt(run, job, ws, fix.patch, changes, output, checks))
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


def attempt(run: Run, job: Job) -> tuple[Fix | None, Verdict]:
    """One attempt of `job` in a fresh workspace of the integrated state; the workspace is
    removed whatever happens."""
    settings = run.settings
    nodeids = job.nodeids
    base = run.integrated  # read once: the main thread moves it on as fixes are integrated
    ws = run.workspace(base)  # while the SDK may still be importing (jobs.EarlyClient)
    try:
        import anthropic

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
        try:
            verdict = judge(run, conversation, ws, fix, nodeids, job)
        except BaseException:
            run.drop_ahead(fix)  # the run stops (or our bug): nothing of it is integrated
            raise
        if not verdict.kept:
            run.drop_ahead(fix)
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


def describe(result: RunResult, nodeids: Sequence[str]) -> str:
    if result.passed(nodeids):
        return f"All {len(nodeids)} test(s) passed.\n" + result.output[-2000:]
    return "Still failing.\n" + result.output
