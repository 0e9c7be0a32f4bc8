"""Issue 12: every fact AGENTS.md states is true of the project, and what an agent must obey
is there. Each test builds a small repository reproducing one wrong fact seen on a real
project (more-itertools, python-slugify, attrs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import GitRepo
from pytest_agentic.config import load_config
from pytest_agentic.conventions import context_for
from pytest_agentic.conventions.init import apply_changes, command_checker, init_main, plan_init
from pytest_agentic.conventions.introspect import expand_tox, introspect
from pytest_agentic.conventions.lint import lint
from pytest_agentic.conventions.render import parse_sections, plan_scaffold


def init(root: Path, verify: bool = False) -> tuple[str, list[str]]:
    """Run init's planning and writing in `root`; AGENTS.md's text and verification notes."""
    left_out: list[str] = []
    works = command_checker(root, left_out) if verify else None
    apply_changes(root, plan_init(load_config(root), works))
    return (root / "AGENTS.md").read_text(encoding="utf-8"), left_out


def section(text: str, name: str) -> str:
    (found,) = [s for s in parse_sections(text) if s.name == name]
    return text[found.body_start : found.body_end]


def problems(root: Path) -> list[str]:
    return [str(p) for p in lint(load_config(root))]


# --- tox ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "names"),
    [
        ("py{38,39,310,311,312}", ["py38", "py39", "py310", "py311", "py312"]),
        ("py3{9,10,14}-tests", ["py39-tests", "py310-tests", "py314-tests"]),
        (
            "py{3.10, 3.11}-{unidecode, regex}",
            ["py3.10-unidecode", "py3.10-regex", "py3.11-unidecode", "py3.11-regex"],
        ),
        ("py3{12-14}", ["py312", "py313", "py314"]),
        ("lint", ["lint"]),
    ],
)
def test_tox_braces_expand_as_tox_expands_them(entry: str, names: list[str]) -> None:
    assert expand_tox(entry) == names


SLUGIFY_TOX = """\
[tox]
env_list =
    coverage-erase
    py{3.10, 3.11}-{unidecode, text_unidecode}
    # a comment line inside the list
    mypy
[testenv]
commands = coverage run -m pytest {posargs:tests}
[testenv:py3{9,10,14}-tests]
commands = pytest
"""


def test_tox_factor_environments_are_listed_and_never_flagged(git_repo: GitRepo) -> None:
    root = git_repo(
        {
            "pyproject.toml": '[project]\nname = "slug"\n',
            "slug/__init__.py": '"""Slugs."""\n',
            "tests/test_slug.py": "def test_x(): pass\n",
            "tox.ini": SLUGIFY_TOX,
        }
    )
    facts = introspect(root)
    assert facts.tox_envs == (
        "coverage-erase",
        "py3.10-unidecode",
        "py3.10-text_unidecode",
        "py3.11-unidecode",
        "py3.11-text_unidecode",
        "mypy",
        "py39-tests",
        "py310-tests",
        "py314-tests",
    )
    text, _ = init(root)
    assert "- tox environments: coverage-erase, py3.10-unidecode," in text
    assert "{" not in section(text, "commands")
    # A real environment, a factor combination tox builds on demand, and a made-up one.
    agents = root / "AGENTS.md"
    agents.write_text(
        text + "\nRun `tox -e py3.11-unidecode`, `tox -e py3.12-text_unidecode` or "
        "`tox -e py314-tests`; never `tox -e py3.11-nonsense`.\n"
    )
    assert problems(root) == [
        "AGENTS.md:" + str(len(agents.read_text().splitlines())) + ": `tox -e py3.11-nonsense`: "
        "no tox environment py3.11-nonsense in tox.ini"
    ]


def test_tox_toml_env_list_is_read(git_repo: GitRepo) -> None:
    root = git_repo(
        {
            "pyproject.toml": '[project]\nname = "t"\n',
            "tox.toml": 'env_list = ["py3{12,13}", "lint"]\n[env.docs]\ncommands = [["x"]]\n',
        }
    )
    assert introspect(root).tox_envs == ("py312", "py313", "lint", "docs")


def test_pyproject_tox_tables_and_legacy_tox_ini_are_read(git_repo: GitRepo) -> None:
    root = git_repo(
        {
            "pyproject.toml": '[project]\nname = "t"\n[tool.tox]\nlegacy_tox_ini = """\n'
            '[tox]\nenvlist = py{39,310}-{a,b}\n"""\n',
        }
    )
    assert introspect(root).tox_envs == ("py39-a", "py39-b", "py310-a", "py310-b")
    root = git_repo(
        {"pyproject.toml": '[project]\nname = "t"\n[tool.tox]\nenv_list = ["3.13", "lint"]\n'}
    )
    assert introspect(root).tox_envs == ("3.13", "lint")


# --- the test command --------------------------------------------------------------------

UNITTEST_PROJECT = {
    "pyproject.toml": '[project]\nname = "iters"\n',
    "iters/__init__.py": '"""Iterator tools."""\n',
    "tests/__init__.py": "",
    "tests/test_iters.py": "import unittest\n\n\nclass T(unittest.TestCase):\n"
    "    def test_x(self):\n        pass\n",
    "Makefile": ".PHONY: test coverage\ntest:\n\tpython3 -m unittest -v ${tests}\n\n"
    "coverage:\n\tcoverage run -m unittest\n\tcoverage report --fail-under=99\n",
}


def test_a_unittest_project_is_never_told_pytest(git_repo: GitRepo) -> None:
    root = git_repo(UNITTEST_PROJECT)
    text, left_out = init(root, verify=True)
    commands = section(text, "commands")
    assert "python -m unittest\n" in commands
    assert "pytest" not in commands
    assert "- `make test` runs: python3 -m unittest -v ${tests}" in commands
    assert "python -m pytest" not in text
    assert left_out == []
    assert "Coverage must stay at or above 99 %" in section(text, "conventions")
    assert problems(root) == []


def test_init_leaves_out_a_test_command_that_does_not_collect(
    git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = git_repo(
        {
            **UNITTEST_PROJECT,
            "tests/test_broken.py": "import not_installed_anywhere\n",
        }
    )
    monkeypatch.chdir(root)
    assert init_main([]) == 0
    err = capsys.readouterr().err
    assert "left out `python -m unittest`" in err and "--no-verify keeps it" in err
    assert "python -m unittest" not in section((root / "AGENTS.md").read_text(), "commands")
    # A refresh verifies the same way, so it does not put the command back.
    assert plan_scaffold(load_config(root), introspect(root), command_checker(root, [])) == []
    (root / "AGENTS.md").unlink()
    assert init_main(["--no-verify"]) == 0
    assert "python -m unittest\n" in section((root / "AGENTS.md").read_text(), "commands")


def test_pytest_command_is_verified_by_collecting(git_repo: GitRepo) -> None:
    root = git_repo(
        {
            "pyproject.toml": '[project]\nname = "p"\n[tool.pytest.ini_options]\n'
            'testpaths = ["tests"]\n',
            "tests/test_p.py": "def test_p(): pass\n",
        }
    )
    text, left_out = init(root, verify=True)
    assert "python -m pytest\n" in section(text, "commands") and left_out == []
    (root / "tests/test_p.py").write_text("def test_p(:\n")
    (root / "AGENTS.md").unlink()
    text, left_out = init(root, verify=True)
    assert "python -m pytest" not in text
    assert left_out[0].startswith("left out `python -m pytest`: `-m pytest --collect-only -q")


def test_ci_steps_make_targets_and_requirement_files(git_repo: GitRepo) -> None:
    root = git_repo(
        {
            "pyproject.toml": '[project]\nname = "c"\n[project.optional-dependencies]\n'
            'test = ["pytest"]\n[dependency-groups]\ndev = ["ruff"]\n',
            "requirements-dev.txt": "pytest\n",
            "requirements/lint.txt": "ruff\n",
            "Makefile": "lint:\n\truff check .\nrelease:\n\ttwine upload dist/*\n",
            ".github/workflows/ci.yml": "jobs:\n  test:\n    steps:\n"
            "      - run: make lint\n      - run: rm -rf build\n"
            "      - run: python -m pytest -x\n      - run: tox -e ${{ matrix.env }}\n",
            "tests/test_c.py": "def test_c(): pass\n",
        }
    )
    text, _ = init(root)
    commands = section(text, "commands")
    for line in (
        'pip install -e ".[test]"',
        "pip install --group dev",
        "pip install -r requirements-dev.txt",
        "pip install -r requirements/lint.txt",
        "make lint",
        "- CI runs: `python -m pytest -x`",
    ):
        assert line in commands
    assert "make release" not in commands and "rm -rf" not in commands and "${{" not in commands


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"uv.lock": ""}, "uv sync"),
        ({"pdm.lock": ""}, "pdm install"),
        (
            {"pyproject.toml": '[project]\nname = "h"\n[tool.hatch.envs.lint]\n'},
            "- hatch environments (`hatch run ENV:SCRIPT`): lint",
        ),
    ],
)
def test_uv_pdm_and_hatch(git_repo: GitRepo, files: dict[str, str], expected: str) -> None:
    root = git_repo({"pyproject.toml": '[project]\nname = "h"\n', **files})
    assert expected in section(init(root)[0], "commands")


# --- what an agent must obey -------------------------------------------------------------


def test_stubs_and_stubtest_are_rules(git_repo: GitRepo) -> None:
    root = git_repo(
        {
            "setup.cfg": "[metadata]\nname = st\n",
            "st/__init__.py": '"""Stubbed."""\ndef f(x): return x\n',
            "st/__init__.pyi": "def f(x: int) -> int: ...\n",
            "Makefile": "check:\n\tstubtest st\n",
        }
    )
    conventions = section(init(root)[0], "conventions")
    assert (
        "- Type stubs (`.pyi`, e.g. `st/__init__.pyi`) sit next to the code: a change to a "
        "public signature changes its stub too; `stubtest st` checks them." in conventions
    )
    assert problems(root) == []


@pytest.mark.parametrize(
    ("files", "where"),
    [
        (
            {"pyproject.toml": '[project]\nname = "s"\n[tool.coverage.report]\nfail_under = 97\n'},
            "pyproject.toml [tool.coverage.report]",
        ),
        ({".coveragerc": "[report]\nfail_under = 97\n"}, ".coveragerc [report]"),
        ({"setup.cfg": "[coverage:report]\nfail_under = 97\n"}, "setup.cfg [coverage:report]"),
        ({"tox.ini": "[coverage:report]\nfail_under = 97\n"}, "tox.ini [coverage:report]"),
    ],
)
def test_coverage_threshold_is_a_rule(git_repo: GitRepo, files: dict[str, str], where: str) -> None:
    root = git_repo({"pyproject.toml": '[project]\nname = "s"\n', **files})
    assert f"- Coverage must stay at or above 97 % (fail_under, {where})" in init(root)[0]


def test_mypy_strict_and_changelog_fragments_are_rules(git_repo: GitRepo) -> None:
    root = git_repo(
        {
            "pyproject.toml": '[project]\nname = "m"\n[tool.mypy]\nstrict = true\n'
            '[tool.towncrier]\ndirectory = "changelog.d"\n',
            "changelog.d/.gitignore": "!.gitignore\n",
        }
    )
    conventions = section(init(root)[0], "conventions")
    assert "- mypy runs in strict mode (`strict = true`, pyproject.toml [tool.mypy])" in conventions
    assert (
        "- Each user-visible change adds a news fragment in `changelog.d/` "
        "(pyproject.toml [tool.towncrier])." in conventions
    )
    assert problems(root) == []


def test_contributing_and_ai_policy_are_linked_first(git_repo: GitRepo) -> None:
    root = git_repo(
        {
            "pyproject.toml": '[project]\nname = "a"\n',
            ".github/CONTRIBUTING.md": "# Contributing\n",
            ".github/AI_POLICY.md": "# AI policy\n",
        }
    )
    text = init(root)[0]
    first = section(text, "overview").splitlines()[0]
    assert first == (
        "Read first: [.github/AI_POLICY.md](.github/AI_POLICY.md), "
        "[.github/CONTRIBUTING.md](.github/CONTRIBUTING.md)."
    )
    assert text.index(first) < text.index("**a**")
    assert problems(root) == []


def test_our_hooks_are_not_the_projects_conventions_without_a_config_before_init(
    git_repo: GitRepo,
) -> None:
    root = git_repo({"pyproject.toml": '[project]\nname = "n"\n[tool.ruff]\nline-length = 90\n'})
    text = init(root)[0]
    assert (root / ".pre-commit-config.yaml").exists()  # init added our hooks
    assert "pre-commit run --all-files" not in text
    conventions = section(text, "conventions")
    assert "agentic" not in conventions and "pre-commit" not in conventions
    assert "ruff check ." in section(text, "commands")
    # The hook refresh after init says the same: nothing flips on the first commit.
    assert plan_scaffold(load_config(root), introspect(root)) == []


def test_a_projects_own_pre_commit_config_is_its_convention(git_repo: GitRepo) -> None:
    root = git_repo(
        {
            "pyproject.toml": '[project]\nname = "n"\n',
            ".pre-commit-config.yaml": "repos:\n- repo: https://github.com/astral-sh/ruff-pre-commit\n"
            "  rev: v0.6.0\n  hooks:\n  - id: ruff\n",
        }
    )
    text = init(root)[0]
    assert "pre-commit run --all-files" in section(text, "commands")
    assert "- pre-commit hooks (`.pre-commit-config.yaml`): ruff\n" in text


def test_bench_is_not_tests_and_dunders_are_not_public(git_repo: GitRepo) -> None:
    root = git_repo(
        {
            "pyproject.toml": '[project]\nname = "b"\n',
            "src/b/__init__.py": '"""B."""\n__all__ = ["__author__", "__doc__", "make"]\n'
            '__author__ = "x"\ndef make(): ...\n',
            "bench/test_benchmarks.py": "def test_speed(): pass\n",
            "benchmarks/test_more.py": "def test_speed(): pass\n",
            "tests/test_b.py": "def test_b(): pass\n",
        }
    )
    facts = introspect(root)
    assert facts.tests.test_dirs == ("tests",)
    assert [p.name for p in facts.packages] == ["b"]
    assert facts.packages[0].public == ("make",)
    assert "bench" not in section(init(root)[0], "testing")


# --- short -------------------------------------------------------------------------------


def test_no_volatile_counts_a_new_task_does_not_change_agents_md(git_repo: GitRepo) -> None:
    root = git_repo(
        {
            "pyproject.toml": '[project]\nname = "v"\n',
            "src/v/__init__.py": '"""V."""\n',
            "src/v/a.py": '"""A does a."""\n',
            "tests/test_v.py": "def test_v(): pass\n",
        }
    )
    text = init(root)[0]
    assert not any(ch.isdigit() for ch in section(text, "tasks") + section(text, "testing"))
    assert "package(s)" not in text and "test file(s)" not in text
    (root / ".agentic/tasks").mkdir(parents=True)
    (root / ".agentic/tasks/t.toml").write_text('scope = ["src/**"]\n')
    assert plan_scaffold(load_config(root), introspect(root)) == []


def test_knowledge_file_is_a_module_map_without_name_lists(git_repo: GitRepo) -> None:
    many = "\n".join(f"def f{i}(): ..." for i in range(40))
    root = git_repo(
        {
            "pyproject.toml": '[project]\nname = "k"\n',
            "src/k/__init__.py": '"""K."""\n',
            "src/k/big.py": '"""Big does many things.\n\nMore detail here."""\n' + many,
            "src/k/bare.py": many,
        }
    )
    init(root)
    knowledge = (root / "docs/knowledge/k.md").read_text()
    assert "- `src/k/big.py`: Big does many things.\n" in knowledge
    assert "- `src/k/bare.py`\n" in knowledge
    assert "f1" not in knowledge and "More detail" not in knowledge and " more" not in knowledge


def test_context_for_sends_no_comments_or_empty_placeholders(git_repo: GitRepo) -> None:
    root = git_repo(
        {
            "pyproject.toml": '[project]\nname = "c"\n',
            "src/c/__init__.py": '"""C."""\n',
            "src/c/m.py": '"""M."""\n',
        }
    )
    init(root)
    agents = root / "AGENTS.md"
    agents.write_text(agents.read_text() + "\n```html\n<!-- an example kept as is -->\n```\n")
    sent = context_for(root, ["src/c/m.py"])
    assert '<document path="docs/knowledge/c.md">' in sent
    assert "<!-- an example kept as is -->" in sent
    without_example = sent.replace("<!-- an example kept as is -->", "")
    assert "<!--" not in without_example and "people:" not in without_example
    assert "## Invariants" not in sent  # a heading left empty is not sent
    assert "- `src/c/m.py`: M." in sent


# --- the real projects' budget -----------------------------------------------------------


def test_generated_text_stays_small_on_a_fifty_module_package(git_repo: GitRepo) -> None:
    files = {"pyproject.toml": '[project]\nname = "big"\n', "src/big/__init__.py": '"""Big."""\n'}
    files.update({f"src/big/m{i:02d}.py": f'"""Module {i} does one thing."""\n' for i in range(50)})
    text = init(git_repo(files))[0]
    generated = sum(len(text[s.body_start : s.body_end]) for s in parse_sections(text))
    assert generated / 4 <= 1500
    assert "more" not in section(text, "layout")


def test_nox_sessions_are_parsed_never_run_and_python_variants_are_real(
    git_repo: GitRepo,
) -> None:
    root = git_repo(
        {
            "pyproject.toml": '[project]\nname = "n"\n',
            "noxfile.py": "import nox\nraise SystemExit('never run')\n"
            "@nox.session(python=['3.11', '3.12'])\ndef tests(s): ...\n"
            "@nox.session(name='lint')\ndef _lint(s): ...\n",
        }
    )
    text, _ = init(root)
    assert "- nox sessions (`noxfile.py`): tests, lint" in text
    agents = root / "AGENTS.md"
    agents.write_text(text + "\n`nox -s tests-3.12`, `nox -s lint`, `nox -s docs`\n")
    found = problems(root)
    assert len(found) == 1 and found[0].endswith("`nox -s docs`: no nox session docs in noxfile.py")
