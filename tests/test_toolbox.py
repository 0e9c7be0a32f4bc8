"""The agent's tools on a real tree: what the model's calls do to files, and how they undo."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_agentic.agent import Toolbox
from pytest_agentic.config import DEFAULT_PROTECTED
from pytest_agentic.scope import PathPolicy
from pytest_agentic.workspace import Journal

CALC = "def add(a, b):\n    return a - b\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "calc.py").write_text(CALC)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests/test_calc.py").write_text("def test_add():\n    assert True\n")
    return tmp_path


@pytest.fixture
def toolbox(root: Path) -> Toolbox:
    policy = PathPolicy(root, protected=DEFAULT_PROTECTED, for_agent=True)
    return Toolbox(root, policy, Journal(root, "test"), lambda: "All 1 test(s) passed.")


def editor(toolbox: Toolbox, **params: object) -> tuple[str, bool]:
    return toolbox.call("str_replace_based_edit_tool", dict(params))


def tree(root: Path) -> dict[str, bytes | str]:
    """Every file (bytes), symlink (its target) and folder ("dir") under root, but .agentic."""
    entries: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(".agentic"):
            continue
        if path.is_symlink():
            entries[rel] = "-> " + str(path.readlink())
        elif path.is_dir():
            entries[rel] = "dir"
        else:
            entries[rel] = path.read_bytes()
    return entries


def test_an_edit_through_a_symlink_changes_the_target_and_keeps_the_link(
    root: Path, toolbox: Toolbox
) -> None:
    (root / "alias.py").symlink_to("calc.py")
    before = tree(root)
    result, is_error = editor(
        toolbox, command="str_replace", path="alias.py", old_str="a - b", new_str="a + b"
    )
    assert (result, is_error) == ("Edited calc.py.", False)
    assert (root / "alias.py").is_symlink()
    assert (root / "calc.py").read_text() == CALC.replace("a - b", "a + b")
    assert toolbox.journal.touched == ["calc.py"]
    toolbox.journal.restore()
    assert tree(root) == before


def test_a_symlink_may_not_carry_an_edit_into_a_test_file(root: Path, toolbox: Toolbox) -> None:
    (root / "helper.py").symlink_to("tests/test_calc.py")
    (root / "lib").symlink_to("tests", target_is_directory=True)
    before = tree(root)
    for path in ("helper.py", "lib/new_helper.py"):
        result, is_error = editor(toolbox, command="create", path=path, file_text="x = 1\n")
        assert is_error, path
        assert result.startswith(f"refused: {path} leads to tests/"), result
        assert "protected" in result
    assert tree(root) == before


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"command": "create", "path": "tests", "file_text": "x"}, "tests: is a folder"),
        ({"command": "create", "path": "calc.py/inner.py", "file_text": "x"}, "calc.py/inner.py"),
        ({"command": "view", "path": "calc.py", "view_range": ["1", "x"]}, "`view_range` must"),
        ({"command": "str_replace", "path": "calc.py", "old_str": "zzz"}, "occurs 0 times"),
        ({"command": "insert", "path": "calc.py", "insert_line": 99, "insert_text": "x"}, "0..2"),
        ({"command": "delete", "path": "calc.py"}, "unsupported command 'delete'"),
        ({"command": "view", "path": "nowhere.py"}, "nowhere.py: no such file"),
    ],
)
def test_bad_calls_come_back_as_errors_and_change_nothing(
    root: Path, toolbox: Toolbox, params: dict[str, object], message: str
) -> None:
    before = tree(root)
    result, is_error = editor(toolbox, **params)
    assert is_error
    assert message in result
    toolbox.journal.restore()
    assert tree(root) == before


def test_a_restore_removes_the_folders_an_attempt_created(root: Path, toolbox: Toolbox) -> None:
    before = tree(root)
    for path in ("pkg/sub/deep/mod.py", "pkg/other.py", "calc2.py"):
        assert editor(toolbox, command="create", path=path, file_text="x = 1\n")[1] is False
    (root / "pkg/sub/__pycache__").mkdir()  # what a re-run importing the new module leaves
    (root / "pkg/sub/__pycache__/deep.cpython-312.pyc").write_bytes(b"\0")
    assert (root / "pkg/sub/deep/mod.py").read_text() == "x = 1\n"
    toolbox.journal.restore()
    assert tree(root) == before


def test_a_restore_keeps_a_folder_the_user_filled_meanwhile(root: Path, toolbox: Toolbox) -> None:
    assert editor(toolbox, command="create", path="new/mod.py", file_text="x = 1\n")[1] is False
    (root / "new/notes.txt").write_text("mine")
    toolbox.journal.restore()
    assert not (root / "new/mod.py").exists()
    assert (root / "new/notes.txt").read_text() == "mine"


def test_view_lists_a_folder_and_numbers_lines(root: Path, toolbox: Toolbox) -> None:
    assert editor(toolbox, command="view", path=".") == ("calc.py\ntests/test_calc.py", False)
    assert editor(toolbox, command="view", path=str(root / "calc.py"), view_range=[2, -1]) == (
        "     2\t    return a - b",
        False,
    )
