"""Loaded with `-p pytest_agentic._rerun` into the fix loop's re-runs: record each test's outcome.

Outcomes go to the JSON file named by `PYTEST_AGENTIC_RERUN_OUT`, keyed by node id, so the fix
loop reads verdicts from pytest's own reports rather than parsing terminal output.
"""

from __future__ import annotations

import json
import os

import pytest

_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed:
        _outcomes[report.nodeid] = "failed" if report.when == "call" else "error"
    elif report.skipped and report.nodeid not in _outcomes:
        _outcomes[report.nodeid] = "skipped"
    elif report.when == "call" and report.passed and report.nodeid not in _outcomes:
        _outcomes[report.nodeid] = "passed"


def pytest_sessionfinish(session: pytest.Session) -> None:
    out = os.environ.get("PYTEST_AGENTIC_RERUN_OUT")
    if out:
        with open(out, "w", encoding="utf-8") as fh:
            json.dump(_outcomes, fh)
