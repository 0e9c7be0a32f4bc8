"""Convention files from templates: marked generated sections, everything else the user's.

A generated section is the text between `<!-- pytest-agentic:begin NAME -->` and
`<!-- pytest-agentic:end NAME -->`. Only those bodies are ever rewritten, and the output
depends only on the repository's contents, so a second run is byte-identical (issue 4).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pytest_agentic.config import Config
from pytest_agentic.conventions.introspect import Package, RepoFacts
from pytest_agentic.conventions.markers import (
    Section,
    begin_marker,
    end_marker,
    escape_markers,
    fill_sections,
    newline_of,
    parse_sections,
    references,
    section_body,
)
from pytest_agentic.errors import AgenticError
from pytest_agentic.safeio import MAX_TEXT_BYTES, read_project_text, write_problem

__all__ = [
    "FileChange",
    "fill_sections",
    "parse_sections",
    "plan_scaffold",
    "render_text",
]

AGENTS_MD = "AGENTS.md"
# How many modules AGENTS.md lists one by one; beyond it, packages only (the knowledge files
# hold the full map). AGENTS.md is loaded on every turn, so it must stay short.
LAYOUT_MODULE_LIMIT = 40
PUBLIC_NAME_LIMIT = 12


@dataclass(frozen=True)
class FileChange:
    """A file `init` or `agentic-scaffold` would write: repo-relative path, old and new text."""

    path: str
    old: str | None
    new: str


def _heading_before(template: str, section: Section) -> str:
    lines = template[: section.body_start].splitlines()
    # lines[-1] is the begin marker; a heading directly above it travels with the section.
    if len(lines) >= 2 and lines[-2].startswith("#"):
        return lines[-2] + "\n"
    return ""


def render_text(
    existing: str | None,
    template: str,
    contents: Mapping[str, str],
    variables: Mapping[str, str],
    where: str,
) -> str:
    """The file's new text: the template (variables filled) when the file is new, else the
    existing text with its generated sections refreshed and the template's missing sections
    appended. Text outside the markers is never changed."""
    if existing is None:
        text = template
        for key, value in variables.items():
            # Values come from the code (a package name, a glob): escaped like a body.
            text = text.replace("{{" + key + "}}", escape_markers(value))
        return fill_sections(text, contents, where)
    text = fill_sections(existing, contents, where)
    have = {s.name for s in parse_sections(text, where)}
    nl = newline_of(existing)  # an appended section follows the file's own line endings
    for section in parse_sections(template, "template"):
        if section.name in have:
            continue
        if text and not text.endswith("\n"):
            text += nl
        text += (
            nl
            + _heading_before(template, section).replace("\n", nl)
            + begin_marker(section.name)
            + nl
            + section_body(contents.get(section.name, ""), nl)
            + end_marker(section.name)
            + nl
        )
    return text


# --- templates --------------------------------------------------------------------------


def shipped_templates_dir() -> Path:
    """The templates that come with pytest-agentic.

    A wheel carries them inside the package (`pytest_agentic/templates`, hatch force-include);
    an editable install does not apply force-include, so there they are the repository's
    top-level `templates/` next to `src/`.
    """
    here = Path(__file__).resolve().parent.parent
    inside = here / "templates"
    if inside.is_dir():
        return inside
    return here.parent.parent / "templates"


def read_template(config: Config, name: str) -> str:
    """Template `name` from `templates_dir` when set and present there, else the shipped one."""
    custom = config["templates_dir"]
    if custom:
        # A project's own template: inside the root, never through a symlink out of it.
        rel = f"{str(custom).rstrip('/')}/{name}"
        text = read_project_text(config.root, rel, MAX_TEXT_BYTES, f"{rel} (templates_dir)")
        if text is not None:
            return text
    path = shipped_templates_dir() / name
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AgenticError(f"{path}: cannot read template: {exc}") from None


# --- section contents -------------------------------------------------------------------


def _code(text: str) -> str:
    return f"`{text}`"


def _names(names: tuple[str, ...]) -> str:
    shown = ", ".join(_code(n) for n in names[:PUBLIC_NAME_LIMIT])
    more = len(names) - PUBLIC_NAME_LIMIT
    return shown + (f" and {more} more" if more > 0 else "")


def _folder(path: str) -> str:
    return path if path.endswith(".py") else path + "/"


def knowledge_path(config: Config, package: Package) -> str:
    return f"{config['knowledge_dir'].strip('/')}/{package.name}.md"


def test_command(facts: RepoFacts) -> str | None:
    if facts.tests.config or facts.tests.test_file_count:
        return "python -m pytest"
    return None


def lint_commands(facts: RepoFacts) -> list[str]:
    if facts.precommit_hooks:
        return ["pre-commit run --all-files"]
    commands = {
        "ruff": "ruff check .",
        "black": "black --check .",
        "isort": "isort --check-only .",
        "flake8": "flake8",
        "mypy": "mypy",
        "pyright": "pyright",
    }
    return [commands[t.name] for t in facts.tools]


def overview_section(facts: RepoFacts, config: Config) -> str:
    lines = []
    if facts.name:
        head = f"**{facts.name}**" + (f" {facts.version}" if facts.version else "")
        if facts.description:
            head += f": {facts.description}"
        lines.append(head)
        source = facts.metadata_source or ""
        file, _, table = source.partition(" ")
        python = f"Python {facts.python}; " if facts.python else ""
        lines.append(f"{python}metadata in {_code(file)}{' ' + table if table else ''}.")
    else:
        lines.append("No project metadata (no pyproject.toml, setup.cfg or setup.py).")
    if facts.layout == "src":
        where = f"src layout: importable code under {_code('src/')}"
    elif facts.layout == "flat":
        where = "flat layout: packages at the top level"
    else:
        where = "no importable package found"
    namespace = [p.name for p in facts.packages if p.namespace]
    if facts.packages:
        names = ", ".join(_code(p.name) for p in facts.packages)
        where += f"; {len(facts.packages)} package(s): {names}"
    if namespace:
        where += f" (namespace: {', '.join(namespace)})"
    lines.append(where + ".")
    if facts.ci_files:
        lines.append("CI: " + ", ".join(_code(f) for f in facts.ci_files) + ".")
    return "\n".join(lines)


def commands_section(facts: RepoFacts, config: Config) -> str:
    commands = list(facts.install)
    if test_command(facts):
        commands.append(test_command(facts) or "")
    commands += lint_commands(facts)
    lines = []
    if commands:
        lines += ["```sh", *commands, "```"]
    else:
        lines.append("No install, test or lint command found in the repository.")
    if facts.scripts:
        lines.append(
            "Console scripts: "
            + ", ".join(f"{_code(name)} ({target})" for name, target in facts.scripts)
            + "."
        )
    if facts.tox_envs:
        lines.append(f"tox environments ({_code('tox.ini')}): {', '.join(facts.tox_envs)}.")
    if facts.nox_sessions:
        lines.append(f"nox sessions ({_code('noxfile.py')}): {', '.join(facts.nox_sessions)}.")
    if facts.make_targets:
        lines.append(f"make targets: {', '.join(facts.make_targets)}.")
    return "\n".join(lines)


def layout_section(facts: RepoFacts, config: Config) -> str:
    if not facts.packages:
        return "No Python package found."
    total = sum(len(p.modules) for p in facts.packages)
    per_module = total <= LAYOUT_MODULE_LIMIT
    lines = []
    for package in facts.packages:
        summary = f": {package.summary}" if package.summary else ""
        lines.append(f"- {_code(_folder(package.path))}{summary}")
        lines.append(f"  Knowledge: {_code(knowledge_path(config, package))}.")
        for module in package.modules:
            if module.name == package.name:
                continue
            is_sub = module.path.endswith("/__init__.py")
            if not per_module and not is_sub:
                continue
            shown = module.path[: -len("__init__.py")] if is_sub else module.path
            lines.append(f"  - {_code(shown)}" + (f": {module.summary}" if module.summary else ""))
        if not per_module:
            lines.append(f"  ({len(package.modules)} modules; the knowledge file lists each.)")
    if facts.entry_points:
        lines.append(
            "Entry points: "
            + ", ".join(
                f"{group} {_code(name)} ({target})" for group, name, target in facts.entry_points
            )
            + "."
        )
    return "\n".join(lines)


def conventions_section(facts: RepoFacts, config: Config) -> str:
    lines = []
    for tool in facts.tools:
        config_files = [s for s in tool.sources if not s.startswith("pre-commit hook")]
        hooks = [s.split("`")[1] for s in tool.sources if s.startswith("pre-commit hook")]
        parts = [
            f"{_code(s.split(' ', 1)[0])} {s.split(' ', 1)[1]}" if " " in s else _code(s)
            for s in config_files
        ]
        if hooks:
            parts.append("pre-commit " + ", ".join(hooks))
        sources = "; ".join(parts)
        lines.append(f"- {tool.name}: {sources}")
    if facts.line_length:
        lines.append(f"- line length {facts.line_length}")
    if facts.precommit_hooks:
        lines.append(
            f"- pre-commit hooks ({_code('.pre-commit-config.yaml')}): "
            + ", ".join(facts.precommit_hooks)
        )
    return "\n".join(lines) if lines else "No lint, format or type-check configuration found."


def testing_section(facts: RepoFacts, config: Config) -> str:
    tests = facts.tests
    lines = []
    if tests.config:
        file, _, table = tests.config.partition(" ")
        lines.append(f"- pytest configuration: {_code(file)} {table}")
    if tests.testpaths:
        lines.append("- testpaths: " + ", ".join(tests.testpaths))
    if tests.addopts:
        lines.append(f"- addopts: {_code(tests.addopts)}")
    if tests.warnings_are_errors:
        lines.append("- filterwarnings = error: any warning fails the test that raised it")
    if tests.test_file_count:
        where = ", ".join(_code(d + "/") for d in tests.test_dirs) or "the top level"
        lines.append(f"- {tests.test_file_count} test file(s) in {where}")
    if tests.conftests:
        lines.append("- fixtures: " + ", ".join(_code(c) for c in tests.conftests))
    return "\n".join(lines) if lines else "No tests and no pytest configuration found."


def tasks_section(facts: RepoFacts, config: Config) -> str:
    tasks_dir = str(config["tasks_dir"]).strip("/")
    specs = sorted(f for f in facts.files if f.startswith(tasks_dir + "/") and f.endswith(".toml"))
    lines = [
        f"- Task specs: {tasks_dir}/<id>.toml ({len(specs)} present); each spec's `scope` "
        "globs are the files a change for it may touch.",
        "- Active task: $PYTEST_AGENTIC_TASK, else the id in .agentic/active.",
    ]
    if "agentic-scope" in facts.precommit_hooks:
        lines.append("- The agentic-scope pre-commit hook refuses commits outside that scope.")
    lines.append(
        "- `pytest --agent-fix` lets an agent edit only inside that scope and never the "
        "protected files below."
    )
    return "\n".join(lines)


def boundaries_section(facts: RepoFacts, config: Config) -> str:
    pointers = [p for p in config["pointer_files"]]
    lines = [
        "Protected from the fixer (`protected` in [tool.pytest-agentic], gitwildmatch):",
        "```gitignore",
        *config.protected,
        "```",
        "Text between `pytest-agentic:begin` and `pytest-agentic:end` markers is rewritten by "
        "agentic-scaffold; write outside them.",
    ]
    if pointers:
        lines.append("Pointer files importing this one: " + ", ".join(pointers) + ".")
    return "\n".join(lines)


AGENTS_SECTIONS = {
    "overview": overview_section,
    "commands": commands_section,
    "layout": layout_section,
    "conventions": conventions_section,
    "testing": testing_section,
    "tasks": tasks_section,
    "boundaries": boundaries_section,
}


def modules_section(package: Package) -> str:
    kind = "namespace package" if package.namespace else "package"
    lines = [f"{kind.capitalize()} `{package.name}` in {_code(_folder(package.path))}."]
    if package.summary:
        lines.append(package.summary)
    if package.public:
        lines.append(f"Public names: {_names(package.public)}.")
    lines.append("")
    for module in package.modules:
        if module.name == package.name:
            continue
        text = f"- {_code(module.path)} (`{module.name}`)"
        if module.summary:
            text += f": {module.summary}"
        if module.public:
            text += f" Public: {_names(module.public)}."
        lines.append(text)
    return "\n".join(lines).rstrip("\n")


def pointer_import(pointer: str) -> str:
    """`@AGENTS.md` relative to the pointer's folder (Claude resolves imports that way)."""
    folder = os.path.dirname(pointer) or "."
    return "@" + os.path.relpath(AGENTS_MD, folder).replace(os.sep, "/")


def imports_agents_md(rel: str, text: str) -> bool:
    """Whether the file `rel` with `text` has an `@` import that resolves to AGENTS.md."""
    base = os.path.dirname(rel)
    for ref in references(text):
        if ref.kind == "import":
            target = os.path.normpath(os.path.join(base, ref.text)).replace(os.sep, "/")
            if target == AGENTS_MD:
                return True
    return False


# --- planning ---------------------------------------------------------------------------


def _read_existing(root: Path, rel: str) -> str | None:
    # Inside the root, a regular file of bounded size, newlines untranslated (a CRLF file
    # stays CRLF); a symlink out of the root is never read (its target may be a secret).
    return read_project_text(root, rel)


def _left_alone(root: Path, rel: str) -> bool:
    """A symlink (e.g. `CLAUDE.md -> AGENTS.md`) is the user's choice: never replaced by a
    copy. Anything else that may not be written is an error when it is planned."""
    problem = write_problem(root, rel)
    return problem is not None and problem.startswith("a symlink;")


def plan_scaffold(config: Config, facts: RepoFacts) -> list[FileChange]:
    """AGENTS.md, a knowledge file per package and the pointer files, as they should be;
    only the ones that differ from what is on disk."""
    root = config.root
    planned: list[tuple[str, str]] = []
    template = read_template(config, "AGENTS.md")
    contents = {name: build(facts, config) for name, build in AGENTS_SECTIONS.items()}
    existing = _read_existing(root, AGENTS_MD)
    planned.append((AGENTS_MD, render_text(existing, template, contents, {}, AGENTS_MD)))

    knowledge_template = read_template(config, "knowledge.md")
    for package in facts.packages:
        rel = knowledge_path(config, package)
        variables = {"package": package.name, "paths": f'  - "{package.glob}"'}
        text = render_text(
            _read_existing(root, rel),
            knowledge_template,
            {"modules": modules_section(package)},
            variables,
            rel,
        )
        planned.append((rel, text))

    pointer_template = read_template(config, "pointer.md")
    for pointer in config["pointer_files"]:
        current = _read_existing(root, pointer)
        if current is None:
            text = pointer_template.replace("{{import}}", pointer_import(pointer))
            planned.append((pointer, text))
        elif not imports_agents_md(pointer, current):
            # The user's file stays as it is; it only gains the import line on top, which is
            # what makes it a pointer at all.
            planned.append((pointer, pointer_import(pointer) + "\n\n" + current))

    changes = []
    for rel, new in planned:
        if _left_alone(root, rel):
            continue
        old = _read_existing(root, rel)
        if old != new:
            changes.append(FileChange(rel, old, new))
    return changes
