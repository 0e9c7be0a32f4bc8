"""Integration onto the user's tree: kept fixes re-verified, written journalled, undone.

On the main thread, in node-id order: a kept fix is re-verified on the integrated state,
then written to the user's tree journalled, unless the user changed one of its files during
the run (their version wins; the patch is saved).
"""

from __future__ import annotations

import os
from pathlib import Path

from pytest_agentic.atomic import write_atomic
from pytest_agentic.errors import AgenticError
from pytest_agentic.jobs import Fix, Job, Run, Tainted, _passes, _rerun_in, _tainted, mender
from pytest_agentic.report import write_patch
from pytest_agentic.sandbox import Base, fingerprint
from pytest_agentic.workspace import Journal

# --- integrate --------------------------------------------------------------------------------


def integrate(run: Run, job: Job, fix: Fix, fixed_before: list[str]) -> str | None:
    """Apply a kept fix on top of the integrated state: None when it is in (or the user's
    version won, or an earlier fix already mended it), else why it must be tried again.

    Re-verified first on the integrated state with the fix applied (sandboxed, together with
    every test fixed before); only then written to the user's tree, journalled. The re-run is
    skipped when that state is exactly the one the attempt was judged in.
    """
    if _users_version_wins(run, job, fix):
        run.drop_ahead(fix)
        return None
    try:
        candidate = run.next_state(fix)
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
    for _, fix in batch:  # one state for all of them: the ones derived ahead are not used
        run.drop_ahead(fix)
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


def _undo(run: Run, job: Job) -> None:
    """Take an integrated fix out of the user's tree again (its journal restored)."""
    if job.journal is not None:
        for rel in job.journal.restore():
            run.written[rel] = fingerprint(run.root / rel)
        job.journal = None
