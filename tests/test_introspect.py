"""Introspection reads layouts, metadata, tools and tests without running the code."""

from __future__ import annotations

from pathlib import Path

from conftest import GitRepo
from pytest_agentic.conventions.introspect import introspect, read_module

PYPROJECT = """\
[project]
name = "demo"
version = "1.2.3"
description = "A demo project."
requires-python = ">=3.10"
[project.optional-dependencies]
dev = ["pytest"]
[project.scripts]
demo = "demo.cli:main"
[project.entry-points.pytest11]
demo = "demo.plugin"
[tool.ruff]
line-length = 99
[tool.mypy]
strict = true
[tool.pytest.ini_options]
testpaths = ["tests"]
addopts = "-ra"
filterwarnings = ["error"]
"""

# Executing this module would leave a marker file behind: introspection must not.
SIDE_EFFECT = '''"""Does things on import."""
import pathlib
pathlib.Path(__file__).with_name("IMPORTED").write_text("x")
def visible(): ...
'''


def test_src_layout_metadata_and_module_map(git_repo: GitRepo) -> None:
    root = git_repo(
        {
            "pyproject.toml": PYPROJECT,
            "src/demo/__init__.py": '"""Demo package.\n\nMore."""\n__all__ = ["run"]\n',
            "src/demo/cli.py": '"""The command line."""\ndef main(): ...\ndef _hidden(): ...\n',
            "src/demo/side.py": SIDE_EFFECT,
            "tests/test_cli.py": "def test_x(): pass\n",
            "tests/conftest.py": "",
            ".github/workflows/ci.yml": "on: push\n",
        }
    )
    facts = introspect(root)
    assert (facts.name, facts.version, facts.python) == ("demo", "1.2.3", ">=3.10")
    assert facts.metadata_source == "pyproject.toml [project]"
    assert facts.layout == "src"
    [package] = facts.packages
    assert (package.name, package.path, package.namespace) == ("demo", "src/demo", False)
    assert package.summary == "Demo package."
    assert package.public == ("run",)
    modules = {m.name: m for m in package.modules}
    assert modules["demo.cli"].summary == "The command line."
    assert modules["demo.cli"].public == ("main",)
    assert modules["demo.side"].public == ("visible",)
    assert not (root / "src/demo/IMPORTED").exists()
    assert facts.scripts == (("demo", "demo.cli:main"),)
    assert facts.entry_points == (("pytest11", "demo", "demo.plugin"),)
    assert facts.install == ('pip install -e ".[dev]"',)
    assert facts.tests.config == "pyproject.toml [tool.pytest.ini_options]"
    assert facts.tests.testpaths == ("tests",)
    assert facts.tests.warnings_are_errors
    assert facts.tests.test_dirs == ("tests",)
    assert facts.tests.conftests == ("tests/conftest.py",)
    assert [t.name for t in facts.tools] == ["ruff", "mypy"]
    assert facts.line_length == 99
    assert facts.ci_files == (".github/workflows/ci.yml",)


def test_flat_layout_with_several_packages_skips_tests_and_docs(git_repo: GitRepo) -> None:
    root = git_repo(
        {
            "setup.cfg": "[metadata]\nname = flat\n[options]\npython_requires = >=3.9\n"
            "[options.entry_points]\nconsole_scripts =\n    flat = alpha.main:run\n"
            "[flake8]\nmax-line-length = 88\n[tool:pytest]\ntestpaths = tests\n",
            "alpha/__init__.py": '"""Alpha."""\n',
            "alpha/main.py": "def run(): ...\n",
            "beta/__init__.py": "",
            "tests/__init__.py": "",
            "tests/test_a.py": "",
            "docs/conf/__init__.py": "",
            "setup.py": "from setuptools import setup\nsetup()\n",
        }
    )
    facts = introspect(root)
    assert facts.layout == "flat"
    assert [p.name for p in facts.packages] == ["alpha", "beta"]
    assert (facts.name, facts.python) == ("flat", ">=3.9")
    assert facts.scripts == (("flat", "alpha.main:run"),)
    assert facts.tests.config == "setup.cfg [tool:pytest]"
    assert [(t.name, t.sources) for t in facts.tools] == [("flake8", ("setup.cfg [flake8]",))]


def test_namespace_package_portions_are_the_units(git_repo: GitRepo) -> None:
    root = git_repo(
        {
            "pyproject.toml": '[project]\nname = "acme-tools"\n',
            "src/acme/tools/__init__.py": '"""Tools."""\n',
            "src/acme/tools/hammer.py": "",
            "src/acme/web/__init__.py": "",
        }
    )
    facts = introspect(root)
    assert [(p.name, p.path, p.namespace) for p in facts.packages] == [
        ("acme.tools", "src/acme/tools", True),
        ("acme.web", "src/acme/web", True),
    ]
    assert [m.name for m in facts.packages[0].modules] == ["acme.tools", "acme.tools.hammer"]


def test_no_pyproject_reads_setup_py_literals_and_tox(git_repo: GitRepo) -> None:
    root = git_repo(
        {
            "setup.py": "from setuptools import setup\nsetup(name='old', version='0.1', "
            "python_requires='>=3.8', entry_points={'console_scripts': ['old = old:main']},"
            " extras_require={'test': ['pytest']})\n",
            "old/__init__.py": "def main(): ...\n",
            "tox.ini": "[tox]\nenvlist = py311, lint\n[testenv:docs]\n[pytest]\naddopts = -q\n",
            "noxfile.py": "import nox\n@nox.session\ndef tests(s): ...\n"
            "@nox.session(name='lint-all')\ndef lint(s): ...\n",
            "Makefile": "VAR := 1\ntest:\n\tpytest\n.PHONY: test\nlint: test\n",
            "requirements-dev.txt": "",
            ".pre-commit-config.yaml": "repos:\n- repo: x\n  rev: v1\n  hooks:\n"
            "  - id: black\n  - id: ruff-format\n",
        }
    )
    facts = introspect(root)
    assert (facts.name, facts.version, facts.python) == ("old", "0.1", ">=3.8")
    assert facts.metadata_source == "setup.py"
    assert facts.scripts == (("old", "old:main"),)
    assert facts.install == ('pip install -e ".[test]"', "pip install -r requirements-dev.txt")
    assert facts.tox_envs == ("py311", "lint", "docs")
    assert facts.nox_sessions == ("tests", "lint-all")
    assert facts.make_targets == ("test", "lint")
    assert facts.tests.config == "tox.ini [pytest]"
    assert {t.name for t in facts.tools} == {"black", "ruff"}
    assert facts.precommit_hooks == ("black", "ruff-format")


def test_no_metadata_and_no_package(tmp_path: Path) -> None:
    (tmp_path / "script.py").write_text("print('hi')\n")
    facts = introspect(tmp_path)  # not a git repo: the walk fallback
    assert facts.name is None
    assert facts.layout == "none"
    assert facts.packages == ()
    assert facts.files == ("script.py",)


def test_read_module_survives_syntax_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def (:\n")
    assert read_module(bad) == ("", ())


def test_ignored_build_output_is_not_a_package(git_repo: GitRepo) -> None:
    root = git_repo(
        {
            ".gitignore": "generated/\n",
            "pkg/__init__.py": "",
            "generated/__init__.py": "",
        },
        commit=False,
    )
    assert [p.name for p in introspect(root).packages] == ["pkg"]
