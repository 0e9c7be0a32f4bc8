"""The conversation with the model: the prompt, the tools, and one attempt's tool-use loop.

The loop is a plain `client.messages.create` loop rather than the SDK's beta tool runner: the
runner continues conversations through server-side threads by default, which the API refuses
together with `cache_control`, and we want prompt caching to hit on turns 2..n. Retries with
backoff (429, 5xx, 529 overloaded, honouring retry-after) are the SDK's own (`max_retries`).

The model is not trusted (issue #10): every tool input is type-checked, every read asks the
path policy's read rules and every write its write rules, results and writes are capped in
size, the budget is checked before each request, and an API error that no retry can cure
(a refused key, an unreachable API) stops the whole run with one line, not one per failure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pytest_agentic.atomic import write_atomic
from pytest_agentic.scope import PathPolicy
from pytest_agentic.workspace import Journal

# Not flagged in the installed SDK's DEPRECATED_MODELS (claude-sonnet-4-5 is, from 2026-11-30);
# a test checks this against the SDK that is installed.
DEFAULT_MODEL = "claude-sonnet-4-6"
MAX_TOKENS = 8192
EDITOR_TOOL = {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}
RUN_TESTS_TOOL = {
    "name": "run_tests",
    "description": (
        "Re-run the failing tests named in the task with the user's pytest settings and return "
        "their outcome and output. The attempt is judged by this same run when you end your turn."
    ),
    "input_schema": {"type": "object", "properties": {}},
}
GIVE_UP_TOOL = {
    "name": "give_up",
    "description": (
        "Stop this attempt without a fix when the failure cannot be fixed within the allowed "
        "files (for example the test itself is wrong, or a decision only a person can make is "
        "needed). Say why, and what you would ask the user."
    ),
    "input_schema": {
        "type": "object",
        "properties": {
            "reason": {"type": "string", "description": "why no fix is possible here"},
            "question": {"type": "string", "description": "what to ask the user, if anything"},
        },
        "required": ["reason"],
    },
}
SEARCH_TOOL = {
    "name": "search",
    "description": (
        "Search the repository's readable files for a Python regular expression, line by "
        "line; returns `path:line:text` for each match (capped). Use it to find code instead "
        "of viewing whole files."
    ),
    "input_schema": {
        "type": "object",
        "properties": {
            "pattern": {"type": "string", "description": "a Python regular expression"},
            "path": {
                "type": "string",
                "description": "only files matching this glob (gitignore style: `src/`, "
                "`*.py`, `pkg/**/models.py`); default every file",
            },
        },
        "required": ["pattern"],
    },
}
TOOLS = [EDITOR_TOOL, SEARCH_TOOL, RUN_TESTS_TOOL, GIVE_UP_TOOL]

VIEW_MAX_CHARS = 40_000
WRITE_MAX_BYTES = 1 << 20
SEARCH_MAX_RESULTS = 100
SEARCH_MAX_FILE_BYTES = 2 << 20  # bigger files are data or generated code, not searched
SEARCH_LINE_CHARS = 2000  # a line is matched on its first 2000 characters only
SEARCH_RESULT_CHARS = 200  # a result line is shown cut to this
SEARCH_SECONDS = 10.0
SEARCH_SKIP_DIRS = frozenset({"__pycache__", "node_modules", "venv", "site-packages"})
TRANSCRIPT_MAX_CHARS = 65_536  # per string in a saved transcript

SYSTEM = """\
You fix failing Python tests by changing the code under test, inside a real repository.
- Use str_replace_based_edit_tool to view and edit files. Paths are relative to the \
repository root.
- The first message already shows, whole and with line numbers, the code the failing test \
reaches; it ends with a list of what was shown. Do not view those again. To read more, view \
only the lines you need with view_range (or find code with search), not whole files.
- Test files are read-only to you: fix the code, never the tests, their assertions, or \
their skips. Some paths are outside what you may change; an edit there comes back as an \
error saying why. Do not try to work around it.
- Make the smallest change that fixes the cause. Do not reformat or refactor unrelated code.
- run_tests re-runs the failing tests. When you end your turn, the tests are re-run and \
only a passing run keeps your change; a failing one reverts it.
- If the failure cannot be fixed inside the allowed files, call give_up with the reason.
"""


class BudgetSpent(Exception):
    """The next request would go over `budget_tokens` or `max_cost_usd`: the run stops."""

    requests = 0  # requests the attempt made before it (set by `converse`)


class FatalApiError(Exception):
    """An API error no retry or other attempt can cure (a refused key, a missing model, an
    unreachable API): the run stops at once. The message is one line with the fix."""

    requests = 1


@dataclass
class Usage:
    """Token totals, as the API reports them. Shared by parallel workers, so updates lock."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    # One lock for all instances (a class attribute keeps `vars(usage)` the four totals).
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def add(self, usage: Any) -> None:
        with self._lock:
            for name in USAGE_FIELDS:
                setattr(self, name, getattr(self, name) + (getattr(usage, name, 0) or 0))

    @property
    def total(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_read_input_tokens
            + self.cache_creation_input_tokens
        )


USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)


def prices(model: str) -> tuple[float, float, float, float]:
    """US$ per token: input, output, cache read, cache write (the report's list prices)."""
    from pytest_agentic.report import PRICES

    family = next((f for f in PRICES if f in model), "sonnet")
    return tuple(p / 1e6 for p in PRICES[family])  # type: ignore[return-value]


class Budget:
    """`budget_tokens` and `max_cost_usd`, checked before every request (issue #10).

    A request is admitted only when what is spent, plus what requests in flight may spend,
    plus a conservative estimate of this request, stays within both limits. Admission
    reserves the estimate under a lock, so parallel workers share one budget.
    """

    def __init__(
        self,
        usage: Usage,
        *,
        max_tokens: int | None = None,
        max_cost_usd: float | None = None,
        model: str = "",
    ) -> None:
        self.usage = usage
        self.max_tokens = max_tokens
        self.max_cost_usd = max_cost_usd
        self.prices = prices(model)
        self._reserved_tokens = 0
        self._reserved_cost = 0.0
        self._lock = threading.Lock()

    def cost(self) -> float:
        u, p = self.usage, self.prices
        return (
            u.input_tokens * p[0]
            + u.output_tokens * p[1]
            + u.cache_read_input_tokens * p[2]
            + u.cache_creation_input_tokens * p[3]
        )

    def estimate(self, input_tokens: int, output_tokens: int) -> tuple[int, float]:
        # Conservative: every input token priced as a cache write, the dearest input kind.
        p = self.prices
        return input_tokens + output_tokens, input_tokens * p[3] + output_tokens * p[1]

    def admit(self, tokens: int, cost: float) -> tuple[int, float]:
        """Reserve one request's estimate, or raise BudgetSpent."""
        with self._lock:
            spent = self.usage.total + self._reserved_tokens
            if self.max_tokens is not None and spent + tokens > self.max_tokens:
                raise BudgetSpent(
                    f"budget spent: {spent} of budget_tokens {self.max_tokens} used, the next "
                    f"request would need about {tokens} more"
                )
            dollars = self.cost() + self._reserved_cost
            if self.max_cost_usd is not None and dollars + cost > self.max_cost_usd:
                raise BudgetSpent(
                    f"budget spent: ${dollars:.4f} of max_cost_usd ${self.max_cost_usd:g} "
                    f"used, the next request could cost about ${cost:.4f} more"
                )
            self._reserved_tokens += tokens
            self._reserved_cost += cost
        return tokens, cost

    def settle(self, ticket: tuple[int, float], usage: Any | None) -> None:
        """Replace a reservation with what the request really used (None: nothing)."""
        with self._lock:
            self._reserved_tokens -= ticket[0]
            self._reserved_cost -= ticket[1]
            if usage is not None:
                self.usage.add(usage)


@dataclass(frozen=True)
class Conversation:
    """How one attempt's conversation ended."""

    ended: str  # "end_turn" | "gave_up" | "max_turns" | "api_error" | "stopped"
    reason: str = ""
    transcript: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0


# The parameters each editor command accepts, and their types (bool is not an int here).
_EDITOR_PARAMS: dict[str, dict[str, type]] = {
    "view": {"path": str, "view_range": list},
    "create": {"path": str, "file_text": str},
    "str_replace": {"path": str, "old_str": str, "new_str": str},
    "insert": {"path": str, "insert_line": int, "insert_text": str, "new_str": str},
}
_TOOL_PARAMS: dict[str, dict[str, type]] = {
    "search": {"pattern": str, "path": str},
    "give_up": {"reason": str, "question": str},
    "run_tests": {},
}
_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list"}


def _check_params(params: dict[str, Any], types: dict[str, type]) -> None:
    for key, kind in types.items():
        value = params.get(key)
        if value is None:
            continue
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ToolError(f"`{key}` must be {_TYPE_NAMES[kind]}, not {type(value).__name__}")
        if isinstance(value, str) and "\0" in value:
            raise ToolError(f"`{key}` contains a NUL byte; refused")


class Toolbox:
    """Runs the model's tool calls. Every read and write asks the path policy; every write
    is journalled first."""

    def __init__(
        self,
        root: Path,
        policy: PathPolicy,
        journal: Journal,
        run_tests: Callable[[], str],
        *,
        view_max_chars: int = VIEW_MAX_CHARS,
        write_max_bytes: int = WRITE_MAX_BYTES,
        search_seconds: float = SEARCH_SECONDS,
        read_only: bool = False,
    ) -> None:
        self.root = root
        self.read_only = read_only  # the reviewer's toolbox: it views, never writes
        self.policy = policy
        self.journal = journal
        self.run_tests = run_tests
        self.view_max_chars = view_max_chars
        self.write_max_bytes = write_max_bytes
        self.search_seconds = search_seconds
        self.gave_up: str | None = None

    def call(self, name: str, params: Any) -> tuple[str, bool]:
        """(result text, is_error) for one tool_use block.

        A call the model got wrong (a wrong type, a NUL byte, a missing parameter), or one
        the file system refuses (permissions, a file where a folder should be), goes back to
        it as an error; it never ends the run.
        """
        try:
            if not isinstance(params, dict):
                raise ToolError("the tool input must be a JSON object")
            if name == "str_replace_based_edit_tool":
                return self._editor(params), False
            if name not in _TOOL_PARAMS:
                return f"unknown tool {str(name)[:100]!r}", True
            _check_params(params, _TOOL_PARAMS[name])
            if name == "search":
                return self._search(params), False
            if name == "run_tests":
                return self.run_tests(), False
            reason = str(params.get("reason") or "").strip() or "no reason given"
            question = str(params.get("question") or "").strip()
            self.gave_up = reason + (f" (question: {question})" if question else "")
            return "Understood; this attempt ends without a fix.", False
        except ToolError as exc:
            return str(exc), True
        except OSError as exc:
            return f"{exc.strerror or exc}: {str(params.get('path'))[:200]}", True
        except (UnicodeError, ValueError) as exc:
            return f"refused: {type(exc).__name__}: {str(exc)[:200]}", True

    # --- the text editor -----------------------------------------------------------------

    def _readable(self, raw: Any) -> tuple[str, Path]:
        if not isinstance(raw, str) or not raw:
            raise ToolError("`path` is required")
        if os.path.normpath(os.path.join(self.root, raw)) == os.path.normpath(self.root):
            return ".", self.root  # the root itself, to list it
        refusal = self.policy.check_read(raw)
        if refusal is not None:
            raise ToolError(f"refused: {refusal}")
        rel = self.policy.relative(raw)
        assert rel is not None  # the policy let it through: inside the root
        return rel, self.root / rel

    def _writable(self, raw: Any) -> tuple[str, Path]:
        if self.read_only:
            raise ToolError("read-only: the reviewer may view files, not change them")
        if not isinstance(raw, str) or not raw:
            raise ToolError("`path` is required")
        refusal = self.policy.check(raw)
        if refusal is not None:
            raise ToolError(f"refused: {refusal}. The file was not changed.")
        rel = self.policy.relative(raw)
        assert rel is not None  # the policy let it through: inside the root
        rel = self.policy.write_target(rel)
        path = self.root / rel
        if path.is_dir():
            raise ToolError(f"{rel}: is a folder; name a file")
        return rel, path

    def _check_size(self, name: str, text: str) -> None:
        size = len(text.encode("utf-8", "surrogateescape"))
        if size > self.write_max_bytes:
            raise ToolError(
                f"refused: `{name}` is {size} bytes, over write_max_bytes "
                f"({self.write_max_bytes}). The file was not changed."
            )

    def _write(self, rel: str, path: Path, text: str, crlf: bool = False) -> None:
        # Undecodable bytes were read as surrogates (surrogateescape) and go back as the
        # same bytes; a CRLF file gets its CRLF line ends back.
        data = (text.replace("\n", "\r\n") if crlf else text).encode("utf-8", "surrogateescape")
        self.journal.save(rel)
        write_atomic(path, data)

    def _editor(self, params: dict[str, Any]) -> str:
        command = params.get("command")
        if not isinstance(command, str) or command not in _EDITOR_PARAMS:
            shown = command if isinstance(command, str) else type(command).__name__
            raise ToolError(
                f"unsupported command {str(shown)[:40]!r}; use view, create, str_replace, insert"
            )
        _check_params(params, _EDITOR_PARAMS[command])
        if command == "view":
            return self._view(params)
        if command == "create":
            text = params.get("file_text")
            if not isinstance(text, str):
                raise ToolError("create needs `file_text`")
            self._check_size("file_text", text)
            rel, path = self._writable(params.get("path"))
            # Overwriting a CRLF file keeps it CRLF, like every other edit.
            crlf = path.is_file() and _read_text(path)[1]
            self._write(rel, path, _lf(text) if crlf else text, crlf)
            return f"Created {rel}."
        if command == "str_replace":
            old = params.get("old_str")
            new = params.get("new_str") or ""
            if not isinstance(old, str) or not old:
                raise ToolError("str_replace needs a non-empty `old_str`")
            self._check_size("new_str", new)
            rel, path = self._writable(params.get("path"))
            text, crlf = self._read(rel, path)
            if crlf:
                old, new = _lf(old), _lf(new)
            count = text.count(old)
            if count != 1:
                raise ToolError(
                    f"{rel}: `old_str` occurs {count} times; it must occur exactly once"
                    + (" (include more context)" if count > 1 else "")
                )
            self._write(rel, path, text.replace(old, new, 1), crlf)
            return f"Edited {rel}."
        line = params.get("insert_line")
        new = params.get("insert_text", params.get("new_str"))
        if not isinstance(line, int) or not isinstance(new, str):
            raise ToolError("insert needs `insert_line` (int) and `insert_text`")
        self._check_size("insert_text", new)
        rel, path = self._writable(params.get("path"))
        text, crlf = self._read(rel, path)
        if crlf:
            new = _lf(new)
        lines = text.splitlines(keepends=True)
        if not 0 <= line <= len(lines):
            raise ToolError(f"{rel}: insert_line {line} is outside 0..{len(lines)}")
        if lines and not lines[-1].endswith("\n") and line == len(lines):
            lines[-1] += "\n"
        lines[line:line] = [new if new.endswith("\n") else new + "\n"]
        self._write(rel, path, "".join(lines), crlf)
        return f"Inserted into {rel} after line {line}."

    def _read(self, rel: str, path: Path) -> tuple[str, bool]:
        if not path.is_file():
            raise ToolError(f"{rel}: no such file")
        return _read_text(path)

    def _view(self, params: dict[str, Any]) -> str:
        rel, path = self._readable(params.get("path", "."))
        if path.is_dir():
            return self._listing(path)
        text, _ = self._read(rel, path)
        lines = text.splitlines()
        start, end = 1, len(lines)
        view_range = params.get("view_range")
        if view_range is not None:
            if not (
                isinstance(view_range, list)
                and len(view_range) == 2
                and all(isinstance(n, int) and not isinstance(n, bool) for n in view_range)
            ):
                raise ToolError("`view_range` must be [start, end] line numbers; end -1 = last")
            start = max(1, view_range[0])
            end = len(lines) if view_range[1] == -1 else min(len(lines), view_range[1])
        out: list[str] = []
        size = 0
        n = start
        while n <= end:
            # Undecodable bytes show as U+FFFD; they are kept as they are on every edit.
            shown = f"{n:6}\t{lines[n - 1]}".encode("utf-8", "surrogateescape").decode(
                "utf-8", "replace"
            )
            if size + len(shown) + 1 > self.view_max_chars:
                if not out:  # one line longer than the cap: show its start
                    out.append(shown[: self.view_max_chars])
                    n += 1
                break
            out.append(shown)
            size += len(shown) + 1
            n += 1
        if n <= end:
            shown_to = n - 1
            out.append(
                f"[output capped at view_max_chars ({self.view_max_chars} characters): lines "
                f"{start}-{shown_to} of {len(lines)} shown. Ask for the rest with "
                f'"view_range": [{shown_to + 1}, {min(end, shown_to + (shown_to - start + 1))}]'
                ", or find lines with the search tool.]"
            )
        return "\n".join(out)

    def _listing(self, path: Path) -> str:
        entries = []
        for dirpath, dirnames, filenames in os.walk(path):
            depth = Path(dirpath).relative_to(path).parts
            dirnames[:] = sorted(
                d
                for d in dirnames
                if not d.startswith(".")
                and d != "__pycache__"
                and len(depth) < 1
                and self.policy.check_read(os.path.join(dirpath, d)) is None
            )
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                # A secret, or a symlink out of the root, is not even named.
                if not name.startswith(".") and self.policy.check_read(full) is None:
                    entries.append(Path(full).relative_to(self.root).as_posix())
        return "\n".join(entries[:500]) or "(empty)"

    # --- search ----------------------------------------------------------------------------

    def _search(self, params: dict[str, Any]) -> str:
        pattern = params.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise ToolError("search needs a non-empty `pattern`")
        if len(pattern) > 1000:
            raise ToolError("`pattern` is longer than 1000 characters")
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as exc:
            raise ToolError(f"bad regular expression: {exc}") from None
        glob = params.get("path")
        spec = None
        if glob:
            from pytest_agentic.tasks import compile_scope

            try:
                spec = compile_scope([glob], "`path`")
            except Exception as exc:  # an AgenticError naming the bad glob
                raise ToolError(str(exc)) from None
        files, skipped = self._search_files(spec)
        if not files:
            return "no readable files match `path`" if glob else "no readable files"
        # Matching runs in a child process killed at the time limit: Python's `re` cannot
        # be stopped from another thread, and a pattern like `(a+)+$` never ends on a
        # longish line of a's.
        job = {
            "pattern": pattern,
            "files": files,
            "line_chars": SEARCH_LINE_CHARS,
            "max": SEARCH_MAX_RESULTS,
            "result_chars": SEARCH_RESULT_CHARS,
        }
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "-S", "-c", _SEARCH_CHILD],
                input=json.dumps(job),
                capture_output=True,
                text=True,
                encoding="utf-8",
                errors="replace",
                timeout=self.search_seconds,
            )
        except subprocess.TimeoutExpired:
            raise ToolError(
                f"search stopped after {self.search_seconds:g} s (the pattern backtracks too "
                "much, or too many files): use a simpler pattern or narrow `path`"
            ) from None
        if proc.returncode != 0:
            raise ToolError(f"search failed: {proc.stderr.strip().splitlines()[-1:]}")
        found = proc.stdout.splitlines()
        out = found[:SEARCH_MAX_RESULTS]
        if len(found) > SEARCH_MAX_RESULTS:
            out.append(f"[capped at {SEARCH_MAX_RESULTS} matches: narrow the pattern or `path`]")
        if skipped:
            out.append(f"[{skipped} file(s) over {SEARCH_MAX_FILE_BYTES} bytes not searched]")
        text = "\n".join(out) or "no matches"
        return text[: self.view_max_chars]

    def _search_files(self, spec: Any) -> tuple[list[list[str]], int]:
        files: list[list[str]] = []
        skipped = 0
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(
                d for d in dirnames if not d.startswith(".") and d not in SEARCH_SKIP_DIRS
            )
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, self.root).replace(os.sep, "/")
                if spec is not None and not spec.match_file(rel):
                    continue
                if self.policy.check_read(rel) is not None:
                    continue
                try:
                    size = os.stat(full).st_size
                except OSError:
                    continue
                if size > SEARCH_MAX_FILE_BYTES:
                    skipped += 1
                    continue
                files.append([rel, os.path.realpath(full)])
        return files, skipped


_SEARCH_CHILD = """\
import json, re, sys
job = json.load(sys.stdin)
regex = re.compile(job["pattern"])
limit, cut, found = job["line_chars"], job["result_chars"], 0
for rel, path in job["files"]:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        continue
    if b"\\0" in data[:8192]:
        continue  # binary
    for n, line in enumerate(data.decode("utf-8", "replace").split("\\n"), 1):
        line = line.rstrip("\\r")
        if regex.search(line[:limit]):
            sys.stdout.write(f"{rel}:{n}:{line[:cut]}\\n")
            found += 1
            if found > job["max"]:
                sys.exit(0)
"""


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n")


def _read_text(path: Path) -> tuple[str, bool]:
    """A file's text with LF line ends, and whether it was all CRLF.

    Decoded with surrogateescape: a stray Latin-1 byte elsewhere in the file survives an
    edit byte for byte instead of making the file uneditable or being replaced by U+FFFD.
    A file that mixes CRLF and LF keeps its bytes as they are (no conversion either way).
    """
    text = path.read_bytes().decode("utf-8", "surrogateescape")
    crlf = "\r\n" in text and text.count("\r\n") == text.count("\n")
    return (_lf(text) if crlf else text), crlf


class ToolError(Exception):
    """A tool call that cannot be done; goes back to the model as `is_error: true`."""


def _with_cache_point(message: dict[str, Any]) -> dict[str, Any]:
    content = [dict(block) for block in message["content"]]
    content[-1]["cache_control"] = {"type": "ephemeral"}
    return {**message, "content": content}


def _capped(value: Any, limit: int, head: bool = True) -> Any:
    """`value` with every string longer than `limit` cut (to its first `limit` characters,
    or with `head=False` to nothing), saying how much was left out."""
    if isinstance(value, str):
        if len(value) <= limit:
            return value
        if not head:
            return f"[{len(value)} characters, not kept: over the size limit]"
        return value[:limit] + f"[... {len(value) - limit} more characters not kept]"
    if isinstance(value, dict):
        return {k: _capped(v, limit, head) for k, v in value.items()}
    if isinstance(value, list):
        return [_capped(v, limit, head) for v in value]
    return value


def error_line(exc: BaseException) -> str:
    """An API error as one readable line: status, error type and message, never a dict."""
    status = getattr(exc, "status_code", None)
    body = getattr(exc, "body", None)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        kind = error.get("type")
        detail = str(error["message"]) + (f" ({kind})" if kind else "")
    else:
        detail = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        cause = exc.__cause__
        if status is None and cause is not None and str(cause):
            detail = f"{detail} ({type(cause).__name__}: {cause})"
    line = " ".join(str(detail).split())[:300]
    return f"API error {status}: {line}" if status else f"API error: {line}"


def fatal_error(exc: BaseException, client: Any, model: str) -> FatalApiError | None:
    """The run-stopping form of `exc`, or None when the attempt alone fails (or `exc` is
    no API error at all)."""
    import anthropic

    if not isinstance(exc, anthropic.APIError):
        return None
    line = error_line(exc)
    if isinstance(exc, (anthropic.AuthenticationError, anthropic.PermissionDeniedError)):
        return FatalApiError(f"the API refused the key ({line}): check ANTHROPIC_API_KEY")
    if isinstance(exc, anthropic.NotFoundError):
        return FatalApiError(
            f"model {model!r} or the API endpoint was not found ({line}): check --agent-model "
            "(`model`) and ANTHROPIC_BASE_URL"
        )
    if isinstance(exc, anthropic.APIConnectionError) and not isinstance(
        exc, anthropic.APITimeoutError
    ):
        # The SDK has already retried; every later request would fail the same way.
        where = getattr(client, "base_url", "the API")
        return FatalApiError(
            f"cannot reach {where} ({line}): check the network, proxy settings and "
            "ANTHROPIC_BASE_URL"
        )
    return None


def _estimate_tokens(data: Any) -> int:
    # About 3 characters per token: fewer than the tokenizer's usual 3.5-4, so the estimate
    # errs towards stopping early rather than overspending.
    return len(json.dumps(data, ensure_ascii=False, default=str)) // 3 + 1


def converse(
    client: Any,
    *,
    model: str,
    first_message: list[dict[str, Any]],
    toolbox: Toolbox,
    max_turns: int,
    usage: Usage,
    api_error: type[BaseException] | None = None,
    budget: Budget | None = None,
    on_event: Callable[..., None] | None = None,
) -> Conversation:
    """One attempt: ask, run the tools the model calls, until it ends its turn or gives up.

    Cache points: the system prompt (with the tools before it), the end of the first user
    message (the stable context, identical across attempts), and the newest message of each
    turn, so turn n reads turn n-1's prefix from the cache. `on_event(kind, **fields)` hears
    the model's text (`text`) and each tool call once it is done (`tool`), for live progress.

    Raises BudgetSpent before a request the budget does not allow, and FatalApiError when
    the API refuses the key or cannot be reached: both end the run, not just the attempt.
    """
    import anthropic

    budget = budget or Budget(usage)
    system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": first_message}]
    transcript: list[dict[str, Any]] = [{"role": "user", "content": first_message}]
    last_input = last_output = 0
    new_since_last: list[Any] = [system, TOOLS, messages]
    for turn in range(max_turns):
        request = messages[:-1] + [_with_cache_point(messages[-1])] if turn else messages
        try:
            ticket = budget.admit(
                *budget.estimate(
                    last_input + last_output + _estimate_tokens(new_since_last),
                    last_output or 1024,
                )
            )
        except BudgetSpent as exc:
            exc.requests = turn
            raise
        response = None
        try:
            response = client.messages.create(
                model=model, max_tokens=MAX_TOKENS, system=system, tools=TOOLS, messages=request
            )
        except anthropic.APIError as exc:
            fatal = fatal_error(exc, client, model)
            if fatal is not None:
                raise fatal from None
            return Conversation("api_error", error_line(exc), transcript, turn + 1)
        finally:
            budget.settle(ticket, response.usage if response is not None else None)
            if response is not None and usage is not budget.usage:
                usage.add(response.usage)  # the caller's own count (one failure's tokens)
        used = response.usage
        last_input = sum(
            getattr(used, name, 0) or 0
            for name in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
        )
        last_output = getattr(used, "output_tokens", 0) or 0
        # A huge tool input (a 50 MB `create`) is refused by the tool; it is not resent on
        # every later turn nor saved whole in the transcript.
        assistant = _capped(
            [block.to_dict() for block in response.content], toolbox.write_max_bytes, head=False
        )
        messages.append({"role": "assistant", "content": assistant})
        transcript.append(
            {"role": "assistant", "content": _capped(assistant, TRANSCRIPT_MAX_CHARS)}
        )
        calls = [block for block in response.content if block.type == "tool_use"]
        if on_event is not None:
            said = " ".join(b.text for b in response.content if b.type == "text").strip()
            if said:
                on_event("text", text=said)
        if not calls:
            ended = (
                "end_turn" if response.stop_reason in ("end_turn", "stop_sequence") else "stopped"
            )
            return Conversation(ended, str(response.stop_reason), transcript, turn + 1)
        results = []
        for call in calls:
            text, is_error = toolbox.call(call.name, call.input)
            if on_event is not None:
                params = call.input if isinstance(call.input, dict) else {}
                on_event("tool", name=call.name, input=params, result=text, is_error=is_error)
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": call.id,
                "content": text,
            }
            if is_error:
                result["is_error"] = True
            results.append(result)
        messages.append({"role": "user", "content": results})
        transcript.append({"role": "user", "content": _capped(results, TRANSCRIPT_MAX_CHARS)})
        new_since_last = [assistant, results]
        if toolbox.gave_up is not None:
            return Conversation("gave_up", toolbox.gave_up, transcript, turn + 1)
    return Conversation(
        "max_turns", f"no end of turn after {max_turns} turns", transcript, max_turns
    )
