"""Reading a Python repository without importing or running its code: the facts convention
files are made of.

Everything here parses files (ast, tomllib, configparser, yaml) and never executes them, so
`init` and the hooks are safe on any checkout and cannot be fooled by import side effects.
"""

from __future__ import annotations

import ast
import configparser
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

# Folders that are never source code of the project itself.
SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".tox",
        ".nox",
        ".venv",
        "venv",
        "env",
        "__pycache__",
        "node_modules",
        "build",
        "dist",
        "site-packages",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        ".eggs",
    }
)
# Top-level folders of a flat layout that hold no importable package of the project.
NOT_PACKAGES = frozenset(
    {
        "tests",
        "test",
        "testing",
        "docs",
        "doc",
        "examples",
        "example",
        "benchmarks",
        "benchmark",
        "bench",
        "scripts",
        "tools",
        "templates",
        "ci",
        "bin",
    }
)
TOOLS = ("ruff", "black", "isort", "flake8", "mypy", "pyright")
CI_GLOBS = (
    ".github/workflows/",
    ".gitlab-ci.yml",
    ".circleci/",
    "azure-pipelines.yml",
    ".travis.yml",
    "Jenkinsfile",
    ".ci/",
    "bitbucket-pipelines.yml",
)


@dataclass(frozen=True)
class Module:
    """One module: dotted name, repo-relative path, first docstring line, public names."""

    name: str
    path: str
    summary: str
    public: tuple[str, ...]


@dataclass(frozen=True)
class Package:
    """A top-level package (or a portion of a namespace package): what a knowledge file covers."""

    name: str
    path: str
    """Repo-relative folder (or file, for a single-module package)."""
    namespace: bool
    modules: tuple[Module, ...]
    """Its own `__init__` first (when it has one), then the rest by dotted name."""

    @property
    def summary(self) -> str:
        return self.modules[0].summary if self.modules else ""

    @property
    def public(self) -> tuple[str, ...]:
        init = self.modules[0] if self.modules else None
        return init.public if init is not None and init.name == self.name else ()

    @property
    def glob(self) -> str:
        return f"{self.path}/**" if not self.path.endswith(".py") else self.path


@dataclass(frozen=True)
class Tool:
    """A lint/format/type tool in use and where that was read (config file, pre-commit hook)."""

    name: str
    sources: tuple[str, ...]


@dataclass(frozen=True)
class TestSetup:
    """How the tests are laid out and configured."""

    config: str | None
    """Where the pytest configuration lives, e.g. `pyproject.toml [tool.pytest.ini_options]`."""
    testpaths: tuple[str, ...]
    addopts: str
    warnings_are_errors: bool
    test_dirs: tuple[str, ...]
    test_file_count: int
    conftests: tuple[str, ...]


@dataclass(frozen=True)
class RepoFacts:
    """All that introspection found; every field is something read from the repository."""

    root: Path
    files: tuple[str, ...]
    name: str | None
    version: str | None
    description: str | None
    python: str | None
    metadata_source: str | None
    layout: str
    """"src", "flat" or "none" (no package found)."""
    packages: tuple[Package, ...]
    scripts: tuple[tuple[str, str], ...]
    entry_points: tuple[tuple[str, str, str], ...]
    extras: tuple[str, ...]
    install: tuple[str, ...]
    tests: TestSetup
    tools: tuple[Tool, ...]
    line_length: int | None
    precommit_hooks: tuple[str, ...]
    ci_files: tuple[str, ...]
    tox_envs: tuple[str, ...]
    nox_sessions: tuple[str, ...]
    make_targets: tuple[str, ...]
    make_recipes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Each make target with its recipe lines (for what `make test` really runs)."""
    ci_commands: tuple[str, ...] = ()
    """One-line `run:` steps of `.github/workflows/*.yml`, in order, each once."""
    test_runner: str | None = None
    """"pytest" or "unittest": what the project's own files run its tests with."""
    rules: tuple[str, ...] = ()
    """What an agent must obey, each line naming the file it was read from."""
    guides: tuple[str, ...] = ()
    """CONTRIBUTING and AI-usage policy files, to be read first."""
    hatch_envs: tuple[str, ...] = ()
    """`[tool.hatch.envs]` environments (`hatch run ENV:SCRIPT`)."""
    own_precommit: bool = False
    """Whether `.pre-commit-config.yaml` has hooks other than ours (the project's own)."""


# --- the file list ----------------------------------------------------------------------


def list_files(root: Path) -> tuple[str, ...]:
    """Repo-relative posix paths of the files that exist: tracked plus untracked-not-ignored
    when `root` is in a git work tree (so ignored build output never counts), else a walk."""
    try:
        proc = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=False,
        )
    except OSError:
        proc = None
    if proc is not None and proc.returncode == 0:
        names = proc.stdout.decode("utf-8", "surrogateescape").split("\0")
        # --cached lists files deleted in the work tree too; a staged run sees the work tree.
        seen = sorted({n for n in names if n and os.path.isfile(os.path.join(root, n))})
        return tuple(n for n in seen if not set(n.split("/")[:-1]) & SKIP_DIRS)
    out: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        rel = os.path.relpath(folder, root)
        for name in files:
            out.append(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
    return tuple(sorted(out))


# --- metadata ---------------------------------------------------------------------------


def _read_text(path: Path) -> str | None:
    # Regular files of bounded size only: a FIFO or /dev/zero behind a name is not read.
    from pytest_agentic.errors import AgenticError
    from pytest_agentic.safeio import MAX_TEXT_BYTES, read_bytes_bounded

    try:
        return read_bytes_bounded(path, 4 * MAX_TEXT_BYTES, str(path)).decode("utf-8")
    except (OSError, UnicodeDecodeError, AgenticError):
        return None


def read_pyproject(root: Path) -> dict[str, Any]:
    text = _read_text(root / "pyproject.toml")
    if text is None:
        return {}
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return {}  # config.load_config reports syntax errors with their line


def read_ini(path: Path) -> configparser.RawConfigParser | None:
    text = _read_text(path)
    if text is None:
        return None
    # Raw and non-strict: these files hold %-signs and duplicate keys in the wild.
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error:
        return None
    return parser


def setup_py_kwargs(root: Path) -> dict[str, Any]:
    """Literal keyword arguments of the `setup(...)` call in setup.py (others are skipped)."""
    text = _read_text(root / "setup.py")
    if text is None:
        return {}
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name == "setup":
                out: dict[str, Any] = {}
                for kw in node.keywords:
                    if kw.arg is None:
                        continue
                    try:
                        out[kw.arg] = ast.literal_eval(kw.value)
                    except ValueError:
                        continue
                return out
    return {}


def _table(data: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    for key in keys:
        value = data.get(key) if isinstance(data, Mapping) else None
        if not isinstance(value, Mapping):
            return {}
        data = value
    return dict(data)


def _ini_entry_points(text: str) -> list[tuple[str, str]]:
    pairs = []
    for line in text.splitlines():
        if "=" in line:
            name, _, target = line.partition("=")
            if name.strip():
                pairs.append((name.strip(), target.strip()))
    return pairs


# --- modules ----------------------------------------------------------------------------


def read_module(path: Path) -> tuple[str, tuple[str, ...]]:
    """Docstring summary and public names (`__all__`, else non-underscore top-level functions
    and classes) of a module, parsed, never imported."""
    text = _read_text(path)
    if text is None:
        return "", ()
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return "", ()
    doc = (ast.get_docstring(tree) or "").strip()
    # One line of responsibility: the summary line (PEP 257), or its first sentence when it
    # was wrapped into a paragraph (a first line cut at 100 columns stops mid-sentence).
    summary = " ".join(doc.split("\n\n", 1)[0].split()) if doc else ""
    sentence = re.match(r"^(.+?[.!?])(?:\s|$)", summary)
    summary = sentence.group(1) if sentence else summary
    names: list[str] = []
    declared: list[str] | None = None
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Name):
                if target.id == "__all__" and isinstance(node, (ast.Assign, ast.AnnAssign)):
                    try:
                        value = ast.literal_eval(node.value) if node.value else None
                    except ValueError:
                        value = None
                    if isinstance(value, (list, tuple)):
                        declared = [v for v in value if isinstance(v, str)]
    if declared is not None:
        # Dunders (`__version__`, `__author__`, `__doc__`) are metadata, not the API.
        return summary, tuple(n for n in declared if not n.startswith("__"))
    public = [n for n in dict.fromkeys(names) if not n.startswith("_")]
    return summary, tuple(public)


def _module_name(rel: str, source_dir: str) -> str:
    inner = rel[len(source_dir) + 1 :] if source_dir else rel
    parts = inner[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _package_roots(py_files: list[str], source_dir: str) -> list[tuple[str, str, bool]]:
    """(import name, repo-relative path, namespace?) of each top-level package under
    `source_dir`. A folder without `__init__.py` that only holds packages is a namespace:
    its regular sub-packages become the units (one knowledge file each)."""
    prefix = f"{source_dir}/" if source_dir else ""
    inits = {f[: -len("/__init__.py")] for f in py_files if f.endswith("/__init__.py")}
    folders_with_py: set[str] = set()
    for f in py_files:
        folders_with_py.add(f.rsplit("/", 1)[0] if "/" in f else "")
    roots: list[tuple[str, str, bool]] = []

    def visit(folder: str, dotted: str, in_namespace: bool) -> None:
        if folder in inits:
            roots.append((dotted, folder, in_namespace))
            return
        direct = any(
            f.startswith(folder + "/") and "/" not in f[len(folder) + 1 :] for f in py_files
        )
        if direct:  # a folder of plain modules without __init__: still a (namespace) package
            roots.append((dotted, folder, True))
            return
        children = sorted(
            {f[len(folder) + 1 :].split("/", 1)[0] for f in py_files if f.startswith(folder + "/")}
        )
        for child in children:
            if child.isidentifier():
                visit(f"{folder}/{child}", f"{dotted}.{child}", True)

    tops = sorted({f[len(prefix) :].split("/", 1)[0] for f in py_files if f.startswith(prefix)})
    for top in tops:
        path = f"{prefix}{top}"
        if top.endswith(".py"):
            if source_dir and top[:-3].isidentifier() and not _is_test_file(top):
                roots.append((top[:-3], path, False))
            continue
        if not top.isidentifier() or top.startswith("_"):
            continue
        if not source_dir:
            # Flat layout: only folders that look like packages, never tests/docs/tools.
            if top in NOT_PACKAGES:
                continue
            if path not in inits and not any(i.startswith(path + "/") for i in inits):
                continue
        visit(path, top, False)
    return roots


def find_packages(root: Path, files: Iterable[str]) -> tuple[str, tuple[Package, ...]]:
    """The layout ("src", "flat" or "none") and the top-level packages with their modules."""
    py_files = [f for f in files if f.endswith(".py") and not f.rsplit("/", 1)[-1].startswith(".")]
    src_files = [f for f in py_files if f.startswith("src/")]
    if src_files:
        layout, source_dir, candidates = "src", "src", src_files
    else:
        layout, source_dir, candidates = "flat", "", [f for f in py_files if "/" in f]
    packages = []
    for name, path, namespace in _package_roots(candidates, source_dir):
        if path.endswith(".py"):
            members = [path]
        else:
            members = [f for f in candidates if f.startswith(path + "/")]
            members = [m for m in members if not _is_test_file(m)]
        modules = []
        for rel in members:
            summary, public = read_module(root / rel)
            modules.append(Module(_module_name(rel, source_dir), rel, summary, public))
        # The package's own __init__ first, then by dotted name: a stable, readable order.
        modules.sort(key=lambda m: (m.name != name, m.name))
        packages.append(Package(name, path, namespace, tuple(modules)))
    if not packages:
        layout = "none"
    return layout, tuple(sorted(packages, key=lambda p: p.name))


# Folders whose `test_*.py` files are benchmarks or examples, not the test suite.
NOT_TEST_DIRS = frozenset({"bench", "benchmark", "benchmarks", "examples", "example", "docs"})


def _is_test_file(rel: str) -> bool:
    if rel.split("/", 1)[0] in NOT_TEST_DIRS and "/" in rel:
        return False
    base = rel.rsplit("/", 1)[-1]
    return base.startswith("test_") or base.endswith("_test.py") or base == "conftest.py"


# --- tests, tools, CI, task runners -----------------------------------------------------


def _split_opts(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return " ".join(str(value or "").split())


def _lines(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value or "").splitlines() if v.strip()]


def read_test_setup(root: Path, pyproject: Mapping[str, Any], files: tuple[str, ...]) -> TestSetup:
    config: str | None = None
    options: dict[str, Any] = {}
    # pytest's own precedence: pytest.ini, pyproject.toml, tox.ini, setup.cfg.
    ini = read_ini(root / "pytest.ini") if "pytest.ini" in files else None
    if ini is not None and ini.has_section("pytest"):
        config, options = "pytest.ini [pytest]", dict(ini.items("pytest"))
    elif _table(pyproject, "tool", "pytest", "ini_options"):
        config = "pyproject.toml [tool.pytest.ini_options]"
        options = _table(pyproject, "tool", "pytest", "ini_options")
    elif _table(pyproject, "tool", "pytest"):
        config, options = "pyproject.toml [tool.pytest]", _table(pyproject, "tool", "pytest")
    else:
        for name, section in (("tox.ini", "pytest"), ("setup.cfg", "tool:pytest")):
            parsed = read_ini(root / name) if name in files else None
            if parsed is not None and parsed.has_section(section):
                config, options = f"{name} [{section}]", dict(parsed.items(section))
                break
    testpaths = tuple(p for v in _lines(options.get("testpaths")) for p in v.split())
    warnings = _lines(options.get("filterwarnings"))
    test_files = [
        f for f in files if f.endswith(".py") and _is_test_file(f) and not f.endswith("conftest.py")
    ]
    test_dirs = sorted({f.split("/", 1)[0] for f in test_files if "/" in f})
    conftests = tuple(f for f in files if f.rsplit("/", 1)[-1] == "conftest.py")
    return TestSetup(
        config=config,
        testpaths=testpaths,
        addopts=_split_opts(options.get("addopts")),
        warnings_are_errors=any(w.split(":")[0].strip() == "error" for w in warnings),
        test_dirs=tuple(test_dirs),
        test_file_count=len(test_files),
        conftests=conftests,
    )


def read_precommit_hooks(root: Path, text: str | None = None) -> tuple[str, ...]:
    text = _read_text(root / ".pre-commit-config.yaml") if text is None else text
    if text is None:
        return ()
    import yaml  # only when the file exists: yaml is the slowest import on this path

    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):
        return ()
    ids: list[str] = []
    for repo in (data or {}).get("repos", []) if isinstance(data, dict) else []:
        for hook in repo.get("hooks", []) if isinstance(repo, dict) else []:
            if isinstance(hook, dict) and isinstance(hook.get("id"), str):
                ids.append(hook["id"])
    return tuple(dict.fromkeys(ids))


def find_tools(
    root: Path, pyproject: Mapping[str, Any], files: tuple[str, ...], hooks: tuple[str, ...]
) -> tuple[Tool, ...]:
    sources: dict[str, list[str]] = {t: [] for t in TOOLS}
    tool_table = _table(pyproject, "tool")
    for name in TOOLS:
        if name in tool_table:
            sources[name].append(f"pyproject.toml [tool.{name}]")
    own_files = {
        "ruff": ("ruff.toml", ".ruff.toml"),
        "flake8": (".flake8",),
        "mypy": ("mypy.ini", ".mypy.ini"),
        "pyright": ("pyrightconfig.json",),
        "isort": (".isort.cfg",),
    }
    for name, candidates in own_files.items():
        sources[name].extend(c for c in candidates if c in files)
    for ini_name in ("setup.cfg", "tox.ini"):
        if ini_name not in files:
            continue
        parsed = read_ini(root / ini_name)
        if parsed is None:
            continue
        for name in ("flake8", "mypy", "isort"):
            if parsed.has_section(name):
                sources[name].append(f"{ini_name} [{name}]")
    for hook in hooks:
        aliases = {"ruff-format": "ruff", "ruff-check": "ruff", "black-jupyter": "black"}
        base = aliases.get(hook, hook)
        if base in sources:
            sources[base].append(f"pre-commit hook `{hook}`")
    return tuple(Tool(n, tuple(s)) for n, s in sources.items() if s)


def _line_length(pyproject: Mapping[str, Any]) -> int | None:
    for name in ("ruff", "black"):
        value = _table(pyproject, "tool", name).get("line-length")
        if isinstance(value, int):
            return value
    return None


def _split_top(text: str) -> list[str]:
    """Split a tox env list on commas and newlines outside braces; drop `#` comments."""
    items: list[str] = []
    depth = 0
    current = ""
    for line in text.splitlines():
        line = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
        for char in line:
            if char == "{":
                depth += 1
            elif char == "}":
                depth = max(0, depth - 1)
            if char == "," and depth == 0:
                items.append(current)
                current = ""
            else:
                current += char
        if depth == 0:
            items.append(current)
            current = ""
    items.append(current)
    return [i.strip() for i in items if i.strip()]


def _brace_values(body: str) -> list[str]:
    values: list[str] = []
    for part in body.split(","):
        part = part.strip()
        low, dash, high = part.partition("-")
        if dash and low.isdigit() and high.isdigit() and int(low) <= int(high) <= int(low) + 100:
            values += [str(n) for n in range(int(low), int(high) + 1)]  # tox 4 ranges: {9-14}
        else:
            values.append(part)
    return values


def expand_tox(item: str) -> list[str]:
    """Every environment name a tox env-list entry stands for: `py{38,39}-{a,b}` is the
    product py38-a py38-b py39-a py39-b, `py3{9-11}` a range, as tox itself expands them."""
    match = re.search(r"\{([^{}]*)\}", item)
    if match is None:
        return ["".join(item.split())]
    head, tail = item[: match.start()], item[match.end() :]
    out: list[str] = []
    for value in _brace_values(match.group(1)):
        out += expand_tox(head + value + tail)
    return list(dict.fromkeys(out))


def _tox_names(entries: Iterable[str]) -> list[str]:
    return [name for entry in entries for item in _split_top(entry) for name in expand_tox(item)]


def read_tox_envs(
    root: Path, files: tuple[str, ...], pyproject: Mapping[str, Any] | None = None
) -> tuple[str, ...]:
    """The tox environments of tox.ini, tox.toml or pyproject's [tool.tox], expanded."""
    envs: list[str] = []
    if "tox.ini" in files:
        parsed = read_ini(root / "tox.ini")
        if parsed is not None:
            for key in ("envlist", "env_list"):
                if parsed.has_option("tox", key):
                    envs += _tox_names([parsed.get("tox", key)])
            envs += _tox_names(
                s.split(":", 1)[1] for s in parsed.sections() if s.startswith("testenv:")
            )
    tables: list[Mapping[str, Any]] = []
    if "tox.toml" in files:
        try:
            tables.append(tomllib.loads(_read_text(root / "tox.toml") or ""))
        except tomllib.TOMLDecodeError:
            pass
    tool_tox = _table(pyproject or {}, "tool", "tox")
    if tool_tox:
        tables.append(tool_tox)
        legacy = tool_tox.get("legacy_tox_ini")
        if isinstance(legacy, str):  # tox.ini text embedded in pyproject.toml
            parser = configparser.RawConfigParser(strict=False, interpolation=None)
            try:
                parser.read_string(legacy)
            except configparser.Error:
                parser = configparser.RawConfigParser()
            for key in ("envlist", "env_list"):
                if parser.has_option("tox", key):
                    envs += _tox_names([parser.get("tox", key)])
            envs += _tox_names(
                s.split(":", 1)[1] for s in parser.sections() if s.startswith("testenv:")
            )
    for table in tables:
        env_list = table.get("env_list")
        if isinstance(env_list, list):
            envs += _tox_names(str(e) for e in env_list)
        envs += _tox_names(_table(table, "env"))
    return tuple(dict.fromkeys(envs))


def read_nox_sessions(root: Path, files: tuple[str, ...]) -> tuple[str, ...]:
    if "noxfile.py" not in files:
        return ()
    text = _read_text(root / "noxfile.py") or ""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return ()
    sessions = []
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for deco in node.decorator_list:
            target = deco.func if isinstance(deco, ast.Call) else deco
            label = ast.unparse(target)
            if label.endswith("session"):
                name = node.name
                if isinstance(deco, ast.Call):
                    for kw in deco.keywords:
                        if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                            name = str(kw.value.value)
                sessions.append(name)
    return tuple(sessions)


_MAKE_TARGET = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)\s*:(?!=)", re.MULTILINE)
MAKEFILES = ("Makefile", "makefile", "GNUmakefile")


def read_make_recipes(
    root: Path, files: tuple[str, ...]
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Each target of the Makefile with its recipe lines (tab-indented), `@`/`-` stripped."""
    name = next((n for n in MAKEFILES if n in files), None)
    if name is None:
        return ()
    recipes: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in (_read_text(root / name) or "").splitlines():
        if line.startswith("\t"):
            if current is not None and line.strip() and not line.strip().startswith("#"):
                current.append(line.strip().lstrip("@-").strip())
            continue
        match = _MAKE_TARGET.match(line)
        if match and match.group(1) != ".PHONY" and not match.group(1).startswith("."):
            current = recipes.setdefault(match.group(1), [])
        elif line.strip() and not line.startswith("#"):
            current = None
    return tuple((t, tuple(r)) for t, r in recipes.items())


def read_make_targets(root: Path, files: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(t for t, _ in read_make_recipes(root, files))


# What a CI step runs that a contributor can run too; plumbing (tar, rm, cd) is left out.
CI_TOOLS = frozenset(
    {
        "make",
        "tox",
        "nox",
        "pytest",
        "python",
        "python3",
        "pre-commit",
        "uv",
        "uvx",
        "hatch",
        "pdm",
        "coverage",
        "mypy",
        "ruff",
        "flake8",
        "black",
        "pyright",
        "stubtest",
    }
)


def _ci_command_worth_naming(run: str) -> bool:
    # One line, no shell variables or expressions only CI fills in, no redirection.
    if not run or "\n" in run or any(c in run for c in "$><|`"):
        return False
    return run.split()[0] in CI_TOOLS


def read_ci_commands(root: Path, files: tuple[str, ...]) -> tuple[str, ...]:
    """The one-line `run:` steps of GitHub workflows (YAML parsed, never run)."""
    workflows = [
        f for f in files if f.startswith(".github/workflows/") and f.endswith((".yml", ".yaml"))
    ]
    if not workflows:
        return ()
    import yaml

    out: list[str] = []
    for rel in workflows:
        try:
            data = yaml.safe_load(_read_text(root / rel) or "")
        except (yaml.YAMLError, RecursionError):
            continue
        jobs = data.get("jobs") if isinstance(data, dict) else None
        for job in jobs.values() if isinstance(jobs, dict) else []:
            steps = job.get("steps") if isinstance(job, dict) else None
            for step in steps if isinstance(steps, list) else []:
                run = step.get("run") if isinstance(step, dict) else None
                if isinstance(run, str) and _ci_command_worth_naming(run.strip()):
                    out.append(" ".join(run.split()))
    return tuple(dict.fromkeys(out))


def read_tox_commands(root: Path, files: tuple[str, ...]) -> tuple[str, ...]:
    if "tox.ini" not in files:
        return ()
    parsed = read_ini(root / "tox.ini")
    if parsed is None:
        return ()
    return tuple(
        line
        for section in parsed.sections()
        if section == "testenv" or section.startswith("testenv:")
        if parsed.has_option(section, "commands")
        for line in _lines(parsed.get(section, "commands"))
    )


def _runs(command: str) -> str | None:
    """ "pytest" or "unittest" when a shell command runs that test runner."""
    words = command.replace("{envpython}", "python").split()
    if "pytest" in words or "py.test" in words:
        return "pytest"
    if "unittest" in words or "-munittest" in words:
        return "unittest"
    return None


def find_test_runner(
    tests: TestSetup,
    recipes: Mapping[str, tuple[str, ...]],
    tox_commands: tuple[str, ...],
    ci_commands: tuple[str, ...],
) -> str | None:
    """What the project's own files run the tests with. pytest configuration, or a test
    command that runs pytest, says pytest; a project whose `make test`/`make coverage`, tox
    or CI runs `python -m unittest` (and nothing runs pytest) is told unittest (issue 12)."""
    commands = [*tox_commands, *ci_commands]
    for target in ("test", "tests", "coverage", "check"):
        commands += recipes.get(target, ())
    runners = {r for r in map(_runs, commands) if r}
    if tests.config or "pytest" in runners:
        return "pytest"
    if "unittest" in runners:
        return "unittest"
    return "pytest" if tests.test_file_count else None


def read_rules(
    root: Path, pyproject: Mapping[str, Any], files: tuple[str, ...], commands: Iterable[str]
) -> tuple[str, ...]:
    """What an agent must obey, read from the project's files: each line says what and where."""
    rules: list[str] = []
    stubs = [f for f in files if f.endswith(".pyi") and not f.startswith(("tests/", "test/"))]
    stubtest = next((c for c in commands if "stubtest" in c.split()), None)
    if stubs:
        rule = (
            f"Type stubs (`.pyi`, e.g. `{stubs[0]}`) sit next to the code: a change to a "
            "public signature changes its stub too"
        )
        if stubtest:
            rule += f"; `{stubtest}` checks them"
        rules.append(rule + ".")
    fail_under = None
    cov = _table(pyproject, "tool", "coverage", "report")
    if "fail_under" in cov:
        fail_under = (cov["fail_under"], "pyproject.toml [tool.coverage.report]")
    for name, section in (
        (".coveragerc", "report"),
        ("setup.cfg", "coverage:report"),
        ("tox.ini", "coverage:report"),
    ):
        if fail_under is None and name in files:
            parsed = read_ini(root / name)
            if parsed is not None and parsed.has_option(section, "fail_under"):
                fail_under = (parsed.get(section, "fail_under"), f"{name} [{section}]")
    if fail_under is None:
        for command in commands:
            match = re.search(r"--fail-under[= ](\d+(?:\.\d+)?)", command)
            if match:
                fail_under = (match.group(1), f"`{command}`")
                break
    if fail_under is not None:
        rules.append(
            f"Coverage must stay at or above {fail_under[0]} % (fail_under, {fail_under[1]}): "
            "new code needs tests."
        )
    mypy = _table(pyproject, "tool", "mypy")
    if mypy.get("strict") is True:
        rules.append(
            "mypy runs in strict mode (`strict = true`, pyproject.toml [tool.mypy]): "
            "every function fully typed."
        )
    else:
        for name in ("mypy.ini", ".mypy.ini", "setup.cfg"):
            parsed = read_ini(root / name) if name in files else None
            if (
                parsed is not None
                and parsed.has_option("mypy", "strict")
                and parsed.get("mypy", "strict").strip().lower() == "true"
            ):
                rules.append(
                    f"mypy runs in strict mode (`strict = True`, {name} [mypy]): "
                    "every function fully typed."
                )
                break
    towncrier = _table(pyproject, "tool", "towncrier")
    fragments = towncrier.get("directory") if isinstance(towncrier.get("directory"), str) else None
    if fragments is None and any(f.startswith("changelog.d/") for f in files):
        fragments = "changelog.d"
    if fragments:
        source = "pyproject.toml [tool.towncrier]" if towncrier else f"`{fragments}/`"
        rules.append(f"Each user-visible change adds a news fragment in `{fragments}/` ({source}).")
    return tuple(rules)


GUIDE_FILES = (
    "CONTRIBUTING.md",
    "CONTRIBUTING.rst",
    ".github/CONTRIBUTING.md",
    "docs/CONTRIBUTING.md",
)


AI_POLICY_RE = re.compile(r"(^|/)(AI|LLM)[_-]?(POLICY|USAGE|GUIDELINES)\.(md|rst|txt)$", re.I)


def find_guides(files: tuple[str, ...]) -> tuple[str, ...]:
    """AI-usage policy files, then CONTRIBUTING files: the project's own rules for
    contributors. AI policies first: they say whether and how an agent may contribute at all."""
    present = set(files)
    policies = [f for f in files if f.count("/") <= 1 and AI_POLICY_RE.search(f)]
    contributing = [g for g in GUIDE_FILES if g in present and g not in policies]
    return (*policies, *contributing)


def find_ci_files(files: tuple[str, ...]) -> tuple[str, ...]:
    found = []
    for pattern in CI_GLOBS:
        if pattern.endswith("/"):
            found += [f for f in files if f.startswith(pattern)]
        elif pattern in files:
            found.append(pattern)
    return tuple(found)


# --- putting it together ----------------------------------------------------------------


REQUIREMENT_NAMES = re.compile(
    r"^(requirements[-_]?(dev|test|tests|testing|lint|docs)?\.txt|(dev|test)[-_.]requirements\.txt"
    r"|requirements/[^/]+\.txt)$"
)


def install_commands(
    files: tuple[str, ...],
    extras: tuple[str, ...],
    has_project: bool,
    pyproject: Mapping[str, Any] | None = None,
) -> tuple[str, ...]:
    """How the repository installs, read from the lock, requirement and pyproject files."""
    pyproject = pyproject or {}
    groups = tuple(_table(pyproject, "dependency-groups"))
    if "uv.lock" in files:
        return ("uv sync",)  # installs the `dev` group too, as uv does by default
    if "poetry.lock" in files:
        return ("poetry install",)
    if "pdm.lock" in files:
        return ("pdm install",)
    commands = []
    if has_project:
        dev = next((e for e in ("dev", "test", "tests", "testing") if e in extras), None)
        commands.append(f'pip install -e ".[{dev}]"' if dev else "pip install -e .")
    group = next((g for g in ("dev", "test", "tests", "testing") if g in groups), None)
    if group:
        commands.append(f"pip install --group {group}")
    for req in files:
        if REQUIREMENT_NAMES.match(req) and not req.endswith(("docs.txt", "/docs.txt")):
            commands.append(f"pip install -r {req}")
    return tuple(commands)


def introspect(
    root: Path, files: tuple[str, ...] | None = None, precommit_config: str | None = None
) -> RepoFacts:
    """Everything the convention files say about the repository at `root`.

    `precommit_config`: the text `.pre-commit-config.yaml` is about to have (init writes it
    in the same run), so what AGENTS.md says about hooks is already true afterwards.
    """
    root = root.absolute()
    files = list_files(root) if files is None else files
    if precommit_config is not None and ".pre-commit-config.yaml" not in files:
        files = tuple(sorted((*files, ".pre-commit-config.yaml")))
    pyproject = read_pyproject(root)
    project = _table(pyproject, "project")
    poetry = _table(pyproject, "tool", "poetry")
    setup_cfg = read_ini(root / "setup.cfg") if "setup.cfg" in files else None
    setup_py = setup_py_kwargs(root) if "setup.py" in files else {}

    def cfg(section: str, key: str) -> str | None:
        if setup_cfg is not None and setup_cfg.has_option(section, key):
            return setup_cfg.get(section, key).strip() or None
        return None

    name = version = description = python = source = None
    if project:
        source = "pyproject.toml [project]"
        name, version = project.get("name"), project.get("version")
        description, python = project.get("description"), project.get("requires-python")
    elif poetry:
        source = "pyproject.toml [tool.poetry]"
        name, version, description = (
            poetry.get("name"),
            poetry.get("version"),
            poetry.get("description"),
        )
        python = _table(poetry, "dependencies").get("python")
    elif cfg("metadata", "name"):
        source = "setup.cfg [metadata]"
        name, version = cfg("metadata", "name"), cfg("metadata", "version")
        description, python = cfg("metadata", "description"), cfg("options", "python_requires")
    elif setup_py:
        source = "setup.py"
        name, version = setup_py.get("name"), setup_py.get("version")
        description, python = setup_py.get("description"), setup_py.get("python_requires")

    def text(value: Any) -> str | None:
        return value if isinstance(value, str) and value.strip() else None

    scripts: dict[str, str] = {}
    entry_points: list[tuple[str, str, str]] = []
    for table in ("scripts", "gui-scripts"):
        scripts.update({k: str(v) for k, v in _table(project, table).items()})
    scripts.update({k: str(v) for k, v in _table(poetry, "scripts").items()})
    for group, table in _table(project, "entry-points").items():
        if isinstance(table, Mapping):
            entry_points += [(group, k, str(v)) for k, v in table.items()]
    if setup_cfg is not None and setup_cfg.has_section("options.entry_points"):
        for group, value in setup_cfg.items("options.entry_points"):
            for k, v in _ini_entry_points(value):
                if group in ("console_scripts", "gui_scripts"):
                    scripts[k] = v
                else:
                    entry_points.append((group, k, v))
    eps = setup_py.get("entry_points")
    if isinstance(eps, Mapping):
        for group, values in eps.items():
            for item in values if isinstance(values, (list, tuple)) else []:
                k, _, v = str(item).partition("=")
                if group in ("console_scripts", "gui_scripts"):
                    scripts[k.strip()] = v.strip()
                else:
                    entry_points.append((group, k.strip(), v.strip()))

    extras = tuple(_table(project, "optional-dependencies")) or tuple(_table(poetry, "extras"))
    if not extras and setup_cfg is not None and setup_cfg.has_section("options.extras_require"):
        extras = tuple(k for k, _ in setup_cfg.items("options.extras_require"))
    if not extras and isinstance(setup_py.get("extras_require"), Mapping):
        extras = tuple(setup_py["extras_require"])

    layout, packages = find_packages(root, files)
    hooks = (
        read_precommit_hooks(root, precommit_config) if ".pre-commit-config.yaml" in files else ()
    )
    has_project = bool(
        project
        or poetry
        or setup_py
        or "setup.py" in files
        or (setup_cfg is not None and setup_cfg.has_section("metadata"))
    )
    recipes = read_make_recipes(root, files)
    ci_commands = read_ci_commands(root, files)
    tox_commands = read_tox_commands(root, files)
    tests = read_test_setup(root, pyproject, files)
    all_commands = [*(c for _, r in recipes for c in r), *tox_commands, *ci_commands]
    return RepoFacts(
        root=root,
        files=files,
        name=text(name),
        version=text(version),
        description=text(description),
        python=text(python),
        metadata_source=source,
        layout=layout,
        packages=packages,
        scripts=tuple(sorted(scripts.items())),
        entry_points=tuple(sorted(entry_points)),
        extras=tuple(extras),
        install=install_commands(files, tuple(extras), has_project, pyproject),
        tests=tests,
        tools=find_tools(root, pyproject, files, hooks),
        line_length=_line_length(pyproject),
        precommit_hooks=hooks,
        ci_files=find_ci_files(files),
        tox_envs=read_tox_envs(root, files, pyproject),
        nox_sessions=read_nox_sessions(root, files),
        make_targets=tuple(t for t, _ in recipes),
        make_recipes=recipes,
        ci_commands=ci_commands,
        test_runner=find_test_runner(tests, dict(recipes), tox_commands, ci_commands),
        rules=read_rules(root, pyproject, files, all_commands),
        guides=find_guides(files),
        own_precommit=any(not h.startswith("agentic-") for h in hooks),
        hatch_envs=tuple(_table(pyproject, "tool", "hatch", "envs")),
    )
