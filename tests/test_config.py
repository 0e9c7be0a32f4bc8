from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pytest_agentic.config import DEFAULT_PROTECTED, load_config
from pytest_agentic.errors import AgenticError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_table(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n')
    config = load_config(tmp_path)
    assert config.root == tmp_path
    assert config.tasks_dir == tmp_path / ".agentic/tasks"
    assert config.protected == list(DEFAULT_PROTECTED)
    assert config.require_task is False
    assert config["max_attempts"] == 3


def test_values_are_read_from_the_nearest_pyproject_above_cwd(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", "[tool.pytest-agentic]\nrequire_task = true\n")
    sub = tmp_path / "src" / "pkg"
    sub.mkdir(parents=True)
    config = load_config(sub)
    assert config.root == tmp_path
    assert config.path == tmp_path / "pyproject.toml"
    assert config.require_task is True


def test_unknown_key_names_file_line_key_and_a_close_match(tmp_path: Path) -> None:
    path = write(tmp_path / "pyproject.toml", '[tool.pytest-agentic]\n\nprotect = ["x"]\n')
    with pytest.raises(AgenticError) as exc:
        load_config(tmp_path)
    assert str(exc.value) == (
        f"{path}:3: [tool.pytest-agentic] unknown key 'protect'; did you mean 'protected'?"
    )


def test_unknown_key_without_a_close_match_lists_the_known_keys(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", "[tool.pytest-agentic]\nzzz = 1\n")
    with pytest.raises(AgenticError, match=r"unknown key 'zzz'; known keys: .*tasks_dir"):
        load_config(tmp_path)


def test_bad_toml_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "pyproject.toml", "[tool.pytest-agentic]\nrequire_task = \n")
    with pytest.raises(AgenticError) as exc:
        load_config(tmp_path)
    assert str(exc.value).startswith(f"{path}:2:16: invalid TOML: ")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('require_task = "yes"', "require_task must be true or false, not str 'yes'"),
        ("protected = 'tests/'", "protected must be a list of strings, not str 'tests/'"),
        ("protected = [1]", "protected must be a list of strings, not list [1]"),
        ("max_attempts = 0", "max_attempts must be a positive integer, not int 0"),
        ("max_attempts = true", "max_attempts must be a positive integer, not bool True"),
        ("tasks_dir = 3", "tasks_dir must be a string, not int 3"),
        ("max_cost_usd = 0", "max_cost_usd must be a positive number, not int 0"),
        ('max_cost_usd = "5"', "max_cost_usd must be a positive number, not str '5'"),
        ("unreadable = '.env'", "unreadable must be a list of strings, not str '.env'"),
    ],
)
def test_wrong_type_names_key_and_expected_type(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path / "pyproject.toml", f"[tool.pytest-agentic]\n{line}\n")
    with pytest.raises(AgenticError) as exc:
        load_config(tmp_path)
    assert str(exc.value) == f"{path}:2: [tool.pytest-agentic] {message}"


def test_cli_reports_config_errors_in_one_line_with_exit_2(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", "[tool.pytest-agentic]\nrequire_tsk = true\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_agentic.cli", "task", "list"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"pytest-agentic: error: {tmp_path / 'pyproject.toml'}:2: [tool.pytest-agentic] "
        "unknown key 'require_tsk'; did you mean 'require_task'?"
    ]
