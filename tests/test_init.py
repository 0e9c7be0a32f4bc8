"""`pytest-agentic init` and rendering: marked sections only, idempotent, user text kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import GitRepo
from pytest_agentic.config import load_config
from pytest_agentic.conventions.init import (
    apply_changes,
    init_main,
    plan_init,
    plan_precommit_config,
)
from pytest_agentic.conventions.render import fill_sections, parse_sections, render_text
from pytest_agentic.errors import AgenticError

SRC_PROJECT = {
    "pyproject.toml": '[project]\nname = "demo"\nrequires-python = ">=3.10"\n'
    '[project.scripts]\ndemo = "demo.cli:main"\n'
    '[tool.pytest.ini_options]\ntestpaths = ["tests"]\n',
    "src/demo/__init__.py": '"""Demo: does demo things."""\n',
    "src/demo/cli.py": '"""Command line."""\ndef main(): ...\n',
    "src/other/__init__.py": '"""Other."""\n',
    "tests/test_cli.py": "def test_main(): pass\n",
}

LAYOUTS = {
    "src": SRC_PROJECT,
    "flat": {"setup.cfg": "[metadata]\nname = flat\n", "flat/__init__.py": "", "flat/a.py": ""},
    "namespace": {"pyproject.toml": '[project]\nname = "ns"\n', "src/ns/part/__init__.py": ""},
    "no-pyproject": {"lib/__init__.py": '"""Lib."""\n', "tests/test_lib.py": ""},
}


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(root).parts
    }


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_init_is_byte_identical_the_second_time(
    git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    root = git_repo(LAYOUTS[layout])
    monkeypatch.chdir(root)
    assert init_main([]) == 0
    first = snapshot(root)
    assert "AGENTS.md" in first and "CLAUDE.md" in first
    assert plan_init(load_config(root)) == []
    assert init_main([]) == 0
    assert snapshot(root) == first


def test_init_writes_every_file_from_facts(git_repo: GitRepo) -> None:
    root = git_repo(SRC_PROJECT)
    changes = plan_init(load_config(root))
    assert [c.path for c in changes] == [
        "AGENTS.md",
        "docs/knowledge/demo.md",
        "docs/knowledge/other.md",
        "CLAUDE.md",
        ".pre-commit-config.yaml",
        ".agentic/.gitignore",
    ]
    apply_changes(root, changes)
    agents = (root / "AGENTS.md").read_text()
    assert "**demo**" in agents and "Python >=3.10" in agents
    assert "python -m pytest" in agents
    assert "`src/demo/cli.py`: Command line." in agents
    assert "`demo` (demo.cli:main)" in agents
    assert "agentic-scaffold" in agents  # the hooks init just added are already described
    knowledge = (root / "docs/knowledge/demo.md").read_text()
    assert knowledge.startswith('---\npaths:\n  - "src/demo/**"\n---\n# demo\n')
    # A module map, one line of responsibility per module; no name lists (issue 12).
    assert "- `src/demo/cli.py`: Command line.\n" in knowledge
    assert "Public" not in knowledge
    assert "<!-- people: what must stay true here" in knowledge
    assert (root / "CLAUDE.md").read_text().startswith("@AGENTS.md\n")
    # Bookkeeping is ignored in one place, .agentic/.gitignore; the top-level one is untouched.
    assert not (root / ".gitignore").exists()
    assert (root / ".agentic/.gitignore").read_text() == (
        "/runs/\n/journal/\n/active\n/lock\n/workspaces/\n"
    )


def test_refresh_keeps_hand_written_text_and_updates_sections(
    git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = git_repo(SRC_PROJECT)
    monkeypatch.chdir(root)
    init_main([])
    agents = root / "AGENTS.md"
    text = agents.read_text().replace(
        "<!-- people: conventions no tool enforces",
        "Errors are AgenticError, one line.\n<!-- people: conventions no tool enforces",
    )
    agents.write_text("Our own preface.\n\n" + text + "\nA closing note.\n")
    (root / "src/demo/new.py").write_text('"""Brand new module."""\n')
    assert init_main([]) == 0
    after = agents.read_text()
    assert after.startswith("Our own preface.\n\n# AGENTS.md\n")
    assert "Errors are AgenticError, one line.\n" in after
    assert after.endswith("\nA closing note.\n")
    assert "`src/demo/new.py`: Brand new module." in after


def test_missing_section_is_appended_with_its_heading(
    git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = git_repo(SRC_PROJECT)
    monkeypatch.chdir(root)
    (root / "AGENTS.md").write_text("# Ours\n\nHand-written only.\n")
    init_main([])
    text = (root / "AGENTS.md").read_text()
    assert text.startswith("# Ours\n\nHand-written only.\n\n<!-- pytest-agentic:begin overview")
    assert "\n## Testing\n<!-- pytest-agentic:begin testing -->\n" in text
    assert [s.name for s in parse_sections(text)] == [
        "overview",
        "commands",
        "layout",
        "conventions",
        "testing",
        "tasks",
        "boundaries",
    ]


def test_dry_run_prints_the_diff_and_writes_nothing(
    git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = git_repo(SRC_PROJECT)
    monkeypatch.chdir(root)
    before = snapshot(root)
    assert init_main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "+++ b/AGENTS.md" in out and "+++ b/.pre-commit-config.yaml" in out
    assert "+@AGENTS.md" in out
    assert snapshot(root) == before


def test_templates_dir_overrides_a_template(git_repo: GitRepo) -> None:
    root = git_repo(
        {
            **SRC_PROJECT,
            "pyproject.toml": SRC_PROJECT["pyproject.toml"]
            + '[tool.pytest-agentic]\ntemplates_dir = "tpl"\npointer_files = '
            '["CLAUDE.md", ".github/copilot-instructions.md"]\n',
            "tpl/AGENTS.md": "# Team guide\n<!-- pytest-agentic:begin commands -->\n"
            "<!-- pytest-agentic:end commands -->\n",
        }
    )
    changes = {c.path: c.new for c in plan_init(load_config(root))}
    assert changes["AGENTS.md"].startswith("# Team guide\n<!-- pytest-agentic:begin commands")
    assert "layout" not in changes["AGENTS.md"]
    assert changes[".github/copilot-instructions.md"].startswith("@../AGENTS.md\n")


def test_bad_markers_are_errors_naming_the_line() -> None:
    with pytest.raises(AgenticError, match=r"^F.md:2: section 'a' is never closed"):
        parse_sections("x\n<!-- pytest-agentic:begin a -->\n", "F.md")
    with pytest.raises(AgenticError, match=r"^F.md:1: 'end a' without a matching"):
        parse_sections("<!-- pytest-agentic:end a -->\n", "F.md")


def test_fill_sections_touches_only_marked_bodies() -> None:
    text = (
        "keep 1\n<!-- pytest-agentic:begin a -->\nold\n<!-- pytest-agentic:end a -->\n"
        "keep 2\n<!-- pytest-agentic:begin b -->\n<!-- pytest-agentic:end b -->\nkeep 3"
    )
    out = fill_sections(text, {"a": "new", "b": "B\n"})
    assert out == (
        "keep 1\n<!-- pytest-agentic:begin a -->\nnew\n<!-- pytest-agentic:end a -->\n"
        "keep 2\n<!-- pytest-agentic:begin b -->\nB\n<!-- pytest-agentic:end b -->\nkeep 3"
    )
    assert render_text(out, "", {"a": "new", "b": "B"}, {}, "f") == out


def test_precommit_config_gets_our_hooks_without_disturbing_the_rest() -> None:
    old = (
        "# our hooks\ndefault_stages: [pre-commit]\nrepos:\n"
        "  - repo: https://github.com/psf/black\n    rev: 24.1.0  # pinned\n"
        "    hooks:\n      - id: black\n\nci:\n  autofix_prs: false\n"
    )
    new = plan_precommit_config(old)
    assert new.startswith(old.split("\nci:")[0].rstrip("\n"))
    assert new.endswith("\nci:\n  autofix_prs: false\n")
    data = yaml.safe_load(new)
    assert [h["id"] for r in data["repos"] for h in r["hooks"]] == [
        "black",
        "agentic-scope",
        "agentic-scaffold",
        "agentic-conventions",
    ]
    assert data["ci"] == {"autofix_prs": False}
    assert plan_precommit_config(new) == new


def test_an_existing_bookkeeping_ignore_file_is_left_alone(git_repo: GitRepo) -> None:
    root = git_repo({**SRC_PROJECT, ".agentic/.gitignore": "/runs/\n"})
    assert ".agentic/.gitignore" not in [c.path for c in plan_init(load_config(root))]


def test_init_reports_unparseable_precommit_config(
    git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = git_repo({**SRC_PROJECT, ".pre-commit-config.yaml": "repos: [\n"})
    monkeypatch.chdir(root)
    assert init_main([]) == 2
    assert "pytest-agentic init: error: .pre-commit-config.yaml: not valid YAML" in (
        capsys.readouterr().err
    )
    assert not (root / "AGENTS.md").exists()


def test_existing_pointer_gains_only_the_import_line(
    git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = git_repo({**SRC_PROJECT, "CLAUDE.md": "Use British spelling.\n"})
    monkeypatch.chdir(root)
    init_main([])
    assert (root / "CLAUDE.md").read_text() == "@AGENTS.md\n\nUse British spelling.\n"
    (root / "CLAUDE.md").write_text("Notes first.\n\n@AGENTS.md\n")
    init_main([])
    assert (root / "CLAUDE.md").read_text() == "Notes first.\n\n@AGENTS.md\n"


def test_knowledge_front_matter_and_notes_are_the_users(
    git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = git_repo(SRC_PROJECT)
    monkeypatch.chdir(root)
    init_main([])
    knowledge = root / "docs/knowledge/demo.md"
    text = (
        knowledge.read_text()
        .replace('  - "src/demo/**"\n', '  - "src/demo/**"\n  - "tests/test_cli.py"\n')
        .replace("## Invariants\n", "## Invariants\nmain() never raises.\n")
    )
    knowledge.write_text(text)
    (root / "src/demo/extra.py").write_text('"""Extra."""\n')
    init_main([])
    after = knowledge.read_text()
    assert '  - "tests/test_cli.py"\n' in after
    assert "## Invariants\nmain() never raises.\n" in after
    assert "- `src/demo/extra.py`: Extra.\n" in after


def test_malformed_markers_stop_scaffold_with_the_line(
    git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = git_repo(SRC_PROJECT)
    monkeypatch.chdir(root)
    broken = "mine\n<!-- pytest-agentic:begin layout -->\nmine too\n"
    (root / "AGENTS.md").write_text(broken)
    assert init_main([]) == 2
    assert capsys.readouterr().err == (
        "pytest-agentic init: error: AGENTS.md:2: section 'layout' is never closed; add "
        "`<!-- pytest-agentic:end layout -->`\n"
    )
    assert (root / "AGENTS.md").read_text() == broken


def test_shipped_templates_are_found_and_the_task_example_is_a_valid_spec() -> None:
    from pytest_agentic.conventions.render import shipped_templates_dir
    from pytest_agentic.tasks import parse_task_text

    folder = shipped_templates_dir()
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "AGENTS.md",
        "knowledge.md",
        "pointer.md",
        "task.toml",
    ]
    task = parse_task_text((folder / "task.toml").read_text(), folder / "example.toml")
    assert task.id == "example" and task.scope


def test_crlf_files_keep_their_sections() -> None:
    text = "mine\r\n<!-- pytest-agentic:begin a -->\r\nold\r\n<!-- pytest-agentic:end a -->\r\n"
    out = render_text(
        text,
        "<!-- pytest-agentic:begin a -->\n<!-- pytest-agentic:end a -->\n",
        {"a": "new"},
        {},
        "f",
    )
    # Issue 14: a CRLF file stays CRLF, the new body included; the user's text keeps its bytes.
    assert out == (
        "mine\r\n<!-- pytest-agentic:begin a -->\r\nnew\r\n<!-- pytest-agentic:end a -->\r\n"
    )


def test_init_proposes_the_checks_it_finds_configured(
    git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    files = dict(SRC_PROJECT)
    files["pyproject.toml"] += "[tool.ruff]\nline-length = 100\n[tool.mypy]\nstrict = true\n"
    root = git_repo(files)
    monkeypatch.chdir(root)
    assert init_main([]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "suggested for [tool.pytest-agentic] (the fix loop's project checks): "
        'checks = ["ruff check {files}", "mypy {files}"]'
    )
    assert "checks" not in (root / "pyproject.toml").read_text()  # proposed, not written
    # Once `checks` is set, nothing is proposed.
    with (root / "pyproject.toml").open("a") as fh:
        fh.write('[tool.pytest-agentic]\nchecks = ["ruff check {files}"]\n')
    assert init_main([]) == 0
    assert "suggested" not in capsys.readouterr().out
