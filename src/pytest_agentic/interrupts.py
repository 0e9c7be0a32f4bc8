"""Signals during the fix loop: the first Ctrl-C or SIGTERM interrupts it, none cuts a restore.

Rules (issue #10):
- During the fix loop SIGINT and SIGTERM raise KeyboardInterrupt, whatever disposition the
  process inherited. A shell starts a background job (`pytest --agent-fix &`, a CI step run
  in the background) with SIGINT *ignored*, and Python keeps an inherited SIG_IGN instead of
  installing its KeyboardInterrupt handler; an explicit `kill -INT` then had no effect at all
  and a run that should have been interrupted kept its fix (the flaky
  `test_ctrl_c_mid_attempt_restores_and_exits_2[SIGINT]`: it failed whenever the test suite
  itself had been started in the background).
- Only the first one raises: a second Ctrl-C while the interrupted run puts files back, or
  prints its summary, is ignored (the restore takes milliseconds; a hard kill leaves a
  journal for `pytest-agentic restore`).
- A signal that arrives while a journal is being replayed waits until every file is back
  (`deferred_interrupts`), then interrupts.

Python runs signal handlers in the main thread only, so this is about the main thread;
restores in other threads are never interrupted by a signal in the first place.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    interrupted = False  # the one KeyboardInterrupt has been raised
    depth = 0  # nesting of deferred_interrupts blocks
    held = False  # a signal arrived inside one


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _handler(signum: int, frame: Any) -> None:
    if _State.interrupted:
        return
    if _State.depth:
        _State.held = True
        return
    _State.interrupted = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def _installed() -> Iterator[None]:
    previous = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    if all(handler is _handler for handler in previous.values()):
        yield
        return
    for signum in _SIGNALS:
        signal.signal(signum, _handler)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """The fix loop: the first SIGINT or SIGTERM raises KeyboardInterrupt, even if SIGINT
    was inherited as ignored; later ones are ignored."""
    if not _in_main_thread():
        yield
        return
    _State.interrupted = _State.held = False
    previous = {signum: signal.signal(signum, _handler) for signum in _SIGNALS}
    try:
        yield
    finally:
        # Once interrupted, the handler stays and ignores more Ctrl-C until the process
        # exits: the summary and exit status 2 still have to come out.
        if not _State.interrupted:
            for signum, handler in previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """SIGINT/SIGTERM arriving inside are held until the outermost block ends; then, unless
    an exception is already on its way, they raise one KeyboardInterrupt."""
    if not _in_main_thread():
        yield
        return
    with _installed():
        _State.depth += 1
        try:
            yield
        finally:
            _State.depth -= 1
            if not _State.depth and _State.held:
                _State.held = False
                if not _State.interrupted and sys.exc_info()[0] is None:
                    _State.interrupted = True
                    raise KeyboardInterrupt


def finishing() -> None:
    """The run is past the point of no return (restoring, keeping verified fixes, writing
    the report): later SIGINT/SIGTERM are ignored until the process exits, so they cannot
    leave a journal half replayed or verified fixes unkept."""
    if _in_main_thread() and signal.getsignal(signal.SIGINT) is _handler:
        _State.interrupted = True


# --- the run's child processes -------------------------------------------------------------


def child_pids() -> set[int]:
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


def kill_new_children(before: set[int]) -> None:
    """Kill the child processes the run started (re-runs, git) that are still running; the
    session's own children from before the run are left alone."""
    for pid in child_pids() - before:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
