"""Settings: the `[tool.pytest-agentic]` table of the nearest pyproject.toml, validated.

Every key, its type and its default live in `KEYS`; the README's configuration reference
lists the same keys. Command-line options override these values (the pytest plugin and the
CLI resolve each setting command line -> config -> default).
"""

from __future__ import annotations

import difflib
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_agentic.errors import AgenticError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

TABLE = "pytest-agentic"

#: Files the fixer may never write, even inside a task's scope (gitwildmatch): the tests, and
#: the files that configure how pytest runs them. An agent that may edit `addopts` can load a
#: plugin of its own that reports every test as passed, or (in `[tool.pytest-agentic]`) empty
#: this very list for the next run. Then the files a re-run's interpreter or pytest reads before
#: any test (`pytest.py` would shadow pytest itself; pytest 9 reads `pytest.toml` first), the
#: project's automation, and the convention files that instruct agents. On top of these, the
#: fixer protects the files this session collected tests from, its conftests and its ini file.
DEFAULT_PROTECTED = (
    "tests/",
    "test/",
    "test_*.py",
    "*_test.py",
    "conftest.py",
    "pyproject.toml",
    "pytest.ini",
    ".pytest.ini",
    "tox.ini",
    "setup.cfg",
    "pytest.toml",
    ".pytest.toml",
    "pytest.py",
    "_pytest/",
    "sitecustomize.py",
    "usercustomize.py",
    "*.pth",
    "noxfile.py",
    ".pre-commit-config.yaml",
    ".github/",
    "AGENTS.md",
    "CLAUDE.md",
    "docs/knowledge/",
)

#: Files the agent may never read (nor write, nor see in a listing): secrets that would
#: otherwise travel to the API, into transcripts and reports (issue #10). gitwildmatch.
DEFAULT_UNREADABLE = (
    ".env",
    ".env.*",
    "*.pem",
    "*.key",
    "id_rsa*",
    "id_ed25519*",
    ".netrc",
    ".pypirc",
    ".npmrc",
    "secrets/",
    "**/credentials*",
)

# key -> (kind, default). Kinds: "str", "str?" (str or absent), "bool", "int", "int?",
# "float?" (a positive number or absent), "list[str]". Keep in step with the README's
# configuration table.
KEYS: dict[str, tuple[str, Any]] = {
    # foundation (tasks and scope)
    "tasks_dir": ("str", ".agentic/tasks"),
    "protected": ("list[str]", list(DEFAULT_PROTECTED)),
    "require_task": ("bool", False),
    # the fix loop (`pytest --agent-fix`)
    "fix": ("bool", False),
    "max_attempts": ("int", 3),
    "model": ("str?", None),
    "max_turns": ("int", 25),
    "budget_tokens": ("int?", None),
    "max_cost_usd": ("float?", None),
    "dry_run": ("bool", False),
    "commit": ("bool", False),
    "report": ("str?", None),
    "rerun_timeout": ("int", 300),
    "api_timeout": ("int", 600),
    "context_max_chars": ("int", 24000),
    "unreadable": ("list[str]", list(DEFAULT_UNREADABLE)),
    "view_max_chars": ("int", 40_000),
    "write_max_bytes": ("int", 1 << 20),
    "sandbox": ("str", "auto"),
    "sandbox_network": ("bool", False),
    "workers": ("int", 4),
    # the validation gate
    "max_diff_lines": ("int", 200),
    "checks": ("list[str]", []),
    "review": ("bool", True),
    "review_model": ("str?", None),
    # convention files
    "templates_dir": ("str?", None),
    "knowledge_dir": ("str", "docs/knowledge"),
    "pointer_files": ("list[str]", ["CLAUDE.md"]),
    "agents_md_budget_tokens": ("int", 8000),
}

#: String keys whose value must be one of these.
CHOICES: dict[str, tuple[str, ...]] = {"sandbox": ("auto", "required", "off")}

_KIND_NAMES = {
    "str": "a string",
    "str?": "a string",
    "bool": "true or false",
    "int": "a positive integer",
    "int?": "a positive integer",
    "float?": "a positive number",
    "list[str]": "a list of strings",
}


@dataclass(frozen=True)
class Config:
    """Validated settings plus where they came from."""

    root: Path
    """The project root: the folder of the pyproject.toml, else the git top level, else cwd."""
    path: Path | None
    """The pyproject.toml the settings were read from, if any."""
    values: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        if key in self.values:
            return self.values[key]
        default = KEYS[key][1]
        return list(default) if isinstance(default, list) else default

    @property
    def tasks_dir(self) -> Path:
        return self.root / str(self["tasks_dir"])

    @property
    def protected(self) -> list[str]:
        return list(self["protected"])

    @property
    def require_task(self) -> bool:
        return bool(self["require_task"])


def find_pyproject(start: Path) -> Path | None:
    """The nearest pyproject.toml in `start` or a folder above it."""
    start = start.absolute()
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _git_toplevel(start: Path) -> Path | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=start,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    return Path(out.stdout.strip())


def _toml_error_position(exc: Exception) -> tuple[int, int] | None:
    # tomllib puts "(at line L, column C)" in the message; 3.14 adds attributes as well.
    lineno = getattr(exc, "lineno", None)
    colno = getattr(exc, "colno", None)
    if isinstance(lineno, int) and isinstance(colno, int):
        return lineno, colno
    match = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
    if match:
        return int(match.group(1)), int(match.group(2))
    return None


#: The largest TOML file read (pyproject.toml, a task spec): far above any real one, and a
#: FIFO or /dev/zero behind the name is refused before it is read.
MAX_TOML_BYTES = 4 * 1024 * 1024


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; syntax errors become `path:line:col: ...` user errors."""
    from pytest_agentic.safeio import read_bytes_bounded

    return parse_toml(read_bytes_bounded(path, MAX_TOML_BYTES, str(path)), str(path))


def parse_toml(data: bytes, path: str) -> dict[str, Any]:
    """Parse TOML bytes read from `path` (a file, or `REV:file` in git); every failure is one
    line naming `path`."""
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise AgenticError(f"{path}: not valid UTF-8; save it as UTF-8") from None
    except RecursionError:
        # tomllib recurses per nesting level: `a = [[[[…]]]]` 1,000 deep overflows the stack.
        raise AgenticError(f"{path}: invalid TOML: nested too deeply") from None
    except tomllib.TOMLDecodeError as exc:
        where = _toml_error_position(exc)
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc)) or "invalid TOML"
        at = f"{path}:{where[0]}:{where[1]}" if where else str(path)
        raise AgenticError(f"{at}: invalid TOML: {msg}") from None


def key_line(path: Path, key: str, text: str | None = None) -> int | None:
    """The first line of `path` (or of its `text`) that assigns `key` (to point at a bad
    setting)."""
    try:
        lines = (path.read_text(encoding="utf-8") if text is None else text).splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
    for number, line in enumerate(lines, start=1):
        if pattern.match(line):
            return number
    return None


def check_type(kind: str, value: Any) -> bool:
    """Whether `value` (as read from TOML) is of the settings kind `kind`."""
    if kind in ("str", "str?"):
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind in ("int", "int?"):
        return isinstance(value, int) and not isinstance(value, bool) and value > 0
    if kind == "float?":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if kind == "list[str]":
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    raise AssertionError(kind)  # pragma: no cover - KEYS uses only the kinds above


def unknown_key_message(key: str, known: list[str]) -> str:
    """`unknown key 'x'` plus a close-match suggestion when there is one."""
    message = f"unknown key {key!r}"
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        message += f"; did you mean {close[0]!r}?"
    else:
        message += f"; known keys: {', '.join(sorted(known))}"
    return message


#: Settings that name a path inside the project: relative, no `..` out of it, not in `.git`
#: (issue 14: `pointer_files = ["/tmp/x/gitconfig"]` made agentic-scaffold write outside the
#: repository, and a written gitconfig runs commands).
PATH_KEYS = frozenset({"tasks_dir", "templates_dir", "knowledge_dir", "pointer_files"})


def inside_path_problem(value: str) -> str | None:
    """Why `value` is not a path inside the project (lexically), or None."""
    if not value.strip():
        return "is empty"
    if "\0" in value:
        return "contains a NUL byte"
    if value.startswith(("/", "~")) or re.match(r"^[A-Za-z]:[\\/]", value):
        return "is absolute; use a path relative to the project root"
    parts = [p for p in re.split(r"[\\/]", value) if p not in ("", ".")]
    depth = 0
    for part in parts:
        depth += -1 if part == ".." else 1
        if depth < 0:
            return "leads out of the project root (..); use a path inside it"
    if ".git" in parts:
        return "is inside .git; git's own files are never written"
    return None


def validate(table: Any, path: Path, text: str | None = None) -> dict[str, Any]:
    """Check the `[tool.pytest-agentic]` table; every error names the file and the key."""
    where = f"{path}: [tool.{TABLE}]"
    if not isinstance(table, dict):
        raise AgenticError(f"{where} must be a table")
    values: dict[str, Any] = {}
    for key, value in table.items():
        line = key_line(path, key, text)
        at = f"{path}:{line}" if line else str(path)
        if key not in KEYS:
            raise AgenticError(f"{at}: [tool.{TABLE}] {unknown_key_message(key, list(KEYS))}")
        kind = KEYS[key][0]
        if not check_type(kind, value):
            raise AgenticError(
                f"{at}: [tool.{TABLE}] {key} must be {_KIND_NAMES[kind]}, "
                f"not {type(value).__name__} {value!r}"
            )
        if key in PATH_KEYS:
            for item in value if isinstance(value, list) else [value]:
                problem = inside_path_problem(item)
                if problem:
                    raise AgenticError(f"{at}: [tool.{TABLE}] {key} {item!r} {problem}")
        if key in CHOICES and value not in CHOICES[key]:
            choices = ", ".join(f'"{c}"' for c in CHOICES[key])
            raise AgenticError(
                f"{at}: [tool.{TABLE}] {key} must be one of {choices}, not {value!r}"
            )
        values[key] = value
    return values


def settings_from_text(text: str, path: Path, shown: str) -> dict[str, Any]:
    """The validated `[tool.pytest-agentic]` values of pyproject text `text` (as committed in
    git); errors name `shown` (e.g. `pyproject.toml (as of HEAD)`)."""
    data = parse_toml(text.encode("utf-8", "surrogateescape"), shown)
    tool = data.get("tool")
    table = tool.get(TABLE, {}) if isinstance(tool, dict) else {}
    try:
        return validate(table, path, text)
    except AgenticError as exc:
        raise AgenticError(str(exc).replace(str(path), shown, 1)) from None


def load_config(start: Path | None = None) -> Config:
    """Settings for the project containing `start` (default: the working directory)."""
    start = (start or Path.cwd()).absolute()
    path = find_pyproject(start)
    if path is None:
        return Config(root=_git_toplevel(start) or start, path=None)
    data = read_toml(path)
    table = data.get("tool", {}).get(TABLE, {}) if isinstance(data.get("tool"), dict) else {}
    return Config(root=path.parent, path=path, values=validate(table, path))
