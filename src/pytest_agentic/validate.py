"""The validation gate: one small function per check of an attempt, each returning a `Verdict`.

A fix is kept only when every check says yes, in this order (the fixer calls them): the target
tests pass; no test that passed in the session fails now (`affected_tests` + `regression`); the
change does not reach into the test runner or the process (`tamper`); it fits the diff budget
(`diff_budget`); the project's own checks pass on the changed files (`project_checks`); and a
reviewer approves (`pytest_agentic.review`). A "no" carries a one-line reason for the report and
the feedback the next attempt is given.

Everything here is static or a subprocess with a timeout: no check imports the project's code.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: With at most this many passing tests, every one of them is re-run after each attempt: the
#: static graph saves little on a small suite, and it cannot see dynamic imports.
SMALL_SUITE = 100
#: Default of `max_diff_lines`: changed lines (added + removed) per fix.
MAX_DIFF_LINES = 200
FEEDBACK_LIMIT = 6000
_SKIP_DIRS = {".git", ".agentic", "__pycache__", "node_modules", "build", "dist", "site-packages"}


@dataclass(frozen=True)
class Verdict:
    """One check's answer on one attempt."""

    check: str
    ok: bool
    reason: str  # one line, for the report and the terminal
    feedback: str = ""  # what the next attempt is told, when not ok


@dataclass(frozen=True)
class FileChange:
    """One file an attempt changed: its text before and after (None: absent)."""

    path: str  # relative to the project root, posix
    old: str | None
    new: str | None


# --- affected tests: a static import graph ----------------------------------------------------


def _project_files(root: Path) -> set[str]:
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [
            d
            for d in dirnames
            if d not in _SKIP_DIRS
            and not d.startswith(".")
            and not d.endswith(".egg-info")
            and not (Path(dirpath, d) / "pyvenv.cfg").exists()
        ]
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        for name in filenames:
            if name.endswith(".py"):
                found.add(name if rel_dir == "." else f"{rel_dir}/{name}")
    return found


def _imported_names(tree: ast.Module, package: str) -> list[str]:
    """Dotted module names a module imports (relative ones made absolute against `package`),
    plus `pytest_plugins` strings (pytest imports those too)."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join([*parts, *([base] if base else [])])
            if base:
                names.append(base)
            names += [f"{base}.{alias.name}" if base else alias.name for alias in node.names]
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytest_plugins" for t in node.targets
        ):
            value = node.value
            items = value.elts if isinstance(value, (ast.List, ast.Tuple)) else [value]
            names += [
                i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)
            ]
    return names


# Parsing is most of the graph's cost (2 s for packaging's 1.5 MB of source on a busy
# machine); every attempt's workspace holds the same bytes but for the changed files.
_NAMES_CACHE: dict[tuple[str, str], list[str]] = {}


def _names_cached(source: bytes, package: str) -> list[str]:
    key = (hashlib.blake2b(source, digest_size=16).hexdigest(), package)
    if key not in _NAMES_CACHE:
        try:
            _NAMES_CACHE[key] = _imported_names(ast.parse(source), package)
        except (SyntaxError, ValueError):
            _NAMES_CACHE[key] = []
    return _NAMES_CACHE[key]


def _bases(rel: str, files: set[str]) -> tuple[str, str]:
    """(the folder a module's top-level package lives in, the module's package name): pytest's
    `prepend` import mode puts that folder on sys.path for test modules and conftests."""
    parts = rel.split("/")[:-1]
    package: list[str] = []
    while parts and "/".join([*parts, "__init__.py"]) in files:
        package.insert(0, parts.pop())
    return "/".join(parts), ".".join(package)


def _resolve(name: str, bases: Iterable[str], files: set[str]) -> list[str]:
    """Project files that `import name` executes: the module and every package above it."""
    parts = name.split(".")
    for base in bases:
        prefix = f"{base}/" if base else ""
        hit: list[str] = []
        for depth in range(1, len(parts) + 1):
            stem = prefix + "/".join(parts[:depth])
            if f"{stem}/__init__.py" in files:
                hit.append(f"{stem}/__init__.py")
            elif f"{stem}.py" in files:
                hit.append(f"{stem}.py")
                break
            else:
                break
        if hit:
            return hit
    return []


def import_graph(root: Path, files: set[str] | None = None) -> dict[str, set[str]]:
    """Each project .py file -> the project files it imports directly (static, no code run)."""
    files = _project_files(root) if files is None else files
    common = ["", "src"]
    graph: dict[str, set[str]] = {}
    for rel in files:
        base, package = _bases(rel, files)
        try:
            names = _names_cached((root / rel).read_bytes(), package)
        except OSError:
            names = []
        bases = [base, *(b for b in common if b != base)]
        deps: set[str] = set()
        for name in names:
            deps.update(_resolve(name, bases, files))
        deps.discard(rel)
        graph[rel] = deps
    return graph


def importers(graph: Mapping[str, set[str]], changed: Iterable[str]) -> set[str]:
    """Every file that imports one of `changed`, directly or not (and `changed` itself)."""
    reverse: dict[str, set[str]] = {}
    for rel, deps in graph.items():
        for dep in deps:
            reverse.setdefault(dep, set()).add(rel)
    seen = set(changed)
    todo = list(seen)
    while todo:
        for rel in reverse.get(todo.pop(), ()):
            if rel not in seen:
                seen.add(rel)
                todo.append(rel)
    return seen


def _test_file(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _reaches(test_file: str, affected: set[str]) -> bool:
    """Whether a test module, or a conftest.py above it (pytest loads those first), is in
    `affected`."""
    if test_file in affected:
        return True
    parts = test_file.split("/")[:-1]
    while True:
        if "/".join([*parts, "conftest.py"]) in affected:
            return True
        if not parts:
            return False
        parts.pop()


def affected_tests(
    root: Path,
    changed: Sequence[str],
    passing: Sequence[str],
    targets: Sequence[str] = (),
    small_suite: int = SMALL_SUITE,
) -> list[str]:
    """The session's passing node ids that the changed files can affect.

    All of them when the suite is small (`small_suite`), when a changed file is not Python (a
    data file, a template: the graph cannot follow it), or when the graph cannot explain why
    the target passes now (its module reaches no changed file: a dynamic import the static
    graph misses, so it may miss others too).
    """
    if len(passing) <= small_suite or any(not c.endswith(".py") for c in changed):
        return list(passing)
    affected = importers(import_graph(root), changed)
    if targets and not any(_reaches(_test_file(t), affected) for t in targets):
        return list(passing)
    return [n for n in passing if _reaches(_test_file(n), affected)]


def compact(nodeids: Sequence[str], whole_files: Collection[str]) -> list[str]:
    """`nodeids` as re-run arguments: a file whose every collected test the session ran is
    named by its path instead of its node ids. Thousands of node ids overflow the command
    line, and pytest matches each one against its module's items on its own."""
    args: dict[str, None] = {}
    for nodeid in nodeids:
        path = _test_file(nodeid)
        args[path if path in whole_files else nodeid] = None
    return list(args)


def regression(
    nodeids: Sequence[str], outcomes: Mapping[str, str], output: str, timed_out: bool = False
) -> Verdict:
    """Tests that passed in the session and must still pass: which of them no longer do."""
    broken = [n for n in nodeids if timed_out or outcomes.get(n) != "passed"]
    if not broken:
        return Verdict("regression", True, f"{len(nodeids)} affected passing test(s) still pass")
    shown = ", ".join(broken[:5]) + (f" and {len(broken) - 5} more" if len(broken) > 5 else "")
    why = "timed out" if timed_out else f"it broke {len(broken)} test(s) that passed before"
    feedback = (
        "These tests passed before your change and fail with it; a fix must keep them "
        "passing:\n"
        + "\n".join(f"- {n}" for n in broken)
        + "\n```\n"
        + output[-FEEDBACK_LIMIT:]
        + "\n```"
    )
    return Verdict("regression", False, f"{why}: {shown}", feedback)


# --- tamper check -------------------------------------------------------------------------------

#: module (or module prefix) -> what reaching it means. Code under test has no business
#: touching the runner that judges it, or the process the verdict is read from.
_MODULES = {
    "pytest": "pytest internals",
    "_pytest": "pytest internals",
    "pluggy": "pytest internals",
    "unittest.mock": "unittest.mock",
    "mock": "unittest.mock",
    "atexit": "atexit",
    "signal": "signal handlers",
    "builtins": "builtins patching",
    "__builtin__": "builtins patching",
    "sitecustomize": "interpreter start-up hooks",
    "usercustomize": "interpreter start-up hooks",
}
#: dotted attribute -> what it means
_ATTRIBUTES = {
    "sys.modules": "sys.modules patching",
    "sys.meta_path": "sys.modules patching",
    "sys.path_hooks": "sys.modules patching",
    "sys.settrace": "tracing the interpreter",
    "sys.setprofile": "tracing the interpreter",
    "sys.excepthook": "exception hooks",
    "os._exit": "os._exit",
    "os.kill": "killing processes",
    "os.killpg": "killing processes",
    "os.abort": "os._exit",
    "os.putenv": "PYTEST_* environment variables",
}
_NAMES = {"__builtins__": "builtins patching"}
_RUNNER_TEXT = re.compile(r"^(_?pytest|pluggy)(\.|$)|PYTEST_|pytest[-_]agentic|outcomes\.json")


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _module_kind(name: str) -> str | None:
    for module, kind in _MODULES.items():
        if name == module or name.startswith(module + "."):
            return kind
    return None


def findings(source: str) -> dict[str, list[int]]:
    """What in `source` reaches into the runner or the process: kind -> line numbers.
    Unparsable source has none (the test re-run already judged it)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return {}
    aliases: dict[str, str] = {}  # local name -> the module or attribute it stands for
    found: dict[str, list[int]] = {}

    def add(kind: str | None, node: ast.AST) -> None:
        if kind is not None:
            found.setdefault(kind, []).append(getattr(node, "lineno", 0))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
                add(_module_kind(alias.name), node)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                aliases[alias.asname or alias.name] = full
                add(_module_kind(node.module) or _module_kind(full) or _ATTRIBUTES.get(full), node)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted:
                head, _, rest = dotted.partition(".")
                full = aliases.get(head, head) + (f".{rest}" if rest else "")
                add(_ATTRIBUTES.get(full), node)
        elif isinstance(node, ast.Name) and node.id in _NAMES:
            add(_NAMES[node.id], node)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = _RUNNER_TEXT.search(node.value)
            if match:
                add(
                    "PYTEST_* environment variables"
                    if match.group(0) == "PYTEST_"
                    else "pytest internals"
                    if match.group(1)
                    else "the fix loop's own files",
                    node,
                )
    return found


def tamper(changes: Sequence[FileChange]) -> Verdict:
    """Reject added code that reaches into the test runner or the process, unless the file
    used that same kind of thing before the attempt (a pytest plugin's own code may)."""
    problems: list[str] = []
    for change in changes:
        if not change.path.endswith(".py") or change.new is None:
            continue
        before = findings(change.old or "")
        for kind, lines in sorted(findings(change.new).items()):
            if kind not in before:
                problems.append(f"{change.path}:{lines[0]}: {kind}")
    if not problems:
        return Verdict("tamper", True, "no code reaching into the test runner or the process")
    feedback = (
        "The change was rejected because code under test must not reach into the test runner "
        "or the process that reports the verdict. Found:\n"
        + "\n".join(f"- {p}" for p in problems)
        + "\nFix the code's behaviour instead."
    )
    return Verdict("tamper", False, "reaches into the runner: " + "; ".join(problems), feedback)


def _trivial(value: object) -> bool:
    """Literals too common to mean a special case: None, booleans, 0, 1, -1, ""."""
    if value is None or isinstance(value, bool) or value == "":
        return True
    return isinstance(value, (int, float)) and value in (0, 1, -1)


def assertion_literals(source: str, lineno: int | None = None) -> set[object]:
    """Literals in the assertions of the test function around `lineno` (the whole module when
    `lineno` is None or no function contains it): what a special case would compare with."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return set()
    scope: ast.AST = tree
    if lineno is not None:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                node.lineno <= lineno <= (node.end_lineno or node.lineno)
            ):
                scope = node
    literals: set[object] = set()
    for node in ast.walk(scope):
        checks: list[ast.AST] = []
        if isinstance(node, ast.Assert):
            checks.append(node.test)
        elif isinstance(node, ast.Call) and (_dotted(node.func) or "").split(".")[-1].startswith(
            ("assert", "fail")
        ):
            checks += node.args
        for check in checks:
            for leaf in ast.walk(check):
                if isinstance(leaf, ast.Constant) and _hashable(leaf.value):
                    literals.add(leaf.value)
    return {v for v in literals if not _trivial(v)}


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _branch_tests(source: str) -> list[tuple[int, str, set[object]]]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    out = []
    for node in ast.walk(tree):
        test: ast.AST | None = None
        if isinstance(node, (ast.If, ast.IfExp, ast.While)):
            test = node.test
        elif isinstance(node, ast.match_case):
            test = node.pattern
        if test is None:
            continue
        constants: set[object] = {
            leaf.value
            for leaf in ast.walk(test)
            if isinstance(leaf, ast.Constant) and _hashable(leaf.value)
        }
        out.append((getattr(test, "lineno", 0), ast.unparse(test), constants))
    return out


def special_cases(changes: Sequence[FileChange], literals: set[object]) -> list[str]:
    """Branches the change added whose condition compares with a literal from the failing
    test's assertions: flagged for the reviewer (not rejected; such a literal can be right)."""
    flags: list[str] = []
    for change in changes:
        if not change.path.endswith(".py") or change.new is None:
            continue
        before = {text for _, text, _ in _branch_tests(change.old or "")}
        for line, text, constants in _branch_tests(change.new):
            hits = sorted(repr(c) for c in constants if not _trivial(c) and c in literals)
            if text not in before and hits:
                flags.append(
                    f"{change.path}:{line}: new branch `{text[:120]}` compares with "
                    f"{', '.join(hits)} from the failing test's assertions"
                )
    return flags


# --- diff budget ----------------------------------------------------------------------------


def changed_lines(changes: Sequence[FileChange]) -> int:
    """Added plus removed lines across the change."""
    total = 0
    for change in changes:
        old = (change.old or "").splitlines()
        new = (change.new or "").splitlines()
        for line in difflib.unified_diff(old, new, n=0, lineterm=""):
            if line.startswith(("+", "-")) and not line.startswith(("+++", "---")):
                total += 1
    return total


def diff_budget(changes: Sequence[FileChange], max_lines: int = MAX_DIFF_LINES) -> Verdict:
    size = changed_lines(changes)
    if size <= max_lines:
        return Verdict("diff_budget", True, f"{size} changed line(s), budget {max_lines}")
    return Verdict(
        "diff_budget",
        False,
        f"{size} changed lines, over the budget of {max_lines} (max_diff_lines)",
        f"The change touched {size} lines; a fix may change at most {max_lines}. Make a smaller "
        "change: fix the cause only, without refactoring, reformatting or new features.",
    )


# --- project checks -------------------------------------------------------------------------


def check_argv(command: str, files: Sequence[str]) -> list[str]:
    """`command` split like a shell would (no shell runs it); a `{files}` word becomes the
    changed paths, `{files}` inside a word their space-joined list."""
    argv: list[str] = []
    for word in shlex.split(command):
        if word == "{files}":
            argv += list(files)
        else:
            argv.append(word.replace("{files}", " ".join(files)))
    return argv


def check_problem(command: str) -> str | None:
    """Why `command` cannot run (unparsable, empty, program not found), else None; asked
    before any test runs, so a typo in `checks` is a usage error and not a rejected fix."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        return f"cannot split {command!r}: {exc}"
    if not argv:
        return "an empty command"
    program = argv[0]
    if os.sep in program or "/" in program:
        return None  # a path, maybe relative to the project: judged when it runs
    if (
        shutil.which(program) is None
        and shutil.which(program, path=os.path.dirname(sys.executable)) is None
    ):
        return f"{program!r} not found on PATH (in {command!r})"
    return None


def project_checks(
    commands: Sequence[str], files: Sequence[str], cwd: Path, timeout: float = 300.0
) -> Verdict:
    """Run each configured check on the changed files; the first failure is the verdict."""
    if not commands:
        return Verdict("checks", True, "no project checks configured")
    if not files:
        return Verdict("checks", True, "no changed file to check")
    # The venv's own scripts first: `ruff` and `mypy` are usually installed next to pytest.
    env = {**os.environ}
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    for command in commands:
        argv = check_argv(command, files)
        try:
            proc = subprocess.run(
                argv,
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return Verdict(
                "checks",
                False,
                f"`{command}` timed out after {timeout:g} s",
                f"The project check `{shlex.join(argv)}` timed out.",
            )
        except OSError as exc:
            return Verdict("checks", False, f"`{command}` could not start: {exc.strerror or exc}")
        if proc.returncode != 0:
            output = (proc.stdout + proc.stderr).strip()
            first = next((line for line in output.splitlines() if line.strip()), "")
            return Verdict(
                "checks",
                False,
                f"`{command}` failed (exit {proc.returncode})"
                + (f": {first[:200]}" if first else ""),
                f"The project check `{shlex.join(argv)}` failed on the changed files; the fix "
                f"must pass it:\n```\n{output[-FEEDBACK_LIMIT:]}\n```",
            )
    return Verdict("checks", True, f"{len(commands)} project check(s) passed")


def proposed_checks(root: Path) -> list[str]:
    """The `checks` `pytest-agentic init` proposes: the linters and type checkers the project
    configures (a [tool.X] table in pyproject.toml or the tool's own config file)."""
    try:
        pyproject = (root / "pyproject.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        pyproject = ""
    proposals = []
    if re.search(r"^\[tool\.ruff[\].]", pyproject, re.M) or any(
        (root / name).is_file() for name in ("ruff.toml", ".ruff.toml")
    ):
        proposals.append("ruff check {files}")
    if re.search(r"^\[tool\.mypy[\].]", pyproject, re.M) or any(
        (root / name).is_file() for name in ("mypy.ini", ".mypy.ini")
    ):
        proposals.append("mypy {files}")
    return proposals
