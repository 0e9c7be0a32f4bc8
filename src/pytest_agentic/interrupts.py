"""Signals during the fix loop: Ctrl-C and SIGTERM interrupt it, but never a restore.

Two rules (issue #10):
- During the fix loop SIGINT and SIGTERM raise KeyboardInterrupt, whatever disposition the
  process inherited. A shell starts a background job (`pytest --agent-fix &`, a CI step run
  in the background) with SIGINT *ignored*, and Python keeps an inherited SIG_IGN instead of
  installing its KeyboardInterrupt handler; an explicit `kill -INT` then had no effect at all
  and a run that should have been interrupted kept its fix (the flaky
  `test_ctrl_c_mid_attempt_restores_and_exits_2[SIGINT]`: it failed whenever the test suite
  itself had been started in the background).
- While files are being put back, a second Ctrl-C must not leave half a restore: signals are
  recorded and acted on once the restore is done (`deferred_interrupts`).

Python runs signal handlers in the main thread only, so both apply there; restores in other
threads are never interrupted by a signal in the first place.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_depth = 0
_pending: list[int] = []


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt inside, even if SIGINT was ignored."""
    if not _in_main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _interrupt) for signum in _SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """SIGINT/SIGTERM arriving inside are held until the block ends.

    Then, if no exception is already on its way (an interrupted run being cleaned up), they
    raise one KeyboardInterrupt. Nested blocks defer to the outermost.
    """
    global _depth
    if not _in_main_thread() or _depth:
        _depth += 1 if _in_main_thread() else 0
        try:
            yield
        finally:
            _depth -= 1 if _in_main_thread() else 0
        return

    def record(signum: int, frame: Any) -> None:
        _pending.append(signum)

    previous = {signum: signal.signal(signum, record) for signum in _SIGNALS}
    _depth = 1
    try:
        yield
    finally:
        _depth = 0
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        held = bool(_pending)
        _pending.clear()
        if held and sys.exc_info()[0] is None:
            raise KeyboardInterrupt
