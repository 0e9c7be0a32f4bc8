"""pytest hooks only: the `agentic` options, and (with --agent-fix) handing failures to the fixer.

Importing this module must stay cheap: it is loaded in every pytest session of every project
that has pytest-agentic installed. Heavy modules (the fixer, `anthropic`) are imported only
when `--agent-fix` is given.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("agentic", "pytest-agentic: fix failing tests with a coding agent")
    group.addoption(
        "--agent-fix",
        action="store_true",
        default=None,
        help="send each confirmed failure to a coding agent; keep only verified fixes.",
    )
