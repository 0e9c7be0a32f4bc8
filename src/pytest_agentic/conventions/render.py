"""Convention files from templates: marked generated sections, everything else the user's.

A generated section is the text between `<!-- pytest-agentic:begin NAME -->` and
`<!-- pytest-agentic:end NAME -->`. Only those bodies are ever rewritten, and the output
depends only on the repository's contents, so a second run is byte-identical (issue 4).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
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


def _folder(path: str) -> str:
    return path if path.endswith(".py") else path + "/"


def knowledge_path(config: Config, package: Package) -> str:
    return f"{config['knowledge_dir'].strip('/')}/{package.name}.md"


def test_command(facts: RepoFacts) -> str | None:
    """The command that runs the tests, as the project's own files do (issue 12: a project
    that tests with `python -m unittest` is never told `python -m pytest`)."""
    if facts.test_runner == "unittest":
        return "python -m unittest"
    if facts.test_runner == "pytest":
        return "python -m pytest"
    return None


def lint_commands(facts: RepoFacts) -> list[str]:
    # `pre-commit run` is a project command only when the project has hooks of its own: a
    # config holding nothing but ours (written by init) is not the project's convention.
    if facts.own_precommit:
        return ["pre-commit run --all-files"]
    if any(t in ("check", "lint") for t, _ in facts.make_recipes):
        return []  # `make check` / `make lint` is how this project runs its linters
    commands = {
        "ruff": "ruff check .",
        "black": "black --check .",
        "isort": "isort --check-only .",
        "flake8": "flake8",
        "mypy": "mypy",
        "pyright": "pyright",
    }
    return [commands[t.name] for t in facts.tools]


# Make targets worth naming: what a contributor runs before pushing.
MAKE_TARGETS_SHOWN = ("test", "tests", "check", "lint", "coverage", "typecheck", "format")


def project_commands(facts: RepoFacts) -> list[str]:
    """`make` targets the project defines for tests and checks, with what they run."""
    ci = {c.split()[1] for c in facts.ci_commands if c.startswith("make ") and len(c.split()) > 1}
    return [
        f"make {target}"
        for target, _ in facts.make_recipes
        if target in MAKE_TARGETS_SHOWN or target in ci
    ]


def guides_line(facts: RepoFacts) -> str | None:
    if not facts.guides:
        return None
    return "Read first: " + ", ".join(f"[{g}]({g})" for g in facts.guides) + "."


def overview_section(facts: RepoFacts, config: Config) -> str:
    lines = []
    guides = guides_line(facts)
    if guides:
        lines.append(guides)
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
        where += "; packages: " + ", ".join(_code(p.name) for p in facts.packages)
    if namespace:
        where += f" (namespace: {', '.join(namespace)})"
    lines.append(where + ".")
    if facts.ci_files:
        lines.append("CI: " + ", ".join(_code(f) for f in facts.ci_files) + ".")
    return "\n".join(lines)


def commands_section(
    facts: RepoFacts, config: Config, works: Callable[[str], bool] | None = None
) -> str:
    """Set-up, test and check commands read from the project's files. `works`, when given,
    is asked about each command and a command it rejects is left out (init's verification)."""
    test = test_command(facts)
    candidates = [*facts.install, *([test] if test else []), *lint_commands(facts)]
    candidates += [c for c in project_commands(facts) if c not in candidates]
    commands = [c for c in candidates if works is None or works(c)]
    lines = []
    if commands:
        lines += ["```sh", *commands, "```"]
    else:
        lines.append("No install, test or lint command found in the repository.")
    recipes = dict(facts.make_recipes)
    for command in commands:
        if command.startswith("make ") and recipes.get(command[5:]):
            ran = "; ".join(recipes[command[5:]])
            lines.append(f"- {_code(command)} runs: {ran}")
    ci = [c for c in facts.ci_commands if c not in commands]
    if ci:
        lines.append("- CI runs: " + ", ".join(_code(c) for c in ci))
    if facts.scripts:
        lines.append(
            "- Console scripts: "
            + ", ".join(f"{_code(name)} ({target})" for name, target in facts.scripts)
        )
    if facts.tox_envs:
        lines.append("- tox environments: " + ", ".join(facts.tox_envs))
    if facts.hatch_envs:
        lines.append(
            "- hatch environments (`hatch run ENV:SCRIPT`): " + ", ".join(facts.hatch_envs)
        )
    if facts.nox_sessions:
        lines.append(f"- nox sessions ({_code('noxfile.py')}): {', '.join(facts.nox_sessions)}")
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
        lines.append(f"  Module map: {_code(knowledge_path(config, package))}.")
        for module in package.modules:
            if module.name == package.name:
                continue
            is_sub = module.path.endswith("/__init__.py")
            if not per_module and not is_sub:
                continue
            shown = module.path[: -len("__init__.py")] if is_sub else module.path
            lines.append(f"  - {_code(shown)}" + (f": {module.summary}" if module.summary else ""))
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
    lines = [f"- {rule}" for rule in facts.rules]
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
    own = [h for h in facts.precommit_hooks if not h.startswith("agentic-")]
    if facts.own_precommit and own:
        lines.append(f"- pre-commit hooks ({_code('.pre-commit-config.yaml')}): " + ", ".join(own))
    return "\n".join(lines) if lines else "No lint, format or type-check configuration found."


def testing_section(facts: RepoFacts, config: Config) -> str:
    tests = facts.tests
    lines = []
    if facts.test_runner == "unittest":
        lines.append("- runner: unittest (`python -m unittest`), not pytest")
    if tests.config:
        file, _, table = tests.config.partition(" ")
        lines.append(f"- pytest configuration: {_code(file)} {table}")
    if tests.testpaths:
        lines.append("- testpaths: " + ", ".join(tests.testpaths))
    if tests.addopts:
        lines.append(f"- addopts: {_code(tests.addopts)}")
    if tests.warnings_are_errors:
        lines.append("- filterwarnings = error: any warning fails the test that raised it")
    if tests.test_dirs:
        lines.append("- tests in " + ", ".join(_code(d + "/") for d in tests.test_dirs))
    elif tests.test_file_count:
        lines.append("- tests at the top level")
    if tests.conftests:
        lines.append("- fixtures: " + ", ".join(_code(c) for c in tests.conftests))
    return "\n".join(lines) if lines else "No tests and no pytest configuration found."


def tasks_section(facts: RepoFacts, config: Config) -> str:
    # No count of specs here: AGENTS.md must not change when a task is added (issue 12).
    tasks_dir = str(config["tasks_dir"]).strip("/")
    lines = [
        f"- Task specs: {tasks_dir}/<id>.toml; each spec's `scope` globs are the files a "
        "change for it may touch.",
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
    """The package's module map: one line per module, its docstring's first line (else
    nothing). No name lists: an agent finds names with grep; it cannot find responsibilities."""
    kind = "namespace package" if package.namespace else "package"
    lines = [f"{kind.capitalize()} `{package.name}` in {_code(_folder(package.path))}."]
    if package.summary:
        lines.append(package.summary)
    lines.append("")
    for module in package.modules:
        if module.name == package.name:
            continue
        text = f"- {_code(module.path)}"
        if module.summary:
            text += f": {module.summary}"
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


def _section_body(text: str | None, name: str) -> str | None:
    if text is None:
        return None
    for section in parse_sections(text, AGENTS_MD):
        if section.name == name:
            return text[section.body_start : section.body_end].strip("\n")
    return None


def plan_scaffold(
    config: Config, facts: RepoFacts, works: Callable[[str], bool] | None = None
) -> list[FileChange]:
    """AGENTS.md, a knowledge file per package and the pointer files, as they should be;
    only the ones that differ from what is on disk.

    `works` verifies a command (init's cheap check). It is asked only when the commands
    section would change, so a refresh that changes nothing there costs no subprocess.
    """
    root = config.root
    planned: list[tuple[str, str]] = []
    template = read_template(config, "AGENTS.md")
    contents = {name: build(facts, config) for name, build in AGENTS_SECTIONS.items()}
    existing = _read_existing(root, AGENTS_MD)
    if works is not None and _section_body(existing, "commands") != contents["commands"]:
        contents["commands"] = commands_section(facts, config, works)
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
