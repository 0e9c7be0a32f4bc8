"""agentic-conventions: each problem found, by its message; a fresh init is clean."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import GitRepo
from pytest_agentic.config import load_config
from pytest_agentic.conventions import context_for, matching_knowledge_files
from pytest_agentic.conventions.init import apply_changes, plan_init
from pytest_agentic.conventions.lint import CODEX_MAX_BYTES, estimate_tokens, lint

PROJECT = {
    "pyproject.toml": '[project]\nname = "demo"\n[project.scripts]\ndemo = "demo.cli:main"\n'
    '[tool.pytest.ini_options]\ntestpaths = ["tests"]\n',
    "src/demo/__init__.py": '"""Demo."""\n',
    "src/demo/cli.py": '"""Command line."""\ndef main(): ...\n',
    "tests/test_cli.py": "def test_main(): pass\nclass TestCli:\n    def test_help(self): pass\n",
    "tox.ini": "[tox]\nenvlist = py311, lint\n",
    "noxfile.py": "import nox\n@nox.session\ndef docs(s): ...\n",
    "Makefile": "test:\n\tpytest\n",
}


@pytest.fixture
def project(git_repo: GitRepo) -> Path:
    root = git_repo(PROJECT)
    apply_changes(root, plan_init(load_config(root)))
    return root


def problems(root: Path) -> list[str]:
    return [str(p) for p in lint(load_config(root))]


def add_to_agents(root: Path, text: str) -> int:
    """Append `text` to AGENTS.md; the line number it starts on."""
    path = root / "AGENTS.md"
    old = path.read_text()
    path.write_text(old + text)
    return old.count("\n") + 1


def test_fresh_init_is_clean(project: Path) -> None:
    assert problems(project) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("See `src/demo/gone.py`.", "`src/demo/gone.py`: no such file or folder"),
        ("See `docs/`. Fine: `src/demo/`, `cli.py:3` is not.", "`cli.py:3`: no such file"),
        ("[design](docs/design.md#top)", "link target docs/design.md: no such file or folder"),
        ("Run `pytest tests/test_nope.py`.", "`pytest tests/test_nope.py`: no test path"),
        ("Run `python -m pytest -x testing`.", "`python -m pytest -x testing`: no test path"),
        (
            "Run `pytest tests/test_cli.py::test_gone`.",
            "`pytest tests/test_cli.py::test_gone`: no test_gone in tests/test_cli.py",
        ),
        (
            "`tests/test_cli.py::TestCli::test_gone[1]`",
            "no test_gone in class TestCli of tests/test_cli.py",
        ),
        ("`python -m demo.nothing_here`", "no module demo.nothing_here in the repository"),
        ("`tox -e docs`", "`tox -e docs`: no tox environment docs in tox.ini"),
        ("`nox -s lint`", "`nox -s lint`: no nox session lint in noxfile.py"),
        ("`make release`", "`make release`: no make target release"),
        ("```sh\n$ frobnicate --all\n```", "frobnicate is not a [project.scripts] name"),
        ("@docs/gone.md", "@docs/gone.md: imported file does not exist"),
    ],
)
def test_each_stale_reference_is_reported(project: Path, text: str, message: str) -> None:
    line = add_to_agents(project, text + "\n")
    found = problems(project)
    assert len(found) == 1, found
    # A fenced command is on the line after the fence.
    assert found[0].startswith((f"AGENTS.md:{line}:", f"AGENTS.md:{line + 1}:"))
    assert message in found[0]


def test_commands_that_resolve_are_not_reported(project: Path) -> None:
    add_to_agents(
        project,
        "```sh\npip install -e .\ndemo --help\npython -m demo.cli\npython -m json.tool\n"
        "pytest tests/test_cli.py::TestCli::test_help -k help\ntox -e lint,py312\n"
        "pytest --reruns 3 tests\npytest -q --log-cli-level=INFO tests\n"
        "nox -s docs\nmake test\n```\n`pytest tests/test_cli.py::test_main[a-b]`, "
        "`demo run`, `<placeholder>/x.py`, `*.py`, `pathlib.Path`, https://x.org/a.md\n"
        "<!-- `not/checked.py` in a comment -->\n```text\nnot/checked/either.py\n```\n",
    )
    assert problems(project) == []


def test_missing_and_broken_sections(project: Path) -> None:
    agents = project / "AGENTS.md"
    text = agents.read_text()
    start = text.index("<!-- pytest-agentic:begin testing -->")
    closing = "<!-- pytest-agentic:end testing -->"
    end = text.index(closing) + len(closing)
    agents.write_text(text[:start] + text[end:])
    assert (
        "AGENTS.md:1: missing required section 'testing' "
        "(<!-- pytest-agentic:begin testing -->); run agentic-scaffold" in problems(project)
    )
    agents.write_text(text.replace("<!-- pytest-agentic:end layout -->\n", ""))
    found = problems(project)
    assert any(
        "section 'layout' is never closed" in p or "inside section 'layout'" in p for p in found
    ), found


def test_knowledge_front_matter_globs_must_match(project: Path) -> None:
    knowledge = project / "docs/knowledge/demo.md"
    knowledge.write_text(knowledge.read_text().replace('"src/demo/**"', '"src/old/**"'))
    assert 'docs/knowledge/demo.md:3: paths glob "src/old/**" matches no file' in (
        problems(project)
    )
    knowledge.write_text("# no front matter\n")
    found = problems(project)
    assert "docs/knowledge/demo.md:1: no front matter; start the file with ---" in found[0]


def test_pointer_files_must_import_agents_md(project: Path) -> None:
    (project / "CLAUDE.md").write_text("Read the agents file.\n")
    assert problems(project) == ["CLAUDE.md:1: does not import AGENTS.md; add a line @AGENTS.md"]
    (project / "CLAUDE.md").unlink()
    assert problems(project) == ["CLAUDE.md:1: pointer file missing; run agentic-scaffold"]


def test_agents_md_missing(git_repo: GitRepo) -> None:
    root = git_repo(PROJECT)
    assert "AGENTS.md:1: missing; run agentic-scaffold or pytest-agentic init" in problems(root)


def test_token_budget(project: Path) -> None:
    with (project / "pyproject.toml").open("a") as f:
        f.write("[tool.pytest-agentic]\nagents_md_budget_tokens = 100\n")
    tokens = estimate_tokens((project / "AGENTS.md").read_text())
    assert tokens > 100
    assert problems(project) == [
        f"AGENTS.md:1: about {tokens:,} tokens (estimated as characters / 4), over the budget "
        "of 100 (agents_md_budget_tokens)"
    ]


def test_directory_chain_with_imports_over_32_kib(project: Path) -> None:
    (project / "src/demo/AGENTS.md").write_text("Package notes. @notes.md\n")
    (project / "src/demo/notes.md").write_text("x" * CODEX_MAX_BYTES)
    found = problems(project)
    assert len(found) == 1, found
    assert found[0].startswith("src/demo/AGENTS.md:1: src/demo loads ")
    assert "over the 32,768 bytes (32 KiB) Codex reads" in found[0]


def test_context_for_gives_agents_md_and_matching_knowledge(project: Path) -> None:
    (project / "docs/knowledge/tests.md").write_text('---\npaths:\n  - "tests/**"\n---\n# tests\n')
    assert matching_knowledge_files(project, ["src/demo/cli.py"]) == ["docs/knowledge/demo.md"]
    text = context_for(project, [str(project / "src/demo/cli.py"), "tests/test_cli.py"])
    assert text.startswith('<document path="AGENTS.md">\n# AGENTS.md\n')
    assert '<document path="docs/knowledge/demo.md">\n---\npaths:' in text
    assert '<document path="docs/knowledge/tests.md">' in text
    only_agents = context_for(project, ["README.md"])
    assert only_agents.count("<document") == 1
