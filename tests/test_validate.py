"""The gate's checks one by one: affected tests, regression, tamper, special cases, diff budget,
project checks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pytest_agentic.validate import (
    FileChange,
    affected_tests,
    assertion_literals,
    check_argv,
    check_problem,
    compact,
    diff_budget,
    import_graph,
    importers,
    project_checks,
    proposed_checks,
    regression,
    special_cases,
    tamper,
)


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


LAYOUT = {
    "src/pkg/__init__.py": "",
    "src/pkg/core.py": "from .util import helper\n",
    "src/pkg/util.py": "import json\n",
    "src/pkg/other.py": "from pkg import core\n",
    "src/pkg/lone.py": "X = 1\n",
    "src/pkg/sub/__init__.py": "from ..lone import X\n",
    "tests/conftest.py": "",
    "tests/test_core.py": "from pkg.core import helper\n",
    "tests/test_other.py": "import pkg.other\n",
    "tests/test_lone.py": "from pkg import lone\n",
    "tests/test_plain.py": "import os\n",
    "tests/web/conftest.py": "import pkg.util\n",
    "tests/web/test_web.py": "def test(): pass\n",
}


def test_import_graph_follows_absolute_relative_and_package_imports(tmp_path: Path) -> None:
    graph = import_graph(write(tmp_path, LAYOUT))
    # `from .util import helper` runs the package's __init__ too (it is already running here).
    assert graph["src/pkg/core.py"] == {"src/pkg/__init__.py", "src/pkg/util.py"}
    assert graph["src/pkg/other.py"] == {"src/pkg/__init__.py", "src/pkg/core.py"}
    assert graph["src/pkg/sub/__init__.py"] == {"src/pkg/__init__.py", "src/pkg/lone.py"}
    # `from pkg.core import helper` runs pkg/__init__.py first, then pkg/core.py.
    assert graph["tests/test_core.py"] == {"src/pkg/__init__.py", "src/pkg/core.py"}
    assert importers(graph, ["src/pkg/util.py"]) == {
        "src/pkg/util.py",
        "src/pkg/core.py",
        "src/pkg/other.py",
        "tests/test_core.py",
        "tests/test_other.py",
        "tests/web/conftest.py",
    }


def test_affected_tests_are_the_importers_and_their_conftests(tmp_path: Path) -> None:
    root = write(tmp_path, LAYOUT)
    passing = [
        "tests/test_core.py::test_a",
        "tests/test_other.py::TestX::test_b[1.5]",
        "tests/test_lone.py::test_c",
        "tests/test_plain.py::test_d",
        "tests/web/test_web.py::test",
    ]
    assert affected_tests(root, ["src/pkg/util.py"], passing, small_suite=0) == [
        "tests/test_core.py::test_a",
        "tests/test_other.py::TestX::test_b[1.5]",
        "tests/web/test_web.py::test",  # its conftest imports pkg.util
    ]
    assert affected_tests(root, ["src/pkg/lone.py"], passing, small_suite=0) == [
        "tests/test_lone.py::test_c"
    ]
    # A small suite, or a non-Python change: all of them.
    assert affected_tests(root, ["src/pkg/lone.py"], passing) == passing
    assert affected_tests(root, ["src/pkg/data.json"], passing, small_suite=0) == passing
    # The target passes now but the graph cannot say why (a dynamic import): all of them.
    assert (
        affected_tests(
            root, ["src/pkg/lone.py"], passing, ["tests/test_plain.py::test_x"], small_suite=0
        )
        == passing
    )


def test_compact_names_whole_files_by_path() -> None:
    ids = ["a.py::t1", "a.py::t2[x::y]", "b.py::t3", "b.py::t4", "m.py::m.func"]
    assert compact(ids, {"a.py"}) == ["a.py", "b.py::t3", "b.py::t4", "m.py::m.func"]
    assert compact(ids, set()) == ids


def test_regression_names_every_newly_failing_test() -> None:
    ok = regression(["a.py::t1"], {"a.py::t1": "passed"}, "")
    assert ok.ok
    bad = regression(
        ["a.py::t1", "a.py::t2", "b.py::t3"],
        {"a.py::t1": "passed", "a.py::t2": "failed"},
        "FAILED a.py::t2 - assert 1 == 2",
    )
    assert not bad.ok
    assert bad.reason == "it broke 2 test(s) that passed before: a.py::t2, b.py::t3"
    assert "- a.py::t2\n- b.py::t3" in bad.feedback
    assert "assert 1 == 2" in bad.feedback
    assert "\n" not in bad.reason


@pytest.mark.parametrize(
    ("added", "kind"),
    [
        ("import _pytest.reports\n_pytest.reports.TestReport.x = 1\n", "pytest internals"),
        ("from _pytest.reports import TestReport\n", "pytest internals"),
        ("import pytest\n", "pytest internals"),
        ("import importlib\nimportlib.import_module('_pytest.runner')\n", "pytest internals"),
        ("import os\nos.environ['PYTEST_ADDOPTS'] = '-p x'\n", "PYTEST_* environment variables"),
        ("import os\nopen(os.environ['PYTEST_AGENTIC_RERUN_OUT'], 'w')\n", "PYTEST_*"),
        ("import os\nos._exit(0)\n", "os._exit"),
        ("from os import _exit as e\ne(0)\n", "os._exit"),
        ("import atexit\natexit.register(print)\n", "atexit"),
        ("import signal\nsignal.signal(15, print)\n", "signal handlers"),
        ("import sys\nsys.modules['calc'] = None\n", "sys.modules patching"),
        ("import builtins\nbuiltins.len = lambda x: 0\n", "builtins patching"),
        ("__builtins__['len'] = None\n", "builtins patching"),
        ("from unittest import mock\n", "unittest.mock"),
        ("from unittest.mock import patch\n", "unittest.mock"),
    ],
)
def test_tamper_rejects_code_reaching_into_the_runner(added: str, kind: str) -> None:
    old = "def add(a, b):\n    return a - b\n"
    verdict = tamper([FileChange("src/calc.py", old, old + added)])
    assert not verdict.ok
    assert kind in verdict.reason
    assert "src/calc.py:" in verdict.feedback and kind in verdict.feedback


def test_tamper_allows_what_the_file_used_before_the_attempt() -> None:
    # A pytest plugin's own code imports _pytest; a fix to it may keep doing so.
    old = "from _pytest.reports import TestReport\n\ndef outcome(r):\n    return r.passed\n"
    new = old.replace("r.passed", "r.passed and not r.skipped") + "import _pytest.nodes\n"
    assert tamper([FileChange("src/plugin.py", old, new)]).ok
    # ... but not a kind of thing it never did.
    assert not tamper([FileChange("src/plugin.py", old, new + "import os\nos._exit(0)\n")]).ok
    # A new file has no "before".
    assert not tamper([FileChange("src/new.py", None, "import _pytest\n")]).ok
    # Plain code, non-Python files and deletions pass.
    assert tamper([FileChange("src/calc.py", "x = 1\n", "import os\nx = os.sep\n")]).ok
    assert tamper([FileChange("README.md", "", "PYTEST_ADDOPTS os._exit")]).ok
    assert tamper([FileChange("src/gone.py", "import os\n", None)]).ok


def test_special_cases_on_the_tests_literals_are_flagged_not_rejected() -> None:
    test = (
        "from calc import add\n\ndef test_other():\n    assert add(7, 8) == 15\n\n"
        "def test_add():\n    assert add(2, 3) == 5\n    assert add(0, 1) == 1\n"
    )
    literals = assertion_literals(test, lineno=7)
    assert literals == {2, 3, 5}
    old = "def add(a, b):\n    return a - b\n"
    hack = "def add(a, b):\n    if a == 2 and b == 3:\n        return 5\n    return a - b\n"
    (flag,) = special_cases([FileChange("calc.py", old, hack)], literals)
    assert flag.startswith("calc.py:2: new branch `a == 2 and b == 3` compares with 2, 3")
    real = "def add(a, b):\n    if a is None:\n        return b\n    return a + b\n"
    assert special_cases([FileChange("calc.py", old, real)], literals) == []
    # unittest-style assertions count too
    assert assertion_literals("self.assertEqual(f('abc'), 42)\n") == {"abc", 42}


def test_diff_budget() -> None:
    old = "".join(f"line {i}\n" for i in range(300))
    small = FileChange("a.py", old, old.replace("line 5\n", "line five\n"))
    assert diff_budget([small], 200).ok
    assert diff_budget([small], 200).reason == "2 changed line(s), budget 200"
    big = FileChange("a.py", old, old.replace("line", "LINE"))
    verdict = diff_budget([big], 200)
    assert not verdict.ok
    assert verdict.reason == "600 changed lines, over the budget of 200 (max_diff_lines)"
    assert "Make a smaller change" in verdict.feedback
    assert not diff_budget([FileChange("new.py", None, "x\n" * 201)], 200).ok


def test_check_commands_expand_files_without_a_shell(tmp_path: Path) -> None:
    assert check_argv("ruff check {files}", ["a b.py", "c.py"]) == [
        "ruff",
        "check",
        "a b.py",
        "c.py",
    ]
    assert check_argv("tool --paths={files} ; rm -rf /", ["x.py"]) == [
        "tool",
        "--paths=x.py",
        ";",
        "rm",
        "-rf",
        "/",
    ]
    assert check_problem("ruff check {files}") is None
    assert check_problem("no-such-linter-xyz {files}") == (
        "'no-such-linter-xyz' not found on PATH (in 'no-such-linter-xyz {files}')"
    )
    assert check_problem("ruff 'unclosed") is not None
    assert check_problem("  ") == "an empty command"


def test_project_checks_feed_the_failing_output_back(tmp_path: Path) -> None:
    (tmp_path / "ok.py").write_text("x = 1\n")
    (tmp_path / "bad.py").write_text("import os\n")
    script = tmp_path / "lint.py"
    script.write_text(
        "import sys\nbad = [p for p in sys.argv[1:] if 'import os' in open(p).read()]\n"
        "for p in bad: print(f'{p}:1:1: F401 os imported but unused')\n"
        "sys.exit(1 if bad else 0)\n"
    )
    lint = f"{sys.executable} {script} {{files}}"
    assert project_checks([lint], ["ok.py"], tmp_path).ok
    verdict = project_checks([lint], ["ok.py", "bad.py"], tmp_path)
    assert not verdict.ok
    assert verdict.reason.endswith("failed (exit 1): bad.py:1:1: F401 os imported but unused")
    assert "bad.py:1:1: F401 os imported but unused" in verdict.feedback
    assert project_checks([], ["bad.py"], tmp_path).ok
    slow = f"{sys.executable} -c 'import time; time.sleep(5)'"
    assert "timed out" in project_checks([slow], ["ok.py"], tmp_path, timeout=0.5).reason


def test_init_proposes_configured_checks(tmp_path: Path) -> None:
    assert proposed_checks(tmp_path) == []
    (tmp_path / "pyproject.toml").write_text("[tool.ruff]\nline-length = 100\n")
    (tmp_path / "mypy.ini").write_text("[mypy]\n")
    assert proposed_checks(tmp_path) == ["ruff check {files}", "mypy {files}"]
