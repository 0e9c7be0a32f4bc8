"""Task specs: load and validate `.agentic/tasks/<id>.toml`, the active task, dependency order."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_agentic.config import Config, check_type, read_toml, unknown_key_message
from pytest_agentic.errors import AgenticError
from pytest_agentic.globs import GlobSpec, compile_globs

ENV_ACTIVE = "PYTEST_AGENTIC_TASK"
ACTIVE_FILE = ".agentic/active"
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# key -> (kind, required)
TASK_KEYS: dict[str, tuple[str, bool]] = {
    "id": ("str", False),
    "title": ("str", False),
    "goal": ("str", False),
    "scope": ("list[str]", True),
    "verify": ("list[str]", False),
    "depends_on": ("list[str]", False),
}


@dataclass(frozen=True)
class Task:
    """One task spec: what to do and which files a change for it may touch."""

    id: str
    scope: tuple[str, ...]
    title: str = ""
    goal: str = ""
    verify: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    path: Path | None = field(default=None, compare=False)


def check_id(task_id: str, where: str) -> None:
    if not ID_RE.match(task_id):
        raise AgenticError(
            f"{where}: bad task id {task_id!r}; use letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit, at most 64 characters)"
        )


def compile_scope(patterns: Sequence[str], where: str) -> GlobSpec:
    """A gitwildmatch spec for `patterns` (with `!` negation); bad patterns are user errors.
    Matching never backtracks (issue 14: `*a*a*…*b` hung pathspec's regexes)."""
    return compile_globs(patterns, where)


def task_problems(data: dict[str, Any], path: Path, stem: str | None = None) -> list[str]:
    """Every problem of a task table read from `path` (all of them, not only the first, so
    `task check` can list a file's problems in one go); `stem` is the id the file name implies."""
    stem = path.stem if stem is None else stem
    problems: list[str] = []
    valid: dict[str, Any] = {}
    for key, value in data.items():
        if key not in TASK_KEYS:
            problems.append(f"{path}: {unknown_key_message(key, list(TASK_KEYS))}")
            continue
        kind = TASK_KEYS[key][0]
        if not check_type(kind, value):
            expected = "a string" if kind == "str" else "a list of strings"
            problems.append(f"{path}: {key} must be {expected}, not {type(value).__name__}")
            continue
        valid[key] = value
    task_id = valid.get("id", stem)
    try:
        check_id(task_id, str(path))
    except AgenticError as exc:
        problems.append(str(exc))
    else:
        if task_id != stem:
            problems.append(
                f"{path}: id {task_id!r} does not match the file name; rename the file to "
                f"{task_id}.toml or set id = {stem!r}"
            )
    if "scope" not in data:
        problems.append(f"{path}: scope is required: a list of gitwildmatch globs")
    elif "scope" in valid:
        scope = [p for p in valid["scope"] if p.strip()]
        if not scope:
            problems.append(f"{path}: scope is empty; list the globs this task may change")
        elif all(p.lstrip().startswith("!") for p in scope):
            problems.append(f"{path}: scope has only '!' exclusions, so it matches nothing")
        else:
            try:
                compile_scope(scope, str(path))
            except AgenticError as exc:
                problems.append(str(exc))
    for dep in valid.get("depends_on", []):
        try:
            check_id(dep, f"{path}: depends_on")
        except AgenticError as exc:
            problems.append(str(exc))
    return problems


def parse_task(data: dict[str, Any], path: Path, stem: str | None = None) -> Task:
    """Validate a task table read from `path`; the first problem is a user error."""
    problems = task_problems(data, path, stem)
    if problems:
        raise AgenticError(problems[0])
    return Task(
        id=data.get("id", path.stem if stem is None else stem),
        scope=tuple(data["scope"]),
        title=data.get("title", ""),
        goal=data.get("goal", ""),
        verify=tuple(data.get("verify", [])),
        depends_on=tuple(data.get("depends_on", [])),
        path=path,
    )


def task_path(config: Config, task_id: str) -> Path:
    return config.tasks_dir / f"{task_id}.toml"


def load_task(config: Config, task_id: str) -> Task:
    check_id(task_id, "task")
    path = task_path(config, task_id)
    if not path.is_file():
        raise AgenticError(
            f"{_rel(config, path)}: no such task {task_id!r}; "
            f"create it with `pytest-agentic task new {task_id} --scope GLOB`"
        )
    return parse_task(read_spec(config, path), _rel_path(config, path))


def read_spec(config: Config, path: Path) -> dict[str, Any]:
    """The TOML table of a spec; errors name the path relative to the project root, as every
    other task error does."""
    try:
        return read_toml(path)
    except AgenticError as exc:
        text = str(exc)
        if text.startswith(str(path)):
            text = _rel(config, path) + text[len(str(path)) :]
        raise AgenticError(text) from None


def parse_task_text(text: str, path: Path) -> Task:
    """A task from TOML text (as committed in a git revision); errors name `path`."""
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AgenticError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses per nesting level
        raise AgenticError(f"{path}: invalid TOML: nested too deeply") from None
    return parse_task(data, path)


def task_files(config: Config) -> list[Path]:
    if not config.tasks_dir.is_dir():
        return []
    return sorted(config.tasks_dir.glob("*.toml"))


@dataclass(frozen=True)
class SpecFile:
    """One spec file as `task check`/`task list` see it: the task when valid, else why not."""

    path: str
    task: Task | None
    problems: tuple[str, ...]


def check_specs(config: Config) -> list[SpecFile]:
    """Every spec file with all of its problems (a broken file never hides the others)."""
    out = []
    for path in task_files(config):
        rel = _rel_path(config, path)
        try:
            data = read_spec(config, path)
        except AgenticError as exc:
            out.append(SpecFile(rel.as_posix(), None, (str(exc),)))
            continue
        problems = task_problems(data, rel)
        task = None if problems else parse_task(data, rel)
        out.append(SpecFile(rel.as_posix(), task, tuple(problems)))
    return out


def dependency_problems(tasks: Sequence[Task]) -> list[str]:
    """Every unknown dependency, and a cycle if there is one."""
    known = {t.id for t in tasks}
    problems = [
        f"{task.path or task.id}: depends_on names unknown task {dep!r}"
        for task in tasks
        for dep in task.depends_on
        if dep not in known
    ]
    if not problems:
        try:
            dependency_order(tasks)
        except AgenticError as exc:
            problems.append(str(exc))
    return problems


def load_all(config: Config) -> tuple[list[Task], list[str]]:
    """Every valid task spec, and one problem line per problem of any spec or dependency."""
    specs = check_specs(config)
    tasks = [s.task for s in specs if s.task is not None]
    problems = [p for s in specs for p in s.problems]
    problems += dependency_problems(tasks)
    return tasks, problems


def dependency_order(tasks: Iterable[Task]) -> list[Task]:
    """Tasks with every dependency before its dependents (ties by id); unknown deps and
    cycles are user errors naming the task and the cycle."""
    by_id = {t.id: t for t in tasks}
    for task in by_id.values():
        for dep in task.depends_on:
            if dep not in by_id:
                raise AgenticError(f"{task.path or task.id}: depends_on names unknown task {dep!r}")
    order: list[Task] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done
    # Iterative depth-first search: a `depends_on` chain of 1,200 tasks overflowed Python's
    # recursion limit (issue 14). Each frame is (task id, its sorted deps, next dep index).
    for root_id in sorted(by_id):
        if state.get(root_id) == 2:
            continue
        stack: list[tuple[str, list[str], int]] = [(root_id, sorted(by_id[root_id].depends_on), 0)]
        state[root_id] = 1
        while stack:
            task_id, deps, index = stack[-1]
            if index == len(deps):
                stack.pop()
                state[task_id] = 2
                order.append(by_id[task_id])
                continue
            stack[-1] = (task_id, deps, index + 1)
            dep = deps[index]
            if state.get(dep) == 2:
                continue
            if state.get(dep) == 1:
                path = [frame[0] for frame in stack]
                cycle = path[path.index(dep) :] + [dep]
                raise AgenticError(f"dependency cycle: {' -> '.join(cycle)}")
            state[dep] = 1
            stack.append((dep, sorted(by_id[dep].depends_on), 0))
    return order


def active_task_id(config: Config) -> str | None:
    """The active task: env PYTEST_AGENTIC_TASK, else the one-line file `.agentic/active`."""
    env = os.environ.get(ENV_ACTIVE, "").strip()
    if env:
        return env
    return read_active_file(config.root)


def read_active_file(root: Path) -> str | None:
    """The id in `root/.agentic/active`, or None. A folder, FIFO, huge or non-UTF-8 file
    there is a one-line error (issue 14), never a traceback or a hang."""
    from pytest_agentic.safeio import read_bytes_bounded

    path = root / ACTIVE_FILE
    try:
        data = read_bytes_bounded(path, 4096, ACTIVE_FILE)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise AgenticError(
            f"{ACTIVE_FILE}: not valid UTF-8; it holds one task id (`pytest-agentic task "
            "start ID` rewrites it)"
        ) from None
    return text.splitlines()[0].strip() if text else None


def active_task(config: Config) -> Task | None:
    task_id = active_task_id(config)
    if task_id is None:
        return None
    source = f"${ENV_ACTIVE}" if os.environ.get(ENV_ACTIVE, "").strip() else ACTIVE_FILE
    try:
        check_id(task_id, source)
    except AgenticError:
        raise
    return load_task(config, task_id)


def dump_task(task: Task) -> str:
    """TOML text for a task (JSON string escapes are valid TOML basic strings)."""

    def s(value: str) -> str:
        return json.dumps(value, ensure_ascii=False)

    def lst(values: Sequence[str]) -> str:
        return "[" + ", ".join(s(v) for v in values) + "]"

    lines = [f"id = {s(task.id)}"]
    if task.title:
        lines.append(f"title = {s(task.title)}")
    if task.goal:
        lines.append(f"goal = {s(task.goal)}")
    lines.append(f"scope = {lst(task.scope)}")
    if task.verify:
        lines.append(f"verify = {lst(task.verify)}")
    if task.depends_on:
        lines.append(f"depends_on = {lst(task.depends_on)}")
    return "\n".join(lines) + "\n"


def _rel_path(config: Config, path: Path) -> Path:
    try:
        return path.relative_to(config.root)
    except ValueError:
        return path


def _rel(config: Config, path: Path) -> str:
    return _rel_path(config, path).as_posix()
