"""Live progress of a fix run: one short line per event that matters, through pytest's writer.

The fixer reports what happens as `on_event(kind, **fields)`; `LiveProgress` turns each event
into a line on pytest's own terminal writer (so `-p no:terminal`, `--capture` and pytester all
behave as they do for pytest's own output). Kinds and their fields:

- `confirm`   count                                  the re-run that confirms failures
- `confirmed` confirmed, flaky (list of node ids)
- `attempt`   nodeid, index, total, attempt, max_attempts
- `tool`      nodeid, index, total, name, input, result, is_error   one tool call, done
- `text`      nodeid, index, total, text             the model's words between tool calls (-v)
- `judge`     nodeid, index, total                   the model ended its turn: re-running
- `rejected`  nodeid, index, total, reason           an attempt was not kept, and why
- `verdict`   nodeid, index, total, outcome, reason, attempts, fixed_by
- `commit`    nodeid, sha  | `note` text             anything else worth one line

Unknown kinds and missing fields are ignored: the fixer may grow events before this does.
`-q` (verbosity < 0) shows verdicts only; `-v` adds the model's short text. On a terminal the
tool calls of the current attempt replace each other on one line; elsewhere (CI logs, pipes)
every line stays. Parallel workers call from threads: writes are serialised, and each line
names its failure.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

TEXT_CHARS = 120

# pytest's last line: "1 failed, 2 passed in 0.12s" (with -q no `=` frame around it).
_SUMMARY = re.compile(
    r"((?:\d+ (?:failed|passed|errors?|skipped|xfailed|xpassed|deselected|warnings?)"
    r"(?:, )?)+) in [\d.]+s"
)
_NO_TESTS = re.compile(r"no tests ran")


def short(text: str, limit: int = TEXT_CHARS) -> str:
    """The first line of `text`, at most `limit` characters."""
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def parse_refusal(result: str, params: Mapping[str, Any] | None = None) -> tuple[str, str] | None:
    """(path, reason) when a tool result says the path policy refused the call, else None.

    The toolbox words a refusal `refused: <path>: <reason>. The file was not changed.`
    (the path policy's `Refusal.__str__` inside); that text is the contract with the model,
    so it is the one place to read refusals from, whoever raised them.
    """
    text = str(result).strip()
    if not text.lower().startswith("refused"):
        return None
    body = text.split(":", 1)[1].strip() if ":" in text else ""
    body = body.split(". The file was not changed", 1)[0].rstrip(".")
    raw = (params or {}).get("path")
    path = str(raw) if isinstance(raw, str) else ""
    if ": " in body:
        head, reason = body.split(": ", 1)
        # The policy names the path relative to the root; prefer that spelling. A refusal
        # of a bad input names its error type there instead (`ValueError: embedded null byte`).
        if not head.endswith(("Error", "Exception")):
            path, body = head or path, reason
    return (path or "?", body or "refused")


def tests_summary(result: str) -> str:
    """`1 failed`, `2 passed`: what a run_tests result says, in pytest's own words."""
    for line in reversed(str(result).splitlines()):
        match = _SUMMARY.search(line)
        if match:
            return match.group(1).rstrip(", ")
        if _NO_TESTS.search(line):
            return "no tests ran"
    head = str(result).lstrip()
    if head.startswith("All "):
        return "passed"
    if "timed out" in head:
        return "timed out"
    return "failed" if head else "no output"


def tool_summary(name: str, params: Mapping[str, Any], result: str, is_error: bool) -> str:
    """One tool call in a few words: `view src/a.py`, `run_tests → 1 failed`,
    `refused tests/x.py: protected`."""
    params = params if isinstance(params, Mapping) else {}
    path = params.get("path")
    where = path if isinstance(path, str) and path else "?"
    if is_error:
        refusal = parse_refusal(result, params)
        if refusal is not None:
            # The short form drops the policy's explanation in parentheses.
            return f"refused {refusal[0]}: {refusal[1].split(' (', 1)[0]}"
    if name == "str_replace_based_edit_tool":
        command = params.get("command")
        verb = {
            "view": "view",
            "create": "create",
            "str_replace": "edit",
            "insert": "edit",
            "undo_edit": "undo",
        }.get(command if isinstance(command, str) else "", "editor")
        line = f"{verb} {where}"
    elif name == "run_tests":
        return f"run_tests → {tests_summary(result)}"
    elif name == "give_up":
        return f"give_up: {short(str(params.get('reason', '')), 80)}"
    elif name == "search":
        pattern = params.get("pattern", params.get("query", ""))
        line = f"search {short(str(pattern), 60)!r}"
    elif name == "submit_review":
        return f"review: {params.get('verdict', '?')}: {short(str(params.get('reason', '')), 80)}"
    else:
        line = name
    return f"{line} failed: {short(result, 80)}" if is_error else line


def verdict_text(
    outcome: str,
    *,
    attempts: int = 0,
    reason: str = "",
    fixed_by: str = "",
    dry_run: bool = False,
) -> str:
    """How a failure ended, in words (shared by the live line and the last screen)."""
    if outcome == "fixed":
        if fixed_by:
            return f"fixed by the fix for {fixed_by}"
        verb = "would be fixed (dry run)" if dry_run else "fixed"
        return f"{verb} in {attempts} attempt{'s' if attempts != 1 else ''}"
    if outcome == "flaky":
        return "flaky (passed on re-run, not sent to the model)"
    if outcome == "skipped":
        return f"skipped ({reason or 'not attempted'})"
    return f"not fixed ({reason})" if reason else "not fixed"


def usage_text(tokens: int, cost: float) -> str:
    return f"{tokens:,} tokens, ~${cost:.4f} so far"


class LiveProgress:
    """Writes fix-run events as lines; callable as the fixer's `on_event(kind, **fields)`."""

    def __init__(
        self,
        write: Callable[[str], None],
        *,
        width: int | None = None,
        verbosity: int = 0,
        parallel: bool = False,
        spent: Callable[[], tuple[int, float]] = lambda: (0, 0.0),
        dry_run: bool = False,
    ) -> None:
        self._write = write  # raw text; lines end with "\n"
        self._width = width  # a terminal's width: the current state updates in place
        self.verbosity = verbosity
        self.parallel = parallel
        self.spent = spent
        self.dry_run = dry_run
        self._lock = threading.Lock()
        self._transient = False  # a line that the next one replaces is on screen

    def __call__(self, kind: str, **fields: Any) -> None:
        try:
            line, lasting = self._line(kind, fields)
        except Exception:  # noqa: BLE001 - progress must never break a fix run
            return
        if line is None:
            return
        with self._lock:
            width = self._width
            if width is None:
                self._write(line + "\n")
            elif lasting:
                self._write(("\r" + line.ljust(width) if self._transient else line) + "\n")
                self._transient = False
            else:
                # Cut to the width: a wrapped line could not be replaced by a carriage return.
                self._write("\r" + line[:width].ljust(width))
                self._transient = True

    def close(self) -> None:
        """Leave no half line behind before the summary sections."""
        with self._lock:
            if self._transient and self._width is not None:
                self._write("\r" + " " * self._width + "\r")
            self._transient = False

    # --- wording ----------------------------------------------------------------------------

    def _tag(self, fields: Mapping[str, Any], *, name: bool = False) -> str:
        """`[2/5]`, and the node id when asked or when workers interleave their lines."""
        index, total = fields.get("index"), fields.get("total")
        tag = f"[{index}/{total}]" if index is not None and total is not None else "[-]"
        return f"{tag} {fields.get('nodeid', '')}" if (name or self.parallel) else tag

    def _line(self, kind: str, fields: Mapping[str, Any]) -> tuple[str | None, bool]:
        """(the line, whether it stays on a terminal) for one event; None: not shown."""
        if kind == "verdict":
            text = verdict_text(
                str(fields.get("outcome", "")),
                attempts=int(fields.get("attempts") or 0),
                reason=str(fields.get("reason") or ""),
                fixed_by=str(fields.get("fixed_by") or ""),
                dry_run=self.dry_run,
            )
            line = f"{self._tag(fields, name=True)}: {text}"
            if fields.get("attempts"):
                line += f" · {usage_text(*self.spent())}"
            return line, True
        if self.verbosity < 0:
            return None, False  # -q: verdicts only
        if kind == "confirm":
            n = int(fields.get("count") or 0)
            return f"pytest-agentic: re-running {n} failure{'s' * (n != 1)} to confirm them", True
        if kind == "confirmed":
            flaky = list(fields.get("flaky") or [])
            line = f"pytest-agentic: {fields.get('confirmed', 0)} confirmed"
            if flaky:
                line += f", {len(flaky)} flaky (passed on re-run): {', '.join(flaky)}"
            return line, True
        if kind == "attempt":
            return (
                f"{self._tag(fields, name=True)} attempt "
                f"{fields.get('attempt')}/{fields.get('max_attempts')}",
                True,
            )
        if kind == "tool":
            summary = tool_summary(
                str(fields.get("name", "")),
                fields.get("input") or {},
                str(fields.get("result", "")),
                bool(fields.get("is_error")),
            )
            # Refusals stay on screen even on a terminal: they are what a person acts on.
            return f"{self._tag(fields)}   {summary}", summary.startswith("refused ")
        if kind == "text":
            if self.verbosity < 1 or not str(fields.get("text", "")).strip():
                return None, False
            return f"{self._tag(fields)}   “{short(str(fields['text']))}”", True
        if kind == "rejected":
            return f"{self._tag(fields)}   not kept: {short(str(fields.get('reason', '')))}", True
        if kind == "judge":
            return f"{self._tag(fields)}   re-running the test to judge the attempt", False
        if kind == "commit":
            return f"{self._tag(fields)}   committed {str(fields.get('sha', ''))[:12]}", True
        if kind == "note":
            return f"pytest-agentic: {fields.get('text', '')}", True
        return None, False


def for_config(
    config: Any,
    *,
    spent: Callable[[], tuple[int, float]],
    parallel: bool = False,
    dry_run: bool = False,
) -> LiveProgress:
    """The progress printer for a pytest session: pytest's terminal reporter if any.

    Under xdist only the controller prints (workers have `workerinput`, and their stdout is
    not the user's terminal). Without a terminal reporter (`-p no:terminal`) events are dropped.
    """
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or hasattr(config, "workerinput"):
        return LiveProgress(_discard)
    verbosity = int(config.get_verbosity()) if hasattr(config, "get_verbosity") else 0

    ours = {"open": False}  # the cursor is after a line of ours that the next one replaces

    def write(text: str) -> None:
        # pytest leaves the cursor after the test dots ("tests/x.py F.  [100%]"; with -q
        # only "F.  [100%]", which `ensure_newline` does not know about).
        reporter.ensure_newline()
        if reporter._tw.width_of_current_line and not ours["open"]:
            reporter.write("\n")
        reporter.write(text, flush=True)
        ours["open"] = not text.endswith("\n")

    width = max(20, int(reporter._tw.fullwidth) - 1) if reporter.isatty() else None
    return LiveProgress(
        write, width=width, verbosity=verbosity, parallel=parallel, spent=spent, dry_run=dry_run
    )


def _discard(text: str) -> None:
    return None


class RunEvents:
    """The fix run's events (from worker threads too) as progress lines: each job's node id
    and place, its verdict once it is final, said once per change of its outcome.

    Callable as the fixer's `on_event(kind, **fields)`; `listener` hears every event first.
    A job is duck-typed (`jobs.Job`): this module imports nothing of the fixer's."""

    def __init__(self, listener: Callable[..., None], max_attempts: int) -> None:
        self.listener = listener
        self.max_attempts = max_attempts
        self.progress = LiveProgress(_discard)  # the real one once the session has failures
        self.total = 0  # jobs planned
        self._announced: dict[int, tuple[str, str]] = {}  # job index -> (outcome, reason) shown
        self._announcing = threading.Lock()

    def __call__(self, kind: str, **fields: Any) -> None:
        self.listener(kind, **fields)
        job = fields.pop("job", None)
        if job is None:
            self.progress(kind, **fields)  # confirm, confirmed; others are not shown
            return
        job.heard(kind, fields)
        where = {"nodeid": job.nodeids[0], "index": job.index, "total": self.total}
        if kind == "attempt":
            self.progress(kind, **where, max_attempts=self.max_attempts, **fields)
        elif kind in ("tool", "text", "judge"):
            self.progress(kind, **where, **fields)
        elif kind == "judged":
            verdict = fields.get("verdict")
            if verdict is not None and not verdict.kept:
                self.progress("rejected", **where, reason=verdict.reason)
            if verdict is not None and (
                verdict.final or (not verdict.kept and job.attempts >= self.max_attempts)
            ):
                self.announce(job, final_reason=verdict.reason)
        elif kind in ("integrated", "user_won"):
            self.announce(job)

    def announce(self, job: Any, final_reason: str | None = None) -> None:
        """A job's verdict line(s), once per change of its outcome."""
        outcome = "not_fixed" if final_reason is not None else job.outcome
        reason = final_reason if final_reason is not None else job.reason
        with self._announcing:  # workers announce too
            if self._announced.get(job.index) == (outcome, reason):
                return
            self._announced[job.index] = (outcome, reason)
        for record in job.outcomes():
            self.progress(
                "verdict",
                nodeid=record.nodeid,
                index=job.index,
                total=self.total,
                outcome=outcome,
                reason=reason.replace(f" (question: {job.question})", "")
                if job.question
                else reason,
                attempts=record.attempts if not record.fixed_by else 0,
                fixed_by=record.fixed_by,
            )

    def committed(self, job: Any, problem: str | None) -> None:
        """`--agent-commit`'s line for a kept fix: its commit, or why there is none."""
        nodeid = job.nodeids[0]
        if problem:
            self.progress("note", text=f"{nodeid}: {problem}")
        else:
            self.progress(
                "commit", nodeid=nodeid, index=job.index, total=self.total, sha=job.commit
            )
