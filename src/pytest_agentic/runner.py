"""Re-running node ids in a subprocess, the way the user's session ran them, and reading outcomes.

A re-run inherits the session's environment variables, rootdir, ini file and explicitly named
plugins (`-p`), options that change collection (`-o`, `-W`, `--import-mode`, `--confcutdir`,
`--noconftest`): a re-run that differs from the original run would give verdicts that mean nothing.
It never distributes (`-n 0` when xdist is present) and never starts another fix loop.

A re-run runs in its own session (process group), killed as a group at the time limit and
when it ends, and writes its output to a file: a child a test leaves behind (a server, a
`sleep` in the background with `-s`) holds no pipe open, so it cannot delay the verdict,
and it does not outlive the re-run (issue #10).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_agentic.sandbox import Workspace

ENV_RERUN = "PYTEST_AGENTIC_RERUN"
_PASSED_WITH_VALUE = (
    "-p",
    "-o",
    "--override-ini",
    "-W",
    "--pythonwarnings",
    "--import-mode",
    "--confcutdir",
)
_PASSED_FLAGS = ("--noconftest",)
OUTPUT_LIMIT = 12_000


@dataclass(frozen=True)
class RerunSettings:
    """What a re-run needs to match the session: taken once from the pytest config."""

    rootdir: Path
    inifile: Path | None = None
    extra_args: tuple[str, ...] = ()
    timeout: float = 300.0
    sandbox: str = "off"
    """How re-runs in a workspace are isolated: `sandbox.sandbox_mode` ("bwrap" or "off")."""
    sandbox_network: bool = False


@dataclass(frozen=True)
class RunResult:
    outcomes: dict[str, str] = field(default_factory=dict)
    output: str = ""
    seconds: float = 0.0
    timed_out: bool = False

    def passed(self, nodeids: Sequence[str]) -> bool:
        return not self.timed_out and all(self.outcomes.get(n) == "passed" for n in nodeids)

    def failing(self, nodeids: Sequence[str]) -> list[str]:
        return [n for n in nodeids if self.timed_out or self.outcomes.get(n) != "passed"]


def session_args(args: Sequence[str], has_xdist: bool) -> tuple[str, ...]:
    """The options of the original command line that a re-run must repeat."""
    kept: list[str] = []
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        name = arg.split("=", 1)[0]
        if name in _PASSED_WITH_VALUE and "=" not in arg:
            kept.extend(items[i : i + 2])  # `-p name`: the option and its value
            i += 1
        elif name in _PASSED_WITH_VALUE or name in _PASSED_FLAGS:
            kept.append(arg)  # `--import-mode=importlib`, `--noconftest`
        elif arg[:2] in ("-p", "-o", "-W") and len(arg) > 2:
            kept.append(arg)  # `-pname`, `-Werror`
        i += 1
    if has_xdist:
        kept.extend(["-n", "0"])
    return tuple(kept)


# Python 3.10 has no -P: drop the script folder ('' for -c) and the working directory from
# sys.path before pytest is imported, then start it as the `pytest` script would.
_SAFE_START = (
    "import os, sys; cwd = os.getcwd(); "
    "sys.path[:] = [p for p in sys.path if p not in ('', '.', cwd)]; "
    "import pytest; raise SystemExit(pytest.console_main())"
)


def pytest_command() -> list[str]:
    """The interpreter and pytest, started so that no file in the project can shadow pytest
    (a `pytest.py` at the root would otherwise be what `python -m pytest` imports)."""
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", "pytest"]
    return [sys.executable, "-c", _SAFE_START]  # pragma: no cover - 3.10 only


def run_tests(
    nodeids: Sequence[str], settings: RerunSettings, workspace: Workspace | None = None
) -> RunResult:
    """Run `nodeids` in a fresh pytest process; outcomes keyed by node id.

    With a `workspace`, the run sees the workspace instead of the user's tree (sandboxed as
    `settings.sandbox` says; see `sandbox.prepare`), and its private temp folder holds the
    outcome file.
    """
    scratch = workspace.base.scratch if workspace is not None else None
    with tempfile.TemporaryDirectory(prefix="pytest-agentic-", dir=scratch) as tmp:
        out = Path(tmp) / "outcomes.json"
        cmd = [*pytest_command(), "--rootdir", str(settings.rootdir)]
        if settings.inifile is not None:
            cmd += ["-c", str(settings.inifile)]
        cmd += [
            "-p",
            "pytest_agentic._rerun",
            "-p",
            "no:cacheprovider",
            "-q",
            "--tb=short",
            "-rfE",
            *settings.extra_args,
        ]
        env = {**os.environ, ENV_RERUN: "1", "PYTEST_AGENTIC_RERUN_OUT": str(out)}
        env.pop("PYTEST_XDIST_WORKER", None)
        cwd = settings.rootdir
        keys = {n: n for n in nodeids}
        if workspace is None:
            cmd += nodeids
        else:
            from pytest_agentic.sandbox import prepare

            prepared = prepare(
                cmd,
                nodeids,
                env,
                workspace=workspace,
                rootdir=settings.rootdir,
                inifile=settings.inifile,
                private_tmp=Path(tmp),
                mode=settings.sandbox,
                network=settings.sandbox_network,
            )
            cmd, cwd, env, keys = prepared.cmd, prepared.cwd, prepared.env, prepared.outcome_keys
        start = time.perf_counter()
        log_path = Path(tmp) / "output.txt"
        timed_out = False
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                proc.wait(timeout=settings.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # Also on Ctrl-C: nothing the re-run started may keep running.
                kill_group(proc)
        seconds = time.perf_counter() - start
        text = _tail(log_path.read_bytes().decode("utf-8", "replace"))
        if timed_out:
            return RunResult(
                output=text + f"\n[timed out after {settings.timeout:g} s]",
                seconds=seconds,
                timed_out=True,
            )
        outcomes: dict[str, str] = {}
        if out.is_file():
            try:
                outcomes = json.loads(out.read_text(encoding="utf-8"))
                outcomes = {keys.get(k, k): v for k, v in outcomes.items()}
            except (ValueError, UnicodeDecodeError, AttributeError):
                outcomes = {}  # a test wrote over it: no verdict from it
        return RunResult(outcomes=outcomes, output=text, seconds=seconds)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group `proc` leads (started with start_new_session), then reap."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already
    proc.wait()


def _tail(text: str) -> str:
    return text if len(text) <= OUTPUT_LIMIT else "[...]\n" + text[-OUTPUT_LIMIT:]
