"""Attempt workspaces, sandboxed re-runs and the run lock: real git, real bubblewrap."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_agentic import sandbox
from pytest_agentic.errors import AgenticError
from pytest_agentic.runner import RerunSettings, run_tests
from pytest_agentic.sandbox import Base, Workspace

GitRepo = Callable[..., Path]

CALC = "def add(a, b):\n    return a - b\n"
TEST_OPS = "from calc import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n"
PYPROJECT = '[tool.pytest.ini_options]\npythonpath = ["src"]\n'
NODE = "tests/test_ops.py::test_add"


@pytest.fixture
def project(git_repo: GitRepo) -> Path:
    """A src-layout project, committed, with an uncommitted edit, an untracked file and an
    ignored one."""
    root = git_repo(
        {
            "pyproject.toml": PYPROJECT,
            "src/calc/__init__.py": CALC,
            "tests/test_ops.py": TEST_OPS,
            ".gitignore": "secret.env\nbuild/\n",
            "gone.txt": "tracked, then deleted by the user\n",
        },
        name="proj",
    )
    (root / "README.txt").write_text("uncommitted edit\n")
    (root / "notes.txt").write_text("untracked\n")
    (root / "secret.env").write_text("TOKEN=1\n")
    (root / "build").mkdir()
    (root / "build" / "out.txt").write_text("ignored folder\n")
    (root / "gone.txt").unlink()
    return root


@pytest.fixture
def lock(project: Path) -> Iterator[sandbox.Lock]:
    held = sandbox.acquire_lock(project)
    yield held
    held.release()


@pytest.fixture
def base(project: Path, lock: sandbox.Lock) -> Base:
    return sandbox.snapshot_base(project, lock.scratch)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under `root` (its .git included), bookkeeping and caches left out."""
    out = {}
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if path.is_file() and not {".agentic", "__pycache__", ".pytest_cache"} & set(parts):
            out["/".join(parts)] = path.read_bytes()
    return out


def settings_for(root: Path, mode: str, network: bool = False) -> RerunSettings:
    return RerunSettings(
        rootdir=root, inifile=root / "pyproject.toml", sandbox=mode, sandbox_network=network
    )


def edit(ws: Workspace, rel: str, text: str) -> None:
    """What the editor tool does: write, then tell the workspace."""
    path = ws.path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    ws.note_edit(rel)


HOSTILE = """\
import pathlib
import socket

ROOT = pathlib.Path(__file__).resolve().parents[2]
report = []
(ROOT / "tests" / "test_ops.py").write_text("def test_add():\\n    pass\\n")
for target in (ROOT / ".git" / "hooks" / "pre-commit", pathlib.Path({outside!r})):
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("#!/bin/sh\\necho owned\\n")
        report.append(f"wrote {{target.name}}")
    except OSError as exc:
        report.append(f"refused {{target.name}}: {{exc.strerror}}")
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
    report.append("network: connected")
except OSError as exc:
    report.append(f"network: {{exc.strerror or exc}}")
(ROOT / "hostile-report.txt").write_text("\\n".join(report) + "\\n")


def add(a, b):
    return a + b
"""


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP port on the host's loopback that accepts connections."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    yield server.getsockname()[1]
    server.close()


def require_bwrap() -> None:
    # The brief: bubblewrap is installed here and in CI (.ci/run installs it); a machine
    # without it must fail these tests loudly, not skip them.
    assert sandbox.sandbox_mode("auto") == "bwrap", "bubblewrap is required for these tests"


# --- the base and the workspace ----------------------------------------------------------


def test_workspace_has_uncommitted_and_untracked_files_but_not_ignored_ones(
    project: Path, base: Base
) -> None:
    ws = base.workspace()
    files = set(tree_bytes(ws.path))
    assert (ws.path / "README.txt").read_text() == "uncommitted edit\n"
    assert {"notes.txt", "src/calc/__init__.py", "tests/test_ops.py"} <= files
    assert "secret.env" not in files
    assert not (ws.path / "build").exists()
    assert "gone.txt" not in files
    assert ws.path.resolve().is_relative_to(Path(base.scratch).resolve())
    assert not ws.path.resolve().is_relative_to(project.resolve())
    ws.remove()
    assert not ws.path.exists()


def test_the_copy_has_its_own_git_that_does_not_lead_back(
    project: Path, base: Base, git: Callable[..., str]
) -> None:
    ws = base.workspace()
    assert (ws.path / ".git").is_dir()
    config = (ws.path / ".git" / "config").read_text()
    assert str(project) not in config
    assert git(ws.path, "rev-parse", "--show-toplevel").strip() == str(ws.path)
    assert git(ws.path, "log", "--format=%s").strip() == "pytest-agentic base"
    alternates = ws.path / ".git" / "objects" / "info" / "alternates"
    assert not alternates.exists()


def test_fingerprints_tell_whether_the_user_changed_a_file(project: Path, base: Base) -> None:
    assert not base.user_changed("src/calc/__init__.py")
    assert not base.user_changed("gone.txt")  # absent then, absent now
    (project / "src" / "calc" / "__init__.py").write_text(CALC + "# mine\n")
    (project / "new.txt").write_text("made during the run\n")
    assert base.user_changed("src/calc/__init__.py")
    assert base.user_changed("new.txt")
    (project / "README.txt").unlink()
    assert base.user_changed("README.txt")


def test_editor_writes_are_not_foreign_and_other_writes_are(base: Base) -> None:
    ws = base.workspace()
    edit(ws, "src/calc/__init__.py", CALC.replace("-", "+"))
    edit(ws, "src/calc/extra.py", "X = 1\n")
    assert ws.foreign_changes() == []
    assert ws.changed_files() == {"src/calc/__init__.py", "src/calc/extra.py"}

    (ws.path / "src" / "calc" / "extra.py").write_text("X = 2\n")  # after the editor
    (ws.path / "notes.txt").unlink()
    (ws.path / "tests" / "conftest.py").write_text("")
    (ws.path / ".git" / "hooks").mkdir(exist_ok=True)
    (ws.path / ".git" / "hooks" / "pre-commit").write_text("#!/bin/sh\n")
    assert ws.foreign_changes() == [
        ".git/hooks/pre-commit",
        "notes.txt",
        "src/calc/extra.py",
        "tests/conftest.py",
    ]


def test_git_commands_the_tests_run_are_not_changes(base: Base, git: Callable[..., str]) -> None:
    # setuptools-scm and friends run `git status`/`git describe --dirty` at import time; git
    # refreshes the index then. That is not the attempt touching `.git`.
    ws = base.workspace()
    assert git(ws.path, "status", "--porcelain") == ""
    git(ws.path, "describe", "--always", "--dirty")
    index = ws.path / ".git" / "index"
    before = index.read_bytes()
    os.utime(ws.path / "notes.txt", ns=(0, 0))  # new stat data to record, same bytes
    git(ws.path, "update-index", "--refresh")
    assert index.read_bytes() != before  # git did rewrite the index...
    assert ws.foreign_changes() == []  # ...recording the same content
    (ws.path / "notes.txt").write_text("staged\n")
    git(ws.path, "add", "notes.txt")
    index_and_object = ws.foreign_changes()
    assert index_and_object[0] == ".git/index"
    assert index_and_object[1].startswith(".git/objects/")
    assert index_and_object[2:] == ["notes.txt"]
    git(ws.path, "config", "core.hooksPath", "/tmp/evil")
    assert ws.foreign_changes() == [".git/config", *index_and_object]


def test_a_rewrite_that_keeps_size_and_mtime_is_still_seen(base: Base) -> None:
    ws = base.workspace()
    path = ws.path / "tests" / "test_ops.py"
    before = path.stat()
    path.write_text(TEST_OPS.replace("== 3", "!= 3"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    assert ws.foreign_changes() == ["tests/test_ops.py"]


def test_an_edit_undone_behind_the_editors_back_is_foreign(base: Base) -> None:
    ws = base.workspace()
    edit(ws, "src/calc/__init__.py", CALC.replace("-", "+"))
    (ws.path / "src" / "calc" / "__init__.py").write_text(CALC)  # back to the base bytes
    assert ws.foreign_changes() == ["src/calc/__init__.py"]


def test_caches_and_ignored_files_are_not_changes(base: Base) -> None:
    ws = base.workspace()
    for rel in (
        "src/calc/__pycache__/x.pyc",
        ".pytest_cache/v/cache/nodeids",
        "secret.env",
        "build/lib/calc.py",
    ):
        (ws.path / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws.path / rel).write_text("cache\n")
    assert ws.foreign_changes() == []
    assert ws.changed_files() == set()


def test_a_gitignore_written_by_the_attempt_does_not_hide_its_files(base: Base) -> None:
    ws = base.workspace()
    (ws.path / "src" / "sneaky").mkdir()
    (ws.path / "src" / "sneaky" / ".gitignore").write_text("*\n")
    (ws.path / "src" / "sneaky" / "payload.py").write_text("x = 1\n")
    assert ws.foreign_changes() == ["src/sneaky/.gitignore", "src/sneaky/payload.py"]


def test_diff_applies_in_a_clean_clone(
    git_repo: GitRepo, git: Callable[..., str], tmp_path: Path
) -> None:
    root = git_repo(
        {
            "a.txt": "no final newline",
            "b.txt": "to be deleted\n",
            "c.py": "x = 1\n",
            ".gitattributes": "*.py text eol=crlf\n",
        },
        name="diffed",
    )
    (root / "img.bin").write_bytes(bytes(range(256)))
    git(root, "add", "img.bin")
    git(root, "commit", "-q", "-m", "binary")
    held = sandbox.acquire_lock(root)
    try:
        base = sandbox.snapshot_base(root, held.scratch)
        ws = base.workspace()
        edit(ws, "a.txt", "still no final newline, but changed")
        (ws.path / "b.txt").unlink()
        edit(ws, "new/d.txt", "new file\n")
        edit(ws, "c.py", "x = 2\r\n")
        (ws.path / "img.bin").write_bytes(bytes(range(255, -1, -1)))
        ws.note_edit("img.bin")
        patch = ws.diff(["a.txt", "b.txt", "new/d.txt", "c.py", "img.bin", "never.txt"])
        assert "GIT binary patch" in patch
        assert "\\ No newline at end of file" in patch
        assert "deleted file mode" in patch and "new file mode" in patch
        assert ws.foreign_changes() == ["b.txt"]  # deleted by someone other than the editor
    finally:
        held.release()
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(root), str(clone))
    (clone / "p.diff").write_text(patch)
    git(clone, "apply", "--check", "p.diff")
    git(clone, "apply", "p.diff")
    assert (clone / "a.txt").read_bytes() == b"still no final newline, but changed"
    assert not (clone / "b.txt").exists()
    assert (clone / "new" / "d.txt").read_text() == "new file\n"
    assert (clone / "c.py").read_bytes() == b"x = 2\r\n"
    assert (clone / "img.bin").read_bytes() == bytes(range(255, -1, -1))


def test_diff_writes_nothing_in_the_workspace_git(base: Base) -> None:
    ws = base.workspace()
    edit(ws, "src/calc/new.py", "y = 1\n")
    assert "src/calc/new.py" in ws.diff(["src/calc/new.py"])
    assert ws.foreign_changes() == []


def test_derive_applies_a_patch_to_a_new_base(base: Base) -> None:
    ws = base.workspace()
    edit(ws, "src/calc/__init__.py", CALC.replace("-", "+"))
    integrated = base.derive(ws.diff(["src/calc/__init__.py"]))
    retry = integrated.workspace()
    assert (retry.path / "src/calc/__init__.py").read_text() == CALC.replace("-", "+")
    assert retry.changed_files() == set()
    with pytest.raises(AgenticError, match="does not apply"):
        base.derive("diff --git a/nope b/nope\n--- a/nope\n+++ b/nope\n@@ -1 +1 @@\n-a\n+b\n")


# --- re-runs in a workspace ---------------------------------------------------------------


def test_hostile_code_under_test_cannot_reach_the_user_tree_or_the_outside(
    project: Path, base: Base, tmp_path: Path, listener: int
) -> None:
    require_bwrap()
    before = tree_bytes(project)
    outside = tmp_path / "outside" / "owned.txt"
    ws = base.workspace()
    edit(ws, "src/calc/__init__.py", HOSTILE.format(outside=str(outside), port=listener))
    result = run_tests([NODE], settings_for(project, "bwrap"), workspace=ws)
    assert result.outcomes == {NODE: "passed"}  # the rewritten test passes...
    assert tree_bytes(project) == before  # ...but nothing of the user's changed
    assert not outside.exists()
    report = (ws.path / "hostile-report.txt").read_text()
    assert "refused pre-commit: Read-only file system" in report
    assert "refused owned.txt: Read-only file system" in report
    assert "network: connected" not in report
    # ...and the attempt is rejected, naming what changed behind the editor's back.
    assert ws.foreign_changes() == ["hostile-report.txt", "tests/test_ops.py"]


def test_network_is_allowed_when_configured(base: Base, project: Path, listener: int) -> None:
    require_bwrap()
    ws = base.workspace()
    edit(ws, "src/calc/__init__.py", HOSTILE.format(outside="/nonexistent/x", port=listener))
    run_tests([NODE], settings_for(project, "bwrap", network=True), workspace=ws)
    assert "network: connected" in (ws.path / "hostile-report.txt").read_text()


def test_without_the_sandbox_the_integrity_check_still_names_every_change(
    project: Path, base: Base, tmp_path: Path, listener: int
) -> None:
    before = tree_bytes(project)
    outside = tmp_path / "outside" / "owned.txt"
    ws = base.workspace()
    edit(ws, "src/calc/__init__.py", HOSTILE.format(outside=str(outside), port=listener))
    result = run_tests([NODE], settings_for(project, "off"), workspace=ws)
    assert result.outcomes == {NODE: "passed"}
    assert tree_bytes(project) == before  # ran in the copy, by path
    assert ws.foreign_changes() == [
        ".git/hooks/pre-commit",
        "hostile-report.txt",
        "tests/test_ops.py",
    ]


def test_a_src_layout_on_an_absolute_pythonpath_resolves_to_the_workspace(
    project: Path, base: Base, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_bwrap()
    # What an editable install does without a .pth file: the user's src/ by absolute path.
    (project / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")
    monkeypatch.setenv("PYTHONPATH", str(project / "src"))
    ws = base.workspace()
    (ws.path / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")
    edit(ws, "src/calc/__init__.py", CALC.replace("-", "+"))
    assert run_tests([NODE], settings_for(project, "bwrap"), workspace=ws).passed([NODE])
    assert not run_tests([NODE], settings_for(project, "bwrap")).passed([NODE])  # user's tree
    assert (project / "src/calc/__init__.py").read_text() == CALC


@pytest.mark.parametrize("mode", ["off", "bwrap"])
def test_a_forged_bytecode_cache_is_never_loaded(project: Path, base: Base, mode: str) -> None:
    # Caches are not changes, so a re-run could leave a `.pyc` of the test module whose
    # header matches the real source (pytest checks a hash of it) but whose code is a
    # weakened test. Re-runs read bytecode only from a private PYTHONPYCACHEPREFIX, so the
    # next one compiles the real test.
    import importlib.util
    import marshal

    from _pytest.assertion.rewrite import PYC_TAIL

    if mode == "bwrap":
        require_bwrap()
    ws = base.workspace()
    test = ws.path / "tests" / "test_ops.py"
    weakened = compile("def test_add():\n    pass\n", str(test), "exec")
    header = importlib.util.MAGIC_NUMBER + b"\x03\x00\x00\x00"
    header += importlib.util.source_hash(test.read_bytes())
    (ws.path / "tests" / "__pycache__").mkdir()
    pyc = ws.path / "tests" / "__pycache__" / ("test_ops" + PYC_TAIL)
    pyc.write_bytes(header + marshal.dumps(weakened))
    result = run_tests([NODE], settings_for(project, mode), workspace=ws)
    assert result.outcomes == {NODE: "failed"}, result.output
    assert ws.foreign_changes() == []  # caches are not changes: hence the private prefix


def test_rootdir_above_the_project_still_runs_in_the_workspace(project: Path, base: Base) -> None:
    # `--agent-report /abs/path` (with a space) moves pytest's rootdir up to a common parent.
    parent = project.parent
    node = f"{project.name}/{NODE}"
    for mode in ("off", sandbox.sandbox_mode("auto")):
        ws = base.workspace()
        edit(ws, "src/calc/__init__.py", CALC.replace("-", "+"))
        rerun = RerunSettings(rootdir=parent, inifile=project / "pyproject.toml", sandbox=mode)
        result = run_tests([node], rerun, workspace=ws)
        assert result.outcomes == {node: "passed"}, (mode, result.output)


# --- the sandbox setting ------------------------------------------------------------------


def test_sandbox_mode() -> None:
    require_bwrap()
    assert sandbox.sandbox_mode("required") == "bwrap"
    assert sandbox.sandbox_mode("off") == "off"
    assert "no network" in sandbox.describe("bwrap", False)
    with pytest.raises(AgenticError, match="sandbox must be one of"):
        sandbox.sandbox_mode("sometimes")


def test_required_without_bwrap_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on it
    with pytest.raises(AgenticError, match=r'sandbox = "required" but bubblewrap'):
        sandbox.sandbox_mode("required")
    assert sandbox.sandbox_mode("auto") == "off"


# --- the lock -----------------------------------------------------------------------------

HOLDER = """\
import sys, time
from pathlib import Path
from typing import Any
from pytest_agentic import sandbox
lock = sandbox.acquire_lock(Path(sys.argv[1]))
base = sandbox.snapshot_base(Path(sys.argv[1]), lock.scratch)
base.workspace()
print(lock.scratch, flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(project: Path) -> Iterator[Callable[[], tuple[subprocess.Popen[str], Path]]]:
    """Start another process that holds the project's lock (and has made a workspace)."""
    procs: list[subprocess.Popen[str]] = []

    def start() -> tuple[subprocess.Popen[str], Path]:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(project)], stdout=subprocess.PIPE, text=True
        )
        procs.append(proc)
        assert proc.stdout is not None
        scratch = Path(proc.stdout.readline().strip())
        return proc, scratch

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    sandbox.clean_leftovers(project)  # what `pytest-agentic restore` does after a kill -9


def test_a_second_run_is_refused_naming_the_running_pid(project: Path, holder: Callable) -> None:
    proc, _ = holder()
    with pytest.raises(AgenticError, match=rf"another pytest-agentic fix run \(pid {proc.pid}\)"):
        sandbox.acquire_lock(project)


def test_a_lock_left_by_a_killed_run_is_taken_over_and_its_workspaces_removed(
    project: Path, holder: Callable
) -> None:
    proc, scratch = holder()
    assert list(scratch.glob("ws-*"))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    lock = sandbox.acquire_lock(project)
    try:
        assert not scratch.exists()
        assert lock.scratch.is_dir()
    finally:
        lock.release()
    assert not lock.scratch.exists()
    assert not (project / sandbox.LOCK_FILE).exists()


def test_restore_refuses_while_the_owner_lives_then_cleans_up_after_kill_9(
    project: Path, holder: Callable
) -> None:
    proc, scratch = holder()
    with pytest.raises(AgenticError, match=rf"pid {proc.pid}.*restore only after it ends"):
        sandbox.clean_leftovers(project)
    assert scratch.is_dir()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert sandbox.clean_leftovers(project) == [scratch]
    assert not scratch.exists()
    assert not (project / sandbox.LOCK_FILE).exists()


def test_a_forged_lock_file_cannot_point_cleanup_elsewhere(project: Path, tmp_path: Path) -> None:
    victim = tmp_path / "pytest-agentic-run-victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious\n")
    lock_file = project / sandbox.LOCK_FILE
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock_file.write_text(f'{{"pid": 999999999, "scratch": "{victim}"}}')
    assert sandbox.clean_leftovers(project) == []
    assert (victim / "keep.txt").read_text() == "precious\n"
    lock_file.write_text(f'{{"pid": 999999999, "scratch": "{victim}"}}')
    sandbox.acquire_lock(project).release()  # a dead pid's lock is taken over...
    assert (victim / "keep.txt").read_text() == "precious\n"  # ...and nothing else removed


def test_a_lock_that_cannot_be_created_is_one_line_not_a_traceback(project: Path) -> None:
    (project / ".agentic").write_text("a file where the folder should be\n")
    with pytest.raises(AgenticError) as info:
        sandbox.acquire_lock(project)
    assert (
        str(info.value) == f"{project / sandbox.LOCK_FILE}: cannot create the run lock: File exists"
    )


def test_the_lock_file_names_pid_and_start_time(project: Path, lock: sandbox.Lock) -> None:
    import json

    data = json.loads((project / sandbox.LOCK_FILE).read_text())
    assert data["pid"] == os.getpid()
    assert abs(data["started"] - time.time()) < 60
    assert data["scratch"] == str(lock.scratch)
    ignore = (project / ".agentic" / ".gitignore").read_text()
    assert "/lock" in ignore.splitlines()


# --- the plugin and the CLI ---------------------------------------------------------------


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # These runs stop before any request: a key is needed only to get past that check.
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")


def test_a_second_fix_run_exits_4_naming_the_running_pid(
    project: Path, holder: Callable, api_key: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc, scratch = holder()
    # A journal the running run has open is not a killed run's: the lock message wins.
    from pytest_agentic.workspace import Journal

    Journal(project, "1-1").save("src/calc/__init__.py")
    monkeypatch.chdir(project)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--agent-fix", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 4, run.stdout + run.stderr
    assert run.stderr.splitlines()[0] == (
        f"ERROR: {project / sandbox.LOCK_FILE}: another pytest-agentic fix run "
        f"(pid {proc.pid}) is working in {project}; wait for it to finish or stop it"
    )
    assert "passed" not in run.stdout and "failed" not in run.stdout
    assert scratch.is_dir()  # the running run's workspaces are untouched


def test_restore_refuses_while_a_run_lives_then_removes_its_workspaces(
    project: Path,
    holder: Callable,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pytest_agentic.cli import main

    proc, scratch = holder()
    monkeypatch.chdir(project)
    assert main(["restore"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pytest-agentic: error: ") and f"(pid {proc.pid})" in err
    assert "restore only after it ends" in err and len(err.splitlines()) == 1
    assert scratch.is_dir()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert main(["restore"]) == 0
    assert capsys.readouterr().out == f"removed the workspaces of a killed run: {scratch}\n"
    assert not scratch.exists()


def test_sandbox_required_without_bwrap_is_a_usage_error(
    project: Path, api_key: None, tmp_path: Path
) -> None:
    (project / "pyproject.toml").write_text(
        PYPROJECT + '[tool.pytest-agentic]\nsandbox = "required"\n'
    )
    bin_dir = tmp_path / "bin-without-bwrap"
    bin_dir.mkdir()
    for tool in ("git", "cp"):
        found = subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip()
        os.symlink(found, bin_dir / tool)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--agent-fix", "-p", "no:cacheprovider"],
        cwd=project,
        env={**os.environ, "PATH": str(bin_dir)},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 4, run.stdout + run.stderr
    assert run.stderr.splitlines()[0] == (
        f'ERROR: {project / "pyproject.toml"}: sandbox = "required" but bubblewrap (bwrap) is '
        "not installed or cannot create a sandbox here; install the `bubblewrap` package or set "
        'sandbox = "auto"'
    )
    assert not (project / sandbox.LOCK_FILE).exists()  # released on the way out


def test_a_bad_sandbox_value_names_the_file_line_and_key(project: Path) -> None:
    from pytest_agentic.config import load_config

    (project / "pyproject.toml").write_text(PYPROJECT + '[tool.pytest-agentic]\nsandbox = "on"\n')
    with pytest.raises(AgenticError) as info:
        load_config(project)
    assert str(info.value) == (
        f'{project / "pyproject.toml"}:4: [tool.pytest-agentic] sandbox must be one of "auto", '
        '"required", "off", not \'on\''
    )


def test_agent_report_with_a_space_does_not_move_the_project_root(
    tmp_path: Path, git: Callable[..., str], fake_anthropic: Any
) -> None:
    # pytest picks its rootdir before plugins add their options, so in `--agent-report PATH`
    # PATH counts as a test path: with a config file above it, the rootdir moves up to a
    # folder that also holds another git repository. The fix loop still works on the project.
    from fake_anthropic import done, edit, message, tool_use

    mono = tmp_path / "mono"
    mono.mkdir()
    (mono / "pytest.ini").write_text("[pytest]\npythonpath = proj/src\n")
    repos = {}
    for name, files in {
        "proj": {
            "pyproject.toml": PYPROJECT,
            "src/calc/__init__.py": CALC,
            "tests/test_ops.py": TEST_OPS,
        },
        "other": {"other.py": "x = 1\n", "report.json": "{}\n"},
    }.items():
        repos[name] = root = mono / name
        root.mkdir()
        git(root, "init", "-q", "-b", "main")
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "initial")
    proj, other = repos["proj"], repos["other"]
    attacks = message(
        edit(str(other / "other.py"), "x = 1", "x = 2"),
        tool_use(
            "str_replace_based_edit_tool", command="create", path="../other/evil.py", file_text="1"
        ),
    )
    fake_anthropic.reply(attacks, message(edit("src/calc/__init__.py", "a - b", "a + b")), done())
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--agent-fix",
            "-p",
            "no:cacheprovider",
            "--agent-report",
            str(other / "report.json"),
        ],
        cwd=proj,
        capture_output=True,
        text=True,
    )
    assert "rootdir: " + str(mono) in run.stdout  # pytest's rootdir did move
    assert run.returncode == 0, run.stdout + run.stderr
    refusals = fake_anthropic.requests[1].tool_results()
    assert [r["is_error"] for r in refusals] == [True, True]
    assert all("outside the project root" in r["content"] for r in refusals), refusals
    assert (other / "other.py").read_text() == "x = 1\n"
    assert not (other / "evil.py").exists()
    assert git(other, "status", "--porcelain", "--untracked-files=all") == " M report.json\n"
    assert (proj / "src/calc/__init__.py").read_text() == CALC.replace("a - b", "a + b")
