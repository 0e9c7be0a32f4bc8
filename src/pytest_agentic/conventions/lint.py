"""The agentic-conventions checks: convention files that say only true things, and fit.

Each problem is one `file:line: message`. The checks read the repository as a whole (not only
the files a commit touches), so a staged run and `--all-files` give the same verdict.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from pytest_agentic.config import Config
from pytest_agentic.conventions import front_matter
from pytest_agentic.conventions.introspect import RepoFacts, introspect
from pytest_agentic.conventions.markers import (
    PATH_EXTENSIONS,
    looks_secret,
    parse_sections,
    references,
)
from pytest_agentic.conventions.render import AGENTS_MD, imports_agents_md, read_template
from pytest_agentic.errors import AgenticError
from pytest_agentic.globs import GlobError, GlobSpec
from pytest_agentic.safeio import MAX_TEXT_BYTES, escape, read_project_text

#: What Codex reads of the AGENTS.md files on the way to a directory (project_doc_max_bytes).
CODEX_MAX_BYTES = 32 * 1024
#: Claude Code follows `@` imports this many levels deep.
IMPORT_DEPTH = 5
# Commands that exist wherever the project is worked on; their arguments are not checked.
KNOWN_TOOLS = frozenset(
    {
        "pip",
        "pip3",
        "uv",
        "uvx",
        "pipx",
        "poetry",
        "hatch",
        "pdm",
        "pre-commit",
        "git",
        "ruff",
        "black",
        "isort",
        "flake8",
        "mypy",
        "pyright",
        "coverage",
        "twine",
        "cd",
        "export",
        "source",
        "echo",
        "cat",
        "ls",
        "mkdir",
        "rm",
        "cp",
        "mv",
        "env",
        "docker",
        "npm",
        "npx",
    }
)
PYTHONS = frozenset({"python", "python3", "py"})
PYTEST_VALUE_OPTIONS = frozenset(
    {
        "-k",
        "-m",
        "-p",
        "-c",
        "-o",
        "-W",
        "-n",
        "--rootdir",
        "--ignore",
        "--ignore-glob",
        "--deselect",
        "--maxfail",
        "--tb",
        "--durations",
        "--basetemp",
        "--confcutdir",
        "--override-ini",
        "--junitxml",
        "--log-level",
        "--dist",
        "--numprocesses",
    }
)
PYTEST_FLAGS = frozenset(
    {
        "-x",
        "-q",
        "-v",
        "-vv",
        "-s",
        "-l",
        "-ra",
        "-rA",
        "--lf",
        "--ff",
        "--sw",
        "--nf",
        "--exitfirst",
        "--quiet",
        "--verbose",
        "--last-failed",
        "--failed-first",
        "--strict-markers",
        "--no-header",
        "--collect-only",
        "--co",
        "--pdb",
    }
)


@dataclass(frozen=True)
class Problem:
    """One finding, printed as `path:line: message`."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


# --- reading markdown -------------------------------------------------------------------


def looks_like_path(text: str) -> bool:
    if not text or any(c.isspace() for c in text) or text.startswith(("-", "@", "$", "~")):
        return False
    if any(c in text for c in "<>*?{}[]$=|\"'") or "://" in text:
        return False
    text = re.sub(r":\d+(?::\d+)?$", "", text)  # `file.py:12` names a line of a file
    return "/" in text or os.path.splitext(text)[1] in PATH_EXTENSIONS


# --- resolving names --------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What the checks resolve names against; built once per run."""

    root: Path
    files: frozenset[str]
    dirs: frozenset[str]
    facts: RepoFacts


def make_context(root: Path, facts: RepoFacts | None = None) -> Context:
    facts = facts or introspect(root)
    dirs = {""}
    for f in facts.files:
        parts = f.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return Context(root, frozenset(facts.files), frozenset(dirs), facts)


def _normal(path: str) -> str | None:
    norm = os.path.normpath(path).replace(os.sep, "/")
    if norm.startswith("../") or norm == ".." or os.path.isabs(norm):
        return None
    return "" if norm == "." else norm


def path_exists(ctx: Context, path: str, base: str = "") -> bool:
    """Whether `path` names a file or folder, relative to the repo root or to `base`."""
    path = re.sub(r":\d+(?::\d+)?$", "", path)  # `file.py:12` names a line
    for candidate in {path, f"{base}/{path}" if base else path}:
        norm = _normal(candidate.rstrip("/"))
        if norm is None:
            if (ctx.root / candidate).exists():  # outside the repo: trust the disk
                return True
            continue
        if norm in ctx.files or norm in ctx.dirs or (ctx.root / norm).exists():
            return True
    return False


def _test_names(ctx: Context, rel: str) -> dict[str, set[str]]:
    """Top-level functions and classes of a test file, each class with its methods; {} when
    it cannot be read (outside the repository, not a regular file, too big)."""
    try:
        text = read_project_text(ctx.root, rel, MAX_TEXT_BYTES)
        tree = ast.parse(text or "")
    except (AgenticError, SyntaxError, ValueError, RecursionError, MemoryError):
        return {}
    names: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names[node.name] = set()
        elif isinstance(node, ast.ClassDef):
            names[node.name] = {
                n.name
                for n in node.body
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            }
    return names


def check_pytest_args(ctx: Context, args: list[str], shown: str) -> str | None:
    """Why pytest's positional arguments (test paths and node ids) do not resolve, or None."""
    skip = False
    # A bare word (`tests`) is a path only where no option could own it as a value: plugin
    # options such as `--reruns 3` take separate values this list cannot know.
    bare_is_path = True
    for arg in args:
        if skip:
            skip, bare_is_path = False, False
            continue
        if arg.startswith("-"):
            skip = arg in PYTEST_VALUE_OPTIONS
            bare_is_path = arg in PYTEST_FLAGS or "=" in arg
            continue
        if "::" in arg:
            file, *names = arg.split("::")
            rel = _normal(re.sub(r":\d+(?::\d+)?$", "", file))
            if rel is None:
                # Never read: `/dev/zero::test_x` would read forever (issue 14).
                return f"`{shown}`: {file} is outside the repository"
            if not path_exists(ctx, file):
                return f"`{shown}`: no test file {file}"
            found = _test_names(ctx, rel)
            # `test_x[param]`: the parameter id goes (split, not a regex: linear time).
            names = [n[: n.index("[")] if n.endswith("]") and "[" in n else n for n in names]
            if names and names[0] not in found:
                return f"`{shown}`: no {names[0]} in {file}"
            if len(names) > 1 and names[1] not in found[names[0]]:
                return f"`{shown}`: no {names[1]} in class {names[0]} of {file}"
        elif looks_like_path(arg) or "/" in arg or (bare_is_path and arg.isidentifier()):
            if not path_exists(ctx, arg):
                return f"`{shown}`: no test path {arg}"
        bare_is_path = True
    return None


def module_resolves(ctx: Context, module: str) -> bool:
    rel = module.replace(".", "/")
    for source in ("src/", ""):
        for tail in (".py", "/__init__.py", "/__main__.py"):
            if f"{source}{rel}{tail}" in ctx.files:
                return True
        if f"{source}{rel}" in ctx.dirs and f"{source}{rel}" != source.rstrip("/"):
            return True  # a namespace package
    top = module.split(".", 1)[0]
    if top in sys.stdlib_module_names:
        return True
    try:
        # Only the top-level name: find_spec on "a.b" would import (run) package "a".
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def check_command(ctx: Context, command: str, strict: bool) -> str | None:
    """Why `command` does not resolve, or None. `strict`: an unknown first word is a problem
    (shell fences hold only commands; an inline span is a command only if recognised)."""
    try:
        tokens = shlex.split(command, comments=True)
    except ValueError:
        return None
    while tokens and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0]):
        tokens = tokens[1:]
    if not tokens:
        return None
    word, args = tokens[0], tokens[1:]
    facts = ctx.facts
    scripts = {name for name, _ in facts.scripts}
    if word in PYTHONS:
        if len(args) >= 2 and args[0] == "-m":
            if args[1] == "pytest":
                return check_pytest_args(ctx, args[2:], command)
            if not module_resolves(ctx, args[1]):
                return f"`{command}`: no module {args[1]} in the repository or the environment"
        elif args and args[0].endswith(".py") and not path_exists(ctx, args[0]):
            return f"`{command}`: no file {args[0]}"
        return None
    if word in ("pytest", "py.test"):
        return check_pytest_args(ctx, args, command)
    if word == "tox":
        if not ({"tox.ini", "tox.toml"} & ctx.files) and "[tool.tox" not in _pyproject(ctx):
            return f"`{command}`: no tox configuration (tox.ini, tox.toml or [tool.tox])"
        if not facts.tox_envs:
            return None  # a configuration whose env list we cannot read: do not guess
        for env in _option_values(args, ("-e", "--envlist")):
            for name in env.split(","):
                if name and not tox_env_exists(facts.tox_envs, name):
                    where = next(
                        (f for f in ("tox.ini", "tox.toml") if f in ctx.files),
                        "pyproject.toml [tool.tox]",
                    )
                    return f"`{command}`: no tox environment {name} in {where}"
        return None
    if word == "nox":
        if "noxfile.py" not in ctx.files:
            return f"`{command}`: no noxfile.py"
        for name in _option_values(args, ("-s", "--session", "--sessions", "-e")):
            # nox names a parametrized session `tests-3.12` (one per `python=` version).
            if name not in facts.nox_sessions and name.rsplit("-", 1)[0] not in facts.nox_sessions:
                return f"`{command}`: no nox session {name} in noxfile.py"
        return None
    if word == "make":
        if not facts.make_targets and not ({"Makefile", "makefile", "GNUmakefile"} & ctx.files):
            return f"`{command}`: no Makefile"
        for target in args:
            if target.startswith("-") or "=" in target:
                continue
            if target not in facts.make_targets:
                return f"`{command}`: no make target {target}"
        return None
    if word in scripts or word in KNOWN_TOOLS:
        return None
    if word.startswith(("./", "../")) or "/" in word:
        return None if path_exists(ctx, word) else f"`{command}`: no file {word}"
    if strict and shutil.which(word) is None:
        return (
            f"`{command}`: {word} is not a [project.scripts] name, a known tool or a "
            "command on PATH"
        )
    return None


PYTHON_FACTOR = re.compile(r"^(py|pypy|cpython)\d*(\.\d+)?(t)?$")


def tox_env_exists(envs: tuple[str, ...], name: str) -> bool:
    """Whether tox would run `name`: a listed environment (expanded as tox expands env lists,
    by the same parser as AGENTS.md's), a bare Python factor, or a combination of factors
    the listed environments use (tox 4 builds those on demand: `py3.12-unidecode`)."""
    if name in envs or name == "ALL" or PYTHON_FACTOR.match(name):
        return True
    factors = {f for env in envs for f in env.split("-")}
    return all(f in factors or PYTHON_FACTOR.match(f) for f in name.split("-"))


def _pyproject(ctx: Context) -> str:
    try:
        return read_project_text(ctx.root, "pyproject.toml") or ""
    except AgenticError:
        return ""


def _option_values(args: list[str], options: tuple[str, ...]) -> list[str]:
    values = []
    for i, arg in enumerate(args):
        if arg in options and i + 1 < len(args):
            values.append(args[i + 1])
        for option in options:
            if option.startswith("--") and arg.startswith(option + "="):
                values.append(arg.split("=", 1)[1])
    return values


def is_command(ctx: Context, span: str) -> bool:
    word = span.split(maxsplit=1)[0] if span.split() else ""
    if word in ("pytest", "py.test", "tox", "nox", "make"):
        return True
    if word in PYTHONS:
        return " -m " in f" {span} " or span.split()[-1].endswith(".py")
    return " " in span and word in {name for name, _ in ctx.facts.scripts}


# --- the checks -------------------------------------------------------------------------


def check_references(ctx: Context, rel: str, text: str) -> list[Problem]:
    base = os.path.dirname(rel)
    problems = []
    for ref in references(text):
        message = None
        if ref.kind == "command":
            message = check_command(ctx, ref.text, strict=True)
        elif ref.kind == "span":
            if is_command(ctx, ref.text):
                message = check_command(ctx, ref.text, strict=False)
            elif "::" in ref.text and looks_like_path(ref.text.split("::")[0]):
                message = check_pytest_args(ctx, [ref.text], ref.text)
            elif looks_like_path(ref.text) and not path_exists(ctx, ref.text, base):
                message = f"`{ref.text}`: no such file or folder"
        elif ref.kind == "link":
            target = ref.text.split("#", 1)[0]
            if target and not re.match(r"^[a-z][a-z0-9+.-]*:", target):
                if not path_exists(ctx, base + "/" + target if base else target):
                    message = f"link target {target}: no such file or folder"
        elif ref.kind == "import":
            message = check_import(ctx, base, ref.text)
        if message:
            problems.append(Problem(rel, ref.line, message))
    return problems


def check_import(ctx: Context, base: str, target: str) -> str | None:
    """Why an `@` import is a problem, or None. Claude Code loads what `@` names into every
    session, so an import must stay inside the repository and never name a secret."""
    joined = target if target.startswith(("/", "~")) else (f"{base}/{target}" if base else target)
    norm = None if target.startswith(("/", "~")) else _normal(joined)
    if looks_secret(target):
        return f"@{target}: imports a secret-looking file into every agent session; remove it"
    if norm is None:
        return f"@{target}: import leaves the repository; import only files inside it"
    problem = escape(ctx.root, norm) if norm else None
    if problem:
        return f"@{target}: {problem}; import only files inside the repository"
    if not path_exists(ctx, joined):
        return f"@{target}: imported file does not exist"
    return None


def check_sections(rel: str, text: str, required: list[str]) -> list[Problem]:
    try:
        have = {s.name for s in parse_sections(text, rel)}
    except AgenticError as exc:
        where, _, message = str(exc).partition(": ")
        line = int(where.rsplit(":", 1)[1]) if where.rsplit(":", 1)[-1].isdigit() else 1
        return [Problem(rel, line, message)]
    return [
        Problem(
            rel,
            1,
            f"missing required section '{name}' (<!-- pytest-agentic:begin {name} -->); "
            "run agentic-scaffold",
        )
        for name in required
        if name not in have
    ]


def check_knowledge(ctx: Context, rel: str, text: str, required: list[str]) -> list[Problem]:
    problems = check_sections(rel, text, required)
    globs, error = front_matter(text)
    if error:
        return [Problem(rel, 1, error), *problems]
    for glob, line in globs or []:
        try:
            spec = GlobSpec([glob])
        except GlobError:
            problems.append(Problem(rel, line, f'paths glob "{glob}" is not a valid pattern'))
            continue
        if not any(spec.match_file(f) for f in ctx.files):
            problems.append(Problem(rel, line, f'paths glob "{glob}" matches no file'))
    return problems


def check_pointer(ctx: Context, rel: str, text: str) -> list[Problem]:
    if imports_agents_md(rel, text):
        return []
    base = os.path.dirname(rel)
    import_text = "@" + os.path.relpath(AGENTS_MD, base or ".").replace(os.sep, "/")
    return [Problem(rel, 1, f"does not import AGENTS.md; add a line {import_text}")]


def estimate_tokens(text: str) -> int:
    """Tokens estimated as characters / 4 (rounded up): no tokenizer needed, and close
    enough for English prose and code to enforce a budget."""
    return math.ceil(len(text) / 4)


def loaded_bytes(ctx: Context, directory: str) -> int:
    """Bytes an agent loads working in `directory`: each AGENTS.md from the root down to it,
    plus the files they import with `@` (followed up to IMPORT_DEPTH levels, each once)."""
    parts = directory.split("/") if directory else []
    chain = [
        "/".join([*parts[:i], AGENTS_MD])
        for i in range(len(parts) + 1)
        if "/".join([*parts[:i], AGENTS_MD]) in ctx.files
    ]
    seen: set[str] = set()
    total = 0

    def visit(rel: str, depth: int) -> None:
        nonlocal total
        if rel in seen or depth > IMPORT_DEPTH:
            return
        seen.add(rel)
        try:
            # Inside the root, regular, bounded: an import of /dev/zero or a FIFO is not read.
            text = read_project_text(ctx.root, rel, MAX_TEXT_BYTES)
        except AgenticError:
            return
        if text is None:
            return
        total += len(text.encode("utf-8"))
        base = os.path.dirname(rel)
        for ref in references(text):
            if ref.kind == "import":
                target = _normal(f"{base}/{ref.text}" if base else ref.text)
                if target:
                    visit(target, depth + 1)

    for rel in chain:
        visit(rel, 0)
    return total


def _links_to_agents_md(root: Path, rel: str) -> bool:
    path = root / rel
    return path.is_symlink() and os.path.realpath(path) == os.path.realpath(root / AGENTS_MD)


def lint(config: Config, facts: RepoFacts | None = None) -> list[Problem]:
    """Every problem with the convention files of the project at `config.root`."""
    ctx = make_context(config.root, facts)
    problems: list[Problem] = []

    def read(rel: str) -> str | None:
        try:
            return read_project_text(config.root, rel, MAX_TEXT_BYTES, "")
        except AgenticError as exc:
            problems.append(Problem(rel, 1, str(exc).split(": ", 1)[-1]))
            return None

    agents_required = [s.name for s in parse_sections(read_template(config, AGENTS_MD), "t")]
    knowledge_required = [
        s.name for s in parse_sections(read_template(config, "knowledge.md"), "t")
    ]
    agents_files = sorted(f for f in ctx.files if f.rsplit("/", 1)[-1] == AGENTS_MD)
    if AGENTS_MD not in ctx.files:
        problems.append(
            Problem(AGENTS_MD, 1, "missing; run agentic-scaffold or pytest-agentic init")
        )
    for rel in agents_files:
        text = read(rel)
        if text is None:
            continue
        if rel == AGENTS_MD:
            problems += check_sections(rel, text, agents_required)
            tokens = estimate_tokens(text)
            budget = config["agents_md_budget_tokens"]
            if tokens > budget:
                problems.append(
                    Problem(
                        rel,
                        1,
                        f"about {tokens:,} tokens (estimated as characters / 4), over the budget "
                        f"of {budget:,} (agents_md_budget_tokens)",
                    )
                )
        problems += check_references(ctx, rel, text)
        directory = os.path.dirname(rel)
        size = loaded_bytes(ctx, directory)
        if size > CODEX_MAX_BYTES:
            problems.append(
                Problem(
                    rel,
                    1,
                    f"{directory or 'the root'} loads {size:,} bytes (its AGENTS.md chain plus @ "
                    f"imports), over the {CODEX_MAX_BYTES:,} bytes (32 KiB) Codex reads",
                )
            )

    knowledge_dir = str(config["knowledge_dir"]).strip("/")
    for rel in sorted(f for f in ctx.files if f.startswith(knowledge_dir + "/")):
        if not rel.endswith(".md"):
            continue
        text = read(rel)
        if text is not None:
            problems += check_knowledge(ctx, rel, text, knowledge_required)
            problems += check_references(ctx, rel, text)

    for rel in config["pointer_files"]:
        if _links_to_agents_md(config.root, rel):
            continue  # `CLAUDE.md -> AGENTS.md`: the same file, nothing to import
        text = read(rel)
        if text is None:
            problems.append(Problem(rel, 1, "pointer file missing; run agentic-scaffold"))
        else:
            problems += check_pointer(ctx, rel, text)
    return list(dict.fromkeys(problems))
