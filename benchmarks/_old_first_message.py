"""Today's first message, as of commit 10d2337 (before issue 13), kept verbatim for comparison.

`bench_fix_loop.py` runs the fix loop with this in place of `pytest_agentic.context.first_message`
(and the system prompt of that commit), so "before" and "after" are measured on the same
machine, the same bug and the same scripted model.
"""
# ruff: noqa

from __future__ import annotations

import ast
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CONTEXT_LINES = 12
MAX_FRAMES = 6
MAX_IMPORTED_LINES = 300

SYSTEM = """\
You fix failing Python tests by changing the code under test, inside a real repository.
- Use str_replace_based_edit_tool to view and edit files. Paths are relative to the \
repository root.
- Test files are read-only to you: fix the code, never the tests, their assertions, or \
their skips. Some paths are outside what you may change; an edit there comes back as an \
error saying why. Do not try to work around it.
- Make the smallest change that fixes the cause. Do not reformat or refactor unrelated code.
- run_tests re-runs the failing tests. When you end your turn, the tests are re-run and \
only a passing run keeps your change; a failing one reverts it.
- If the failure cannot be fixed inside the allowed files, call give_up with the reason.
"""


def _read(root: Path, rel: str) -> list[str] | None:
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
    except SyntaxError:
        return None


def _test_source(path: str, lineno: int, lines: list[str], tree: ast.Module | None) -> str:
    end = lineno + 30
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
            node.lineno <= lineno <= (node.end_lineno or node.lineno)
            or any(d.lineno == lineno for d in node.decorator_list)
        ):
            end = node.end_lineno or end
            break
    return f"{path}\n{_excerpt(lines, lineno, end)}"


def _rel_inside(root: Path, path: str) -> str | None:
    full = Path(path) if os.path.isabs(path) else root / path
    try:
        rel = full.resolve().relative_to(root.resolve()).as_posix()
    except (ValueError, OSError):
        return None
    if "site-packages" in rel or rel.startswith((".venv/", "venv/")):
        return None
    return rel


def _imported_files(root: Path, tree: ast.Module) -> list[str]:
    """Project files the test module imports (`from calc import add` -> calc.py): the code
    under test, even when it returned a wrong value instead of raising inside a frame."""
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
                if candidate not in found and (root / candidate).is_file():
                    found.append(candidate)
    return found


def first_message(root: Path, failures: Sequence[Any], task: Any) -> list[dict[str, Any]]:
    """The stable context of every attempt: identical bytes across attempts, so it caches."""
    from pytest_agentic.conventions import context_for

    parts = ["Fix the code so that these failing tests pass (pytest node ids):"]
    parts += [f"- {f.nodeid}" for f in failures]
    frame_files: list[str] = []
    for failure in failures:
        parts.append(
            f"\n## {failure.nodeid} ({'setup error' if failure.when == 'setup' else 'failure'})"
        )
        parts.append("Failure report:\n```\n" + failure.report.strip()[-6000:] + "\n```")
        test_lines = _read(root, failure.path) if failure.path else None
        tree = _parse(test_lines) if test_lines is not None else None
        if failure.path and failure.lineno is not None and test_lines is not None:
            source = _test_source(failure.path, failure.lineno, test_lines, tree)
            parts.append("Test source (read-only to you):\n```python\n" + source + "\n```")
        shown = 0
        for path, lineno in reversed(failure.frames):
            rel = _rel_inside(root, path)
            if rel is None or (failure.path and rel == failure.path) or shown >= MAX_FRAMES:
                continue
            lines = _read(root, rel)
            if lines is None:
                continue
            frame_files.append(rel)
            shown += 1
            excerpt = _excerpt(lines, lineno - CONTEXT_LINES, lineno + CONTEXT_LINES)
            parts.append(f"Source around {rel}:{lineno}:\n```python\n{excerpt}\n```")
        if tree is not None:
            for rel in _imported_files(root, tree)[:MAX_FRAMES]:
                lines = _read(root, rel)
                if rel in frame_files or not lines:
                    continue
                frame_files.append(rel)
                more = (
                    f"\n[... {len(lines) - MAX_IMPORTED_LINES} more lines]"
                    if (len(lines) > MAX_IMPORTED_LINES)
                    else ""
                )
                parts.append(
                    f"Imported by the test: {rel}\n```python\n"
                    f"{_excerpt(lines, 1, MAX_IMPORTED_LINES)}{more}\n```"
                )
    if task is not None:
        goal = task.goal or task.title
        parts.append(
            f"\n## Active task {task.id!r}\n{goal}\nYou may change only files matching: "
            + ", ".join(task.scope)
        )
    # AGENTS.md plus the knowledge files whose `paths` globs cover the files shown.
    conventions = context_for(root, sorted(set(frame_files)))
    if conventions.strip():
        parts.append("\n## Repository conventions\n" + conventions)
    return [{"type": "text", "text": "\n".join(parts), "cache_control": {"type": "ephemeral"}}]
