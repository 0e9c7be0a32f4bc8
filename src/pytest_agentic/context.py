"""The first message of a fix attempt: the failure, the test, and the code the test reaches.

The code shown is found statically, from the failing test function's AST: each name it uses
(and the names its fixtures and module-level helpers use) is followed through the test module's
imports and package re-exports (`pkg/__init__.py` doing `from .mod import f` or `from .mod
import *`) to a definition in the project; then one level of the names those functions use.
Each definition goes in whole, with its line numbers, smallest first, within a character
budget. A test that fails on a wrong return value has no traceback frame in the code under
test, so without this the model sees only the top of a long module and then views all of it
(issue 13). Nothing here imports or runs the project's code.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_agentic.jobs import Failure
    from pytest_agentic.scope import PathPolicy
    from pytest_agentic.tasks import Task

CONTEXT_LINES = 12
MAX_FRAMES = 6
MAX_IMPORTED_LINES = 300
#: `context_max_chars` default: the source excerpts of one first message (frames, definitions,
#: module tops) together stay under this many characters (~6k tokens).
DEFAULT_MAX_CHARS = 24_000
#: How many re-exports (`from .mod import f`, star imports) a name is followed through.
MAX_HOPS = 6
#: Definitions found but left out for the budget are listed by location, at most this many.
MAX_LISTED = 20


#: The agent's read policy while a first message is built (issue 10): a secret the agent may
#: not read (`.env`, a symlink out of the root) must not reach its prompt either.
_policy: ContextVar[PathPolicy | None] = ContextVar("agentic_read_policy", default=None)


def read_lines(root: Path, rel: str) -> list[str] | None:
    """The one place this module reads a project file, under the read policy when one is set."""
    policy = _policy.get()
    if policy is not None and policy.check_read(os.path.join(root, rel)) is not None:
        return None
    try:
        return (root / rel).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None


def _excerpt(lines: list[str], first: int, last: int) -> str:
    first, last = max(1, first), min(len(lines), last)
    return "\n".join(f"{n:5} {lines[n - 1]}" for n in range(first, last + 1))


def _parse(lines: list[str]) -> ast.Module | None:
    try:
        return ast.parse("\n".join(lines))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None  # not Python we can read (or nested past the parser's limit): skipped


def _test_function(tree: ast.Module | None, lineno: int) -> ast.FunctionDef | None:
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
            node.lineno <= lineno <= (node.end_lineno or node.lineno)
            or any(d.lineno == lineno for d in node.decorator_list)
        ):
            return node  # type: ignore[return-value]
    return None


def _test_source(path: str, lineno: int, lines: list[str], tree: ast.Module | None) -> str:
    node = _test_function(tree, lineno)
    end = (node.end_lineno or lineno + 30) if node is not None else lineno + 30
    return f"{path}\n{_excerpt(lines, lineno, end)}"


def rel_inside(root: Path, path: str) -> str | None:
    full = Path(path) if os.path.isabs(path) else root / path
    try:
        rel = full.resolve().relative_to(root.resolve()).as_posix()
    except (ValueError, OSError):
        return None
    if "site-packages" in rel or rel.startswith((".venv/", "venv/")):
        return None
    return rel


def _imported_files(root: Path, tree: ast.Module) -> list[str]:
    """Project files the test module imports (`from calc import add` -> calc.py)."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    found: list[str] = []
    for name in names:
        base = name.replace(".", "/")
        for prefix in ("", "src/"):
            for candidate in (f"{prefix}{base}.py", f"{prefix}{base}/__init__.py"):
                # Resolved: a symlink out of the root is never read.
                rel = rel_inside(root, candidate)
                if rel is not None and rel not in found and (root / rel).is_file():
                    found.append(rel)
    return found


# --- resolving names to definitions -------------------------------------------------------------


@dataclass(frozen=True)
class Definition:
    """A function, method or class in a project file, lines `first`..`last` (decorators in)."""

    path: str
    first: int
    last: int
    label: str  # "add()", "class Calc", "Calc.add()"
    depth: int  # 0: the test (or its fixtures) uses it; 1: such a function uses it
    header: int | None = None  # a method's `class` line, shown above it

    def contains(self, other: Definition) -> bool:
        return self.path == other.path and self.first <= other.first and other.last <= self.last

    @property
    def where(self) -> str:
        return f"{self.path}:{self.first}-{self.last} {self.label}"


@dataclass
class _Module:
    rel: str
    name: str  # dotted, as imported: relative imports are resolved against it
    is_package: bool
    lines: list[str]
    tree: ast.Module


@dataclass(frozen=True)
class _ModRef:
    module: _Module


@dataclass(frozen=True)
class _DefRef:
    module: _Module
    node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
    owner: ast.ClassDef | None = None  # the class of a method


@dataclass(frozen=True)
class _Instance:
    cls: _DefRef


_Ref = _ModRef | _DefRef | _Instance
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _toplevel(body: Sequence[ast.stmt]) -> Iterator[ast.stmt]:
    """A module's statements, including those under a top-level `if` or `try` (version and
    optional-dependency switches)."""
    for node in body:
        yield node
        if isinstance(node, ast.If):
            yield from _toplevel([*node.body, *node.orelse])
        elif isinstance(node, ast.Try):
            handlers = [stmt for h in node.handlers for stmt in h.body]
            yield from _toplevel([*node.body, *handlers, *node.orelse, *node.finalbody])


class _Resolver:
    """Follows names to project definitions; parses each project file at most once."""

    def __init__(self, root: Path, search: Sequence[str]) -> None:
        self.root = root
        self.search = list(search)  # folders (relative, "" = root) modules are found in
        self.modules: dict[str, _Module | None] = {}
        self.attrs: dict[tuple[str, str], _Ref | None] = {}

    def module(self, name: str) -> _Module | None:
        if name in self.modules:
            return self.modules[name]
        found: _Module | None = None
        base = name.replace(".", "/")
        for folder in self.search:
            prefix = f"{folder}/" if folder else ""
            for candidate, is_package in ((f"{base}.py", False), (f"{base}/__init__.py", True)):
                rel = rel_inside(self.root, prefix + candidate)
                if rel is None or not (self.root / rel).is_file():
                    continue
                found = self.load(rel, name, is_package)
                break
            if found is not None:
                break
        self.modules[name] = found
        return found

    def load(self, rel: str, name: str, is_package: bool) -> _Module | None:
        lines = read_lines(self.root, rel)
        tree = _parse(lines) if lines is not None else None
        if lines is None or tree is None:
            return None
        return _Module(rel, name, is_package, lines, tree)

    def _absolute(self, module: _Module, level: int, name: str | None) -> str:
        if not level:
            return name or ""
        parts = module.name.split(".")
        if not module.is_package:
            parts = parts[:-1]
        parts = parts[: len(parts) - (level - 1)] if level > 1 else parts
        return ".".join([*parts, name] if name else parts)

    def attr(self, module: _Module, name: str, hops: int = 0) -> _Ref | None:
        """What `module.name` is: a top-level definition, or what an import there names."""
        key = (module.rel, name)
        if key not in self.attrs:
            self.attrs[key] = None  # a re-export cycle ends here
            self.attrs[key] = self._attr(module, name, hops)
        return self.attrs[key]

    def _attr(self, module: _Module, name: str, hops: int) -> _Ref | None:
        if hops > MAX_HOPS:
            return None
        alias: str | None = None
        # The first binding found wins: for `try: from x import f` / `except: def f` that is
        # the import, which is what runs on a working install.
        for node in _toplevel(module.tree.body):
            if isinstance(node, _DEFS) and node.name == name:
                found: _Ref | None = _DefRef(module, node)
            elif isinstance(node, ast.Import):
                found = None
                for a in node.names:
                    if (a.asname or a.name.split(".")[0]) == name:
                        target = self.module(a.name if a.asname else a.name.split(".")[0])
                        found = _ModRef(target) if target is not None else None
                if found is None:
                    continue
            elif isinstance(node, ast.ImportFrom):
                hit = next((a for a in node.names if (a.asname or a.name) == name), None)
                if hit is None:
                    continue
                source = self._absolute(module, node.level, node.module)
                found = self._from(source, hit.name, hops + 1)
            elif (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Name)
                and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
            ):
                alias = node.value.id  # `rest = drop`: an alias of a name of this module
                continue
            else:
                continue
            if found is not None:
                return found
        if alias is not None and alias != name:
            return self.attr(module, alias, hops + 1)
        if module.is_package:
            sub = self.module(f"{module.name}.{name}")
            if sub is not None:
                return _ModRef(sub)
        for node in _toplevel(module.tree.body):  # `from .mod import *` re-exports
            if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
                star = self.module(self._absolute(module, node.level, node.module))
                if star is not None and star is not module:
                    found = self.attr(star, name, hops + 1)
                    if found is not None:
                        return found
        return None

    def _from(self, source: str, name: str, hops: int) -> _Ref | None:
        target = self.module(source) if source else None
        if target is not None:
            found = self.attr(target, name, hops)
            if found is not None:
                return found
        sub = self.module(f"{source}.{name}" if source else name)
        return _ModRef(sub) if sub is not None else None

    def member(self, ref: _DefRef, name: str, hops: int = 0) -> _DefRef | None:
        """A method (or nested class) of a class, looking in its project base classes too."""
        cls = ref.node
        if not isinstance(cls, ast.ClassDef) or hops > MAX_HOPS:
            return None
        for node in cls.body:
            if isinstance(node, _DEFS) and node.name == name:
                return _DefRef(ref.module, node, owner=cls)
        for base in cls.bases:
            found = _Scope(self, ref.module).expr(base)
            if isinstance(found, _DefRef) and found.node is not cls:
                member = self.member(found, name, hops + 1)
                if member is not None:
                    return member
        return None


class _Scope:
    """Names visible inside one function: its module's globals, plus locals we can type."""

    def __init__(
        self,
        resolver: _Resolver,
        module: _Module,
        local: dict[str, _Ref] | None = None,
    ) -> None:
        self.resolver = resolver
        self.module = module
        self.local = dict(local or {})

    def name(self, name: str) -> _Ref | None:
        if name in self.local:
            return self.local[name]
        return self.resolver.attr(self.module, name)

    def expr(self, node: ast.AST) -> _Ref | None:
        if isinstance(node, ast.Name):
            return self.name(node.id)
        if isinstance(node, ast.Attribute):
            base = self.expr(node.value)
            if isinstance(base, _ModRef):
                return self.resolver.attr(base.module, node.attr)
            if isinstance(base, _Instance):
                return self.resolver.member(base.cls, node.attr)
            if isinstance(base, _DefRef):
                return self.resolver.member(base, node.attr)
            return None
        if isinstance(node, ast.Call):
            func = self.expr(node.func)
            if isinstance(func, _DefRef) and isinstance(func.node, ast.ClassDef):
                return _Instance(func)
        return None

    def learn_locals(self, function: ast.AST) -> None:
        """`x = Calc()` (or `with Calc() as x`) makes `x` an instance of Calc."""
        for node in ast.walk(function):
            pairs: list[tuple[ast.AST, ast.AST]] = []
            if isinstance(node, ast.Assign):
                pairs = [(t, node.value) for t in node.targets]
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                pairs = [(node.target, node.value)]
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                pairs = [
                    (item.optional_vars, item.context_expr)
                    for item in node.items
                    if item.optional_vars is not None
                ]
            for target, value in pairs:
                if isinstance(target, ast.Name) and target.id not in self.local:
                    found = self.expr(value)
                    if isinstance(found, _Instance):
                        self.local[target.id] = found


def _references(node: ast.AST) -> Iterator[ast.AST]:
    """Every name and attribute chain read in `node`, outermost first, in source order."""
    for child in ast.walk(node):
        if isinstance(child, (ast.Name, ast.Attribute)) and isinstance(
            getattr(child, "ctx", None), ast.Load
        ):
            yield child


def _definition(ref: _DefRef, depth: int) -> Definition:
    node = ref.node
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    last = node.end_lineno or node.lineno
    if isinstance(node, ast.ClassDef):
        label = f"class {node.name}"
    elif ref.owner is not None:
        label = f"{ref.owner.name}.{node.name}()"
    else:
        label = f"{node.name}()"
    header = ref.owner.lineno if ref.owner is not None else None
    return Definition(ref.module.rel, first, last, label, depth, header)


def _fixture_functions(
    resolver: _Resolver, test_module: _Module, test: ast.FunctionDef
) -> list[tuple[_Module, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """The test's fixtures (by argument name) defined in its module or a conftest.py on the way
    up to the root, and the module-level helper functions of the test module it calls."""
    wanted = {a.arg for a in test.args.args} - {"self", "cls"}
    used = {n.id for n in ast.walk(test) if isinstance(n, ast.Name)}
    modules = [test_module]
    folder = Path(test_module.rel).parent
    while True:
        conftest = (folder / "conftest.py").as_posix()
        if (resolver.root / conftest).is_file():
            loaded = resolver.load(conftest, "conftest", False)
            if loaded is not None:
                modules.append(loaded)
        if folder == Path("."):
            break
        folder = folder.parent
    found: list[tuple[_Module, ast.FunctionDef | ast.AsyncFunctionDef]] = []
    for module in modules:
        for node in module.tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if node.name in wanted or (module is test_module and node.name in used):
                wanted.discard(node.name)
                found.append((module, node))
    return found


def _fixture_value(scope: _Scope, fixture: ast.AST) -> _Ref | None:
    """A fixture that returns or yields `Calc(...)` gives the test an instance of Calc."""
    local = _Scope(scope.resolver, scope.module)
    local.learn_locals(fixture)
    for node in ast.walk(fixture):
        if isinstance(node, (ast.Return, ast.Yield)) and node.value is not None:
            found = local.expr(node.value)
            if isinstance(found, _Instance):
                return found
    return None


def _search_folders(root: Path, test_rel: str) -> list[str]:
    """Where the test's imports are found: the root, src/, and the folder pytest's default
    import mode puts on sys.path for the test (the first one up without an __init__.py)."""
    folders = ["", "src"]
    folder = Path(test_rel).parent
    while folder != Path(".") and (root / folder / "__init__.py").is_file():
        folder = folder.parent
    if folder.as_posix() not in (".", "src"):
        folders.append(folder.as_posix())
    return folders


def _module_name(test_rel: str, base: str) -> str:
    path = Path(test_rel).with_suffix("")
    parts = path.relative_to(base).parts if base else path.parts
    return ".".join(parts)


def reached_definitions(root: Path, test_rel: str, lineno: int) -> list[Definition]:
    """Definitions in project files that the test at `test_rel:lineno` reaches: depth 0 for
    names it (or its fixtures and helpers) uses, depth 1 for names those functions use."""
    folders = _search_folders(root, test_rel)
    resolver = _Resolver(root, folders)
    base = folders[-1] if len(folders) > 2 else ""
    if base == "" and test_rel.startswith("src/"):
        base = "src"
    test_module = resolver.load(test_rel, _module_name(test_rel, base), False)
    if test_module is None:
        return []
    test = _test_function(test_module.tree, lineno)
    if test is None:
        return []
    found: dict[tuple[str, int], Definition] = {}
    functions: list[tuple[_DefRef, int]] = []

    def add(ref: _Ref | None, depth: int) -> None:
        if isinstance(ref, _Instance):
            ref = ref.cls
        if not isinstance(ref, _DefRef) or ref.module.rel == test_rel:
            return
        if Path(ref.module.rel).name == "conftest.py":
            return
        definition = _definition(ref, depth)
        key = (definition.path, definition.first)
        if key in found and found[key].depth <= depth:
            return
        found[key] = definition
        if depth == 0 and not isinstance(ref.node, ast.ClassDef):
            functions.append((ref, depth))

    def visit(scope: _Scope, node: ast.AST, depth: int) -> None:
        scope.learn_locals(node)
        for reference in _references(node):
            ref = scope.expr(reference)
            add(ref, depth)
            if isinstance(ref, _DefRef) and isinstance(ref.node, ast.ClassDef):
                add(resolver.member(ref, "__init__"), depth)  # `Calc()` runs __init__

    test_scope = _Scope(resolver, test_module)
    for module, fixture in _fixture_functions(resolver, test_module, test):
        scope = _Scope(resolver, module)
        visit(scope, fixture, 0)
        value = _fixture_value(scope, fixture)
        if value is not None:
            test_scope.local[fixture.name] = value
    visit(test_scope, test, 0)
    # One level further: what the functions the test calls call in turn (`self.x` in a method
    # is the method's own class).
    for ref, _ in list(functions):
        local: dict[str, _Ref] = {}
        if ref.owner is not None:
            owner = _DefRef(ref.module, ref.owner)
            local = {"self": _Instance(owner), "cls": owner}
        visit(_Scope(resolver, ref.module, local), ref.node, 1)
    return list(found.values())


def select(
    definitions: Sequence[Definition], sizes: dict[Definition, int], budget: int
) -> tuple[list[Definition], list[Definition]]:
    """(shown, left out): depth 0 before depth 1 (what the test calls directly matters most),
    smallest first within each; a definition inside one already shown is not repeated, and a
    class chosen after its methods replaces them."""
    shown: list[Definition] = []
    left: list[Definition] = []
    used = 0
    for d in sorted(definitions, key=lambda d: (d.depth, sizes[d], d.path, d.first)):
        if any(s.contains(d) for s in shown):
            continue
        inner = [s for s in shown if d.contains(s)]
        cost = sizes[d] - sum(sizes[s] for s in inner)
        if used + cost > budget:
            left.append(d)
            continue
        shown = [s for s in shown if s not in inner] + [d]
        used += cost
    left = [d for d in left if not any(s.contains(d) for s in shown)]
    return shown, left


def _render(definition: Definition, lines: list[str]) -> str:
    body = _excerpt(lines, definition.first, definition.last)
    if definition.header is not None and definition.header < definition.first:
        body = f"{_excerpt(lines, definition.header, definition.header)}\n  ...\n{body}"
    return f"{definition.where}\n```python\n{body}\n```"


# --- the message --------------------------------------------------------------------------------


def first_message(
    root: Path,
    failures: Sequence[Failure],
    task: Task | None,
    policy: PathPolicy | None = None,
    *,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> list[dict[str, Any]]:
    """The stable context of every attempt: identical bytes across attempts, so it caches.
    Every file is read under `policy` (the agent's read policy) when one is given."""
    token = _policy.set(policy)
    try:
        return _first_message(root, failures, task, max_chars)
    finally:
        _policy.reset(token)


def _first_message(
    root: Path, failures: Sequence[Failure], task: Task | None, max_chars: int
) -> list[dict[str, Any]]:
    """See `first_message`.

    Source excerpts (traceback frames first, then the definitions the test reaches, else the
    top of the project modules it imports) share `max_chars`.
    """
    from pytest_agentic.conventions import context_for

    parts = ["Fix the code so that these failing tests pass (pytest node ids):"]
    parts += [f"- {f.nodeid}" for f in failures]
    files: list[str] = []
    already: list[str] = []
    used = 0
    shown_defs: list[Definition] = []
    for failure in failures:
        parts.append(
            f"\n## {failure.nodeid} ({'setup error' if failure.when == 'setup' else 'failure'})"
        )
        parts.append("Failure report:\n```\n" + failure.report.strip()[-6000:] + "\n```")
        test_rel = rel_inside(root, failure.path) if failure.path else None
        test_lines = read_lines(root, test_rel) if test_rel else None
        tree = _parse(test_lines) if test_lines is not None else None
        if test_rel and failure.lineno is not None and test_lines is not None:
            source = _test_source(test_rel, failure.lineno, test_lines, tree)
            parts.append("Test source (read-only to you):\n```python\n" + source + "\n```")
        frames = 0
        for path, lineno in reversed(failure.frames):
            rel = rel_inside(root, path)
            if rel is None or rel == test_rel or frames >= MAX_FRAMES:
                continue
            lines = read_lines(root, rel)
            if lines is None:
                continue
            frames += 1
            first, last = max(1, lineno - CONTEXT_LINES), min(len(lines), lineno + CONTEXT_LINES)
            excerpt = _excerpt(lines, first, last)
            used += len(excerpt)
            files.append(rel)
            already.append(f"{rel}:{first}-{last}")
            parts.append(f"Source around {rel}:{lineno}:\n```python\n{excerpt}\n```")
        reached: list[Definition] = []
        if test_rel and failure.lineno is not None and tree is not None:
            try:
                found = reached_definitions(root, test_rel, failure.lineno)
            except RecursionError:
                found = []  # absurdly deep code: the module tops below are the fallback
            reached = [d for d in found if not any(s.contains(d) for s in shown_defs)]
        if reached:
            texts: dict[Definition, str] = {}
            for d in reached:
                lines = read_lines(root, d.path)
                texts[d] = _render(d, lines) if lines is not None else ""
            sizes = {d: len(t) for d, t in texts.items()}
            shown, left = select([d for d in reached if texts[d]], sizes, max(0, max_chars - used))
            if shown:
                parts.append(
                    "Definitions the test reaches (whole, with line numbers, smallest first):"
                )
            for d in shown:
                parts.append(texts[d])
                used += sizes[d]
                files.append(d.path)
                already.append(d.where)
            shown_defs += shown
            if left:
                listed = ", ".join(d.where for d in left[:MAX_LISTED])
                more = f" and {len(left) - MAX_LISTED} more" if len(left) > MAX_LISTED else ""
                parts.append(f"Also reached, not shown (over the size budget): {listed}{more}")
        elif tree is not None:
            # Nothing resolved (dynamic imports, a plugin-provided fixture): the top of the
            # project modules the test imports is the best guess left.
            for rel in _imported_files(root, tree)[:MAX_FRAMES]:
                lines = read_lines(root, rel)
                if rel in files or not lines:
                    continue
                last = min(len(lines), MAX_IMPORTED_LINES)
                excerpt = _excerpt(lines, 1, last)
                while len(excerpt) > max_chars - used and last > 1:
                    last //= 2
                    excerpt = _excerpt(lines, 1, last)
                if len(excerpt) > max_chars - used:
                    break
                used += len(excerpt)
                files.append(rel)
                already.append(f"{rel}:1-{last}")
                more = f"\n[... {len(lines) - last} more lines]" if len(lines) > last else ""
                parts.append(f"Imported by the test: {rel}\n```python\n{excerpt}{more}\n```")
    if already:
        parts.append(
            "\nAlready shown above: " + "; ".join(already) + ". View other code with "
            "`view_range` (the lines you need), not whole files."
        )
    if task is not None:
        goal = task.goal or task.title
        parts.append(
            f"\n## Active task {task.id!r}\n{goal}\nYou may change only files matching: "
            + ", ".join(task.scope)
        )
    # AGENTS.md plus the knowledge files whose `paths` globs cover the files shown.
    conventions = context_for(root, sorted(set(files)))
    if conventions.strip():
        parts.append("\n## Repository conventions\n" + conventions)
    return [{"type": "text", "text": "\n".join(parts), "cache_control": {"type": "ephemeral"}}]
