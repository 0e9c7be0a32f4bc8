"""The one exception type for user errors, and the boundary that turns it into one line."""

from __future__ import annotations

import sys
from collections.abc import Callable


class AgenticError(Exception):
    """A problem the user can fix: bad configuration, a bad task spec, a bad path.

    The message is one line, names the file, key or path, and says what to do.
    """


def run_main(func: Callable[[], int], prog: str) -> int:
    """Run a command's body; user errors become one line on stderr and exit 2, ^C exits 130."""
    try:
        return func()
    except AgenticError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
