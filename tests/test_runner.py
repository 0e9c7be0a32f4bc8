"""Re-runs repeat the session's options and environment, and read pytest's own outcomes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_agentic.runner import RerunSettings, run_tests, session_args


def test_session_args_keep_what_changes_collection_and_drop_the_rest() -> None:
    args = [
        "-x",
        "-p",
        "myplugin",
        "-pother",
        "-o",
        "xfail_strict=true",
        "-W=error",
        "--import-mode=importlib",
        "--noconftest",
        "-k",
        "foo",
        "--agent-fix",
        "-n",
        "2",
        "tests/test_a.py",
    ]
    assert session_args(args, has_xdist=True) == (
        "-p",
        "myplugin",
        "-pother",
        "-o",
        "xfail_strict=true",
        "-W=error",
        "--import-mode=importlib",
        "--noconftest",
        "-n",
        "0",
    )
    assert session_args(["-p", "x"], has_xdist=False) == ("-p", "x")


def test_rerun_inherits_environment_ini_and_reports_outcomes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "custom.ini").write_text("[pytest]\nmarkers =\n    slow: slow tests\n")
    (tmp_path / "test_env.py").write_text(
        "import os\nimport pytest\n\n"
        "@pytest.mark.slow\ndef test_env():\n    assert os.environ['FROM_SESSION'] == '1'\n\n"
        "def test_fails():\n    assert False\n\n"
        "@pytest.fixture\ndef broken():\n    raise RuntimeError\n\n"
        "def test_setup(broken):\n    pass\n"
    )
    monkeypatch.setenv("FROM_SESSION", "1")
    settings = RerunSettings(
        rootdir=tmp_path, inifile=tmp_path / "custom.ini", extra_args=("--strict-markers",)
    )
    ids = ["test_env.py::test_env", "test_env.py::test_fails", "test_env.py::test_setup"]
    result = run_tests(ids, settings)
    assert result.outcomes == {
        "test_env.py::test_env": "passed",
        "test_env.py::test_fails": "failed",
        "test_env.py::test_setup": "error",
    }
    assert result.passed(ids[:1]) and result.failing(ids) == ids[1:]
    assert "FAILED test_env.py::test_fails" in result.output


def test_rerun_time_limit(tmp_path: Path) -> None:
    (tmp_path / "test_slow.py").write_text("import time\n\ndef test_slow():\n    time.sleep(30)\n")
    result = run_tests(["test_slow.py::test_slow"], RerunSettings(rootdir=tmp_path, timeout=2))
    assert result.timed_out
    assert not result.passed(["test_slow.py::test_slow"])
    assert "[timed out after 2 s]" in result.output


SHADOW = (
    "import json, os, sys\n"
    "out = os.environ.get('PYTEST_AGENTIC_RERUN_OUT')\n"
    "if out:\n"
    "    json.dump({a: 'passed' for a in sys.argv if '::' in a}, open(out, 'w'))\n"
    "sys.exit(0)\n"
)


def test_a_pytest_py_in_the_project_cannot_shadow_pytest(tmp_path: Path) -> None:
    # Issue 9: `python -m pytest` imported ./pytest.py, which wrote "passed" for everything.
    (tmp_path / "pytest.py").write_text(SHADOW)
    (tmp_path / "test_a.py").write_text("def test_a():\n    assert False\n")
    result = run_tests(["test_a.py::test_a"], RerunSettings(rootdir=tmp_path))
    assert result.outcomes == {"test_a.py::test_a": "failed"}


def test_the_python_3_10_start_drops_the_working_directory_too(tmp_path: Path) -> None:
    import subprocess
    import sys

    from pytest_agentic.runner import _SAFE_START

    (tmp_path / "pytest.py").write_text(SHADOW + "raise SystemExit('shadowed')\n")
    (tmp_path / "test_a.py").write_text("def test_a():\n    assert False\n")
    proc = subprocess.run(
        [sys.executable, "-c", _SAFE_START, "-q", "-p", "no:cacheprovider", "test_a.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed" in proc.stdout


def test_a_child_left_running_by_a_test_neither_delays_the_verdict_nor_survives(
    tmp_path: Path,
) -> None:
    # With `-s` the child shares the re-run's stdout; through a pipe it held the verdict
    # until it ended (issue #10).
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -s\n")
    marker = tmp_path / "child.pid"
    (tmp_path / "test_spawn.py").write_text(
        "import subprocess, pathlib\n\n"
        "def test_spawn():\n"
        "    child = subprocess.Popen(['sleep', '25'])\n"
        f"    pathlib.Path({str(marker)!r}).write_text(str(child.pid))\n"
        "    print('spawned')\n"
    )
    import time

    start = time.monotonic()
    result = run_tests(
        ["test_spawn.py::test_spawn"],
        RerunSettings(rootdir=tmp_path, inifile=tmp_path / "pytest.ini", timeout=20),
    )
    assert time.monotonic() - start < 15
    assert result.passed(["test_spawn.py::test_spawn"]), result.output
    assert "spawned" in result.output
    pid = int(marker.read_text())
    stat = Path(f"/proc/{pid}/stat")

    def alive() -> bool:  # a zombie waiting for init to reap it counts as dead
        try:
            return not stat.read_text().split(") ")[1].startswith(("Z", "X"))
        except (FileNotFoundError, ProcessLookupError):
            return False

    deadline = time.monotonic() + 5  # SIGKILL is sent; dying takes a moment on a busy box
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive()
