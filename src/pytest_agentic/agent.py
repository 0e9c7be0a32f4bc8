"""The conversation with the model: the prompt, the tools, and one attempt's tool-use loop.

The loop is a plain `client.messages.create` loop rather than the SDK's beta tool runner: the
runner continues conversations through server-side threads by default, which the API refuses
together with `cache_control`, and we want prompt caching to hit on turns 2..n. Retries with
backoff (429, 5xx, 529 overloaded, honouring retry-after) are the SDK's own (`max_retries`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
TOOLS = [EDITOR_TOOL, RUN_TESTS_TOOL, GIVE_UP_TOOL]

SYSTEM = """\
You fix failing Python tests by changing the code under test, inside a real repository.
- Use str_replace_based_edit_tool to view and edit files. Paths are relative to the \
repository root.
- The first message already shows, whole and with line numbers, the code the failing test \
reaches; it ends with a list of what was shown. Do not view those again. To read more, view \
only the lines you need with view_range (or use search, when you have that tool), not whole files.
- Test files are read-only to you: fix the code, never the tests, their assertions, or \
their skips. Some paths are outside what you may change; an edit there comes back as an \
error saying why. Do not try to work around it.
- Make the smallest change that fixes the cause. Do not reformat or refactor unrelated code.
- run_tests re-runs the failing tests. When you end your turn, the tests are re-run and \
only a passing run keeps your change; a failing one reverts it.
- If the failure cannot be fixed inside the allowed files, call give_up with the reason.
"""


@dataclass
class Usage:
    """Token totals, as the API reports them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0

    def add(self, usage: Any) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + (getattr(usage, name, 0) or 0))

    @property
    def total(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_read_input_tokens
            + self.cache_creation_input_tokens
        )


@dataclass(frozen=True)
class Conversation:
    """How one attempt's conversation ended."""

    ended: str  # "end_turn" | "gave_up" | "max_turns" | "api_error" | "stopped"
    reason: str = ""
    transcript: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0


class Toolbox:
    """Runs the model's tool calls. Every write asks the path policy and is journalled first."""

    def __init__(
        self,
        root: Path,
        policy: PathPolicy,
        journal: Journal,
        run_tests: Callable[[], str],
        read_only: bool = False,
    ) -> None:
        self.root = root
        self.read_only = read_only  # the reviewer's toolbox: it views, never writes
        self.policy = policy
        self.journal = journal
        self.run_tests = run_tests
        self.gave_up: str | None = None

    def call(self, name: str, params: dict[str, Any]) -> tuple[str, bool]:
        """(result text, is_error) for one tool_use block.

        A call the model got wrong, or one the file system refuses (permissions, a file
        where a folder should be), goes back to it as an error; it never ends the run.
        """
        try:
            if name == "str_replace_based_edit_tool":
                return self._editor(params), False
            if name == "run_tests":
                return self.run_tests(), False
            if name == "give_up":
                reason = str(params.get("reason", "")).strip() or "no reason given"
                question = str(params.get("question", "")).strip()
                self.gave_up = reason + (f" (question: {question})" if question else "")
                return "Understood; this attempt ends without a fix.", False
            return f"unknown tool {name!r}", True
        except ToolError as exc:
            return str(exc), True
        except OSError as exc:
            return f"{exc.strerror or exc}: {params.get('path')}", True

    # --- the text editor -----------------------------------------------------------------

    def _readable(self, raw: Any) -> tuple[str, Path]:
        if not isinstance(raw, str) or not raw:
            raise ToolError("`path` is required")
        rel = self.policy.relative(raw)
        if rel is None and os.path.normpath(os.path.join(self.root, raw)) == str(self.root):
            return ".", self.root  # the root itself, to list it
        if rel is None:
            raise ToolError(f"{raw}: outside the repository root; paths are relative to it")
        if ".git" in rel.split("/"):
            raise ToolError(f"{rel}: inside .git; not available")
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

    def _write(self, rel: str, path: Path, text: str) -> None:
        self.journal.save(rel)
        write_atomic(path, text)

    def _editor(self, params: dict[str, Any]) -> str:
        command = params.get("command")
        if command == "view":
            return self._view(params)
        if command == "create":
            rel, path = self._writable(params.get("path"))
            text = params.get("file_text")
            if not isinstance(text, str):
                raise ToolError("create needs `file_text`")
            self._write(rel, path, text)
            return f"Created {rel}."
        if command == "str_replace":
            rel, path = self._writable(params.get("path"))
            old = params.get("old_str")
            new = params.get("new_str") or ""
            if not isinstance(old, str) or not old:
                raise ToolError("str_replace needs a non-empty `old_str`")
            text = self._read(rel, path)
            count = text.count(old)
            if count != 1:
                raise ToolError(
                    f"{rel}: `old_str` occurs {count} times; it must occur exactly once"
                    + (" (include more context)" if count > 1 else "")
                )
            self._write(rel, path, text.replace(old, str(new), 1))
            return f"Edited {rel}."
        if command == "insert":
            rel, path = self._writable(params.get("path"))
            line = params.get("insert_line")
            new = params.get("insert_text", params.get("new_str"))
            if not isinstance(line, int) or not isinstance(new, str):
                raise ToolError("insert needs `insert_line` (int) and `insert_text`")
            lines = self._read(rel, path).splitlines(keepends=True)
            if not 0 <= line <= len(lines):
                raise ToolError(f"{rel}: insert_line {line} is outside 0..{len(lines)}")
            if lines and not lines[-1].endswith("\n") and line == len(lines):
                lines[-1] += "\n"
            lines[line:line] = [new if new.endswith("\n") else new + "\n"]
            self._write(rel, path, "".join(lines))
            return f"Inserted into {rel} after line {line}."
        raise ToolError(f"unsupported command {command!r}; use view, create, str_replace, insert")

    def _read(self, rel: str, path: Path) -> str:
        if not path.is_file():
            raise ToolError(f"{rel}: no such file")
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ToolError(f"{rel}: not a UTF-8 text file") from None

    def _view(self, params: dict[str, Any]) -> str:
        rel, path = self._readable(params.get("path", "."))
        if path.is_dir():
            entries = []
            for dirpath, dirnames, filenames in os.walk(path):
                depth = Path(dirpath).relative_to(path).parts
                dirnames[:] = sorted(
                    d
                    for d in dirnames
                    if not d.startswith(".") and d != "__pycache__" and len(depth) < 1
                )
                for name in sorted(filenames):
                    if not name.startswith("."):
                        entries.append((Path(dirpath) / name).relative_to(self.root).as_posix())
            return "\n".join(entries[:500]) or "(empty)"
        text = self._read(rel, path)
        lines = text.splitlines()
        start, end = 1, len(lines)
        view_range = params.get("view_range")
        if view_range is not None:
            if not (
                isinstance(view_range, list)
                and len(view_range) == 2
                and all(isinstance(n, int) for n in view_range)
            ):
                raise ToolError("`view_range` must be [start, end] line numbers; end -1 = last")
            start = max(1, view_range[0])
            end = len(lines) if view_range[1] == -1 else min(len(lines), view_range[1])
        return "\n".join(f"{n:6}\t{lines[n - 1]}" for n in range(start, end + 1))


class ToolError(Exception):
    """A tool call that cannot be done; goes back to the model as `is_error: true`."""


def _with_cache_point(message: dict[str, Any]) -> dict[str, Any]:
    content = [dict(block) for block in message["content"]]
    content[-1]["cache_control"] = {"type": "ephemeral"}
    return {**message, "content": content}


def converse(
    client: Any,
    *,
    model: str,
    first_message: list[dict[str, Any]],
    toolbox: Toolbox,
    max_turns: int,
    usage: Usage,
    api_error: type[BaseException],
    on_event: Callable[..., None] | None = None,
) -> Conversation:
    """One attempt: ask, run the tools the model calls, until it ends its turn or gives up.

    Cache points: the system prompt (with the tools before it), the end of the first user
    message (the stable context, identical across attempts), and the newest message of each
    turn, so turn n reads turn n-1's prefix from the cache. `on_event(kind, **fields)` hears
    the model's text (`text`) and each tool call once it is done (`tool`), for live progress.
    """
    system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": first_message}]
    transcript: list[dict[str, Any]] = [{"role": "user", "content": first_message}]
    for turn in range(max_turns):
        request = messages[:-1] + [_with_cache_point(messages[-1])] if turn else messages
        try:
            response = client.messages.create(
                model=model, max_tokens=MAX_TOKENS, system=system, tools=TOOLS, messages=request
            )
        except api_error as exc:
            status = getattr(exc, "status_code", None)
            detail = getattr(exc, "message", None) or str(exc)
            reason = f"API error {status}: {detail}" if status else f"API error: {detail}"
            return Conversation("api_error", reason.splitlines()[0], transcript, turn + 1)
        usage.add(response.usage)
        assistant = [block.to_dict() for block in response.content]
        messages.append({"role": "assistant", "content": assistant})
        transcript.append({"role": "assistant", "content": assistant})
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
            params = dict(call.input or {})
            text, is_error = toolbox.call(call.name, params)
            if on_event is not None:
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
        transcript.append({"role": "user", "content": results})
        if toolbox.gave_up is not None:
            return Conversation("gave_up", toolbox.gave_up, transcript, turn + 1)
    return Conversation(
        "max_turns", f"no end of turn after {max_turns} turns", transcript, max_turns
    )
