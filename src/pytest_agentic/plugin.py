"""pytest hooks only: the `agentic` options, and (with --agent-fix) handing failures to the fixer.

Importing this module must stay cheap: it is loaded in every pytest session of every project
that has pytest-agentic installed. Heavy modules (the fixer, `anthropic`) are imported only
when `--agent-fix` is given (or `fix = true` in `[tool.pytest-agentic]`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

HELP_FIX = "send each confirmed failure to a coding agent; keep only verified fixes."
HELP_MAX_ATTEMPTS = "attempts per failure before giving up (default 3)."
HELP_MODEL = "the Claude model the agent uses (default: a current Sonnet)."
HELP_MAX_TURNS = "tool-use turns per attempt (default 25)."
HELP_BUDGET = (
    "stop before a request that could take the run over this many tokens (default: no limit)."
)
HELP_MAX_COST = (
    "stop before a request that could take the run's estimated cost over USD (default: no limit)."
)
HELP_DRY_RUN = "propose patches in .agentic/runs/ but leave the working tree as it was."
HELP_REPORT = "also write the JSON report to PATH."
HELP_COMMIT = "commit each kept fix on its own (message `Fix <node id>`), only its files."
HELP_REVIEW = "a reviewer conversation must approve each fix before it is kept (default: on)."
HELP_NO_REVIEW = "keep fixes that pass the tests and checks without a reviewer."

#: The run lock (`sandbox.Lock`) of a fix run, taken in `resolve_settings` and released at
#: `config` cleanup; the fixer finds the run's scratch folder on it.
RUN_LOCK = pytest.StashKey[Any]()
HELP_WORKERS = "failures worked on at once, each in its own workspace (default 4; 1 = serial)."

# option dest -> its key in [tool.pytest-agentic]
_SETTINGS = {
    "agent_max_attempts": "max_attempts",
    "agent_model": "model",
    "agent_max_turns": "max_turns",
    "agent_budget_tokens": "budget_tokens",
    "agent_max_cost": "max_cost_usd",
    "agent_dry_run": "dry_run",
    "agent_report": "report",
    "agent_commit": "commit",
    "agent_review": "review",
    "agent_workers": "workers",
}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise pytest.UsageError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise pytest.UsageError(f"expected a positive integer, got {text!r}")
    return value


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise pytest.UsageError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise pytest.UsageError(f"expected a positive number, got {text!r}")
    return value


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("agentic", "pytest-agentic: fix failing tests with a coding agent")
    group.addoption("--agent-fix", action="store_true", default=None, help=HELP_FIX)
    group.addoption("--agent-max-attempts", type=_positive_int, metavar="N", help=HELP_MAX_ATTEMPTS)
    group.addoption("--agent-model", metavar="NAME", help=HELP_MODEL)
    group.addoption("--agent-max-turns", type=_positive_int, metavar="N", help=HELP_MAX_TURNS)
    group.addoption("--agent-budget-tokens", type=_positive_int, metavar="N", help=HELP_BUDGET)
    group.addoption("--agent-max-cost", type=_positive_number, metavar="USD", help=HELP_MAX_COST)
    group.addoption("--agent-dry-run", action="store_true", default=None, help=HELP_DRY_RUN)
    group.addoption("--agent-report", metavar="PATH", help=HELP_REPORT)
    group.addoption("--agent-commit", action="store_true", default=None, help=HELP_COMMIT)
    group.addoption(
        "--agent-review", action="store_true", dest="agent_review", default=None, help=HELP_REVIEW
    )
    group.addoption(
        "--no-agent-review",
        action="store_false",
        dest="agent_review",
        default=None,
        help=HELP_NO_REVIEW,
    )
    group.addoption("--agent-workers", type=_positive_int, metavar="N", help=HELP_WORKERS)


def _wants_fix(config: pytest.Config) -> bool:
    if config.getoption("agent_fix"):
        return True
    # `fix = true` in pyproject also turns it on. Peek at the text before parsing, so a
    # session without our table pays for one small file read, not a TOML parse.
    path = Path(config.rootpath) / "pyproject.toml"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    if "pytest-agentic" not in text or "fix" not in text:
        return False
    from pytest_agentic.config import load_config
    from pytest_agentic.errors import AgenticError

    try:
        return bool(load_config(Path(config.rootpath))["fix"])
    except AgenticError:
        return False  # reported when the fix loop is asked for; a plain run is unaffected


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_AGENTIC_RERUN") or not _wants_fix(config):
        return
    if hasattr(config, "workerinput"):
        return  # an xdist worker: the controller runs the fix loop
    from pytest_agentic.fixer import FixSession

    config.pluginmanager.register(FixSession(config, resolve_settings(config)), "agentic-fixer")


def resolve_settings(config: pytest.Config) -> Any:
    """Each setting: command line, else `[tool.pytest-agentic]`, else the default.

    Errors become `pytest.UsageError` (exit status 4), one line, before any test runs. The
    run lock comes first: a second run while one is working is told so, whatever else is
    wrong (a journal the running one has open is not a killed run's).

    The project root is the folder of the nearest pyproject.toml from the invocation folder,
    else the git top level, as for the CLI and the hooks; pytest's rootdir may be elsewhere
    (`--agent-report /abs/path`, with a space, is taken for a test path when pytest picks its
    rootdir, before plugins add their options) and is used only to run tests as pytest did.
    """
    from pytest_agentic.config import load_config
    from pytest_agentic.errors import AgenticError
    from pytest_agentic.sandbox import acquire_lock

    try:
        root = load_config(Path(config.invocation_params.dir)).root
        lock = acquire_lock(root)
    except AgenticError as exc:
        raise pytest.UsageError(str(exc)) from None
    try:
        settings = _resolve_settings(config, root)
    except BaseException:
        lock.release()
        raise
    config.stash[RUN_LOCK] = lock
    config.add_cleanup(lock.release)
    return settings


def _resolve_settings(config: pytest.Config, root: Path) -> Any:
    from pytest_agentic.agent import DEFAULT_MODEL
    from pytest_agentic.config import load_config
    from pytest_agentic.errors import AgenticError
    from pytest_agentic.jobs import Settings
    from pytest_agentic.runner import RerunSettings, session_args
    from pytest_agentic.sandbox import sandbox_mode
    from pytest_agentic.tasks import active_task

    try:
        settings_file = load_config(root)
        task = active_task(settings_file)
    except AgenticError as exc:
        raise pytest.UsageError(str(exc)) from None
    try:
        sandbox = sandbox_mode(str(settings_file["sandbox"]))
    except AgenticError as exc:  # `sandbox = "required"` where bubblewrap cannot run
        raise pytest.UsageError(f"{settings_file.path or root}: {exc}") from None

    from pytest_agentic.workspace import leftover_journal

    journal = leftover_journal(root)
    if journal is not None:
        # A new run would snapshot the files a killed run changed as if they were the user's.
        raise pytest.UsageError(
            f"{journal}: an earlier fix run was killed and left files changed; run "
            "`pytest-agentic restore` first"
        )
    if task is None and settings_file.require_task:
        raise pytest.UsageError(
            f"{settings_file.path}: require_task = true but no task is active: start one with "
            "`pytest-agentic task start ID` or set PYTEST_AGENTIC_TASK"
        )

    def value(dest: str) -> Any:
        given = config.getoption(dest)
        return given if given is not None else settings_file[_SETTINGS[dest]]

    if not any(
        os.environ.get(name)
        for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_PROFILE")
    ):
        raise pytest.UsageError(
            "--agent-fix needs an Anthropic API key: set ANTHROPIC_API_KEY "
            "(or ANTHROPIC_AUTH_TOKEN)"
        )
    commit = bool(value("agent_commit"))
    if commit:
        from pytest_agentic.deliver import commit_refusal

        if value("agent_dry_run"):
            raise pytest.UsageError(
                "--agent-commit and --agent-dry-run contradict each other: a dry run keeps "
                "no fix to commit; drop one"
            )
        try:
            refusal = commit_refusal(root)
        except AgenticError as exc:
            refusal = str(exc)
        if refusal:
            raise pytest.UsageError(refusal)
    report = value("agent_report")
    from pytest_agentic.validate import check_problem

    for command in settings_file["checks"]:
        problem = check_problem(command)
        if problem is not None:
            raise pytest.UsageError(
                f"{settings_file.path}: [tool.pytest-agentic] checks: {problem}"
            )
    model = str(value("agent_model") or DEFAULT_MODEL)
    rerun = RerunSettings(
        rootdir=Path(config.rootpath),
        inifile=Path(config.inipath) if config.inipath else None,
        extra_args=session_args(
            config.invocation_params.args, config.pluginmanager.hasplugin("xdist")
        ),
        timeout=float(settings_file["rerun_timeout"]),
        sandbox=sandbox,
        sandbox_network=bool(settings_file["sandbox_network"]),
    )
    return Settings(
        max_attempts=int(value("agent_max_attempts")),
        model=model,
        max_turns=int(value("agent_max_turns")),
        budget_tokens=value("agent_budget_tokens"),
        max_cost_usd=value("agent_max_cost"),
        dry_run=bool(value("agent_dry_run")),
        report=(Path(config.invocation_params.dir) / report) if report else None,
        rerun=rerun,
        protected=tuple(settings_file.protected),
        task=task,
        api_timeout=float(settings_file["api_timeout"]),
        context_max_chars=int(settings_file["context_max_chars"]),
        commit=commit,
        review=bool(value("agent_review")),
        review_model=str(settings_file["review_model"] or model),
        max_diff_lines=int(settings_file["max_diff_lines"]),
        checks=tuple(settings_file["checks"]),
        xdist_workers=_xdist_workers(config),
        unreadable=tuple(settings_file["unreadable"]),
        view_max_chars=int(settings_file["view_max_chars"]),
        write_max_bytes=int(settings_file["write_max_bytes"]),
        workers=int(value("agent_workers")),
    )


def _xdist_workers(config: pytest.Config) -> str | None:
    """The session's `-n` (pytest-xdist), repeated by the final run of the whole selection."""
    if not config.pluginmanager.hasplugin("xdist"):
        return None
    value = config.getoption("numprocesses", None)
    return str(value) if value not in (None, 0, "0") else None
