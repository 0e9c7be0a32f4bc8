"""What a fix run leaves behind: the terminal section, the JSON report, patches, transcripts."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pytest_agentic.atomic import write_atomic
from pytest_agentic.errors import AgenticError
from pytest_agentic.progress import tool_summary, verdict_text
from pytest_agentic.workspace import ignore_bookkeeping

RUNS_DIR = ".agentic/runs"
MARKDOWN_LIMIT = 60_000  # GitHub refuses a pull request body over 65,536 characters

# US$ per million tokens: input, output, cache read, cache write (5-minute). Published list
# prices; an estimate only, and unknown models are priced as Sonnet.
PRICES = {
    "opus": (5.0, 25.0, 0.50, 6.25),
    "sonnet": (3.0, 15.0, 0.30, 3.75),
    "haiku": (1.0, 5.0, 0.10, 1.25),
}


def estimate_cost(model: str, usage: Mapping[str, int]) -> float:
    """US$ for `usage` tokens of `model` at list prices (an estimate)."""
    family = next((f for f in PRICES if f in model), "sonnet")
    price = PRICES[family]
    return (
        usage.get("input_tokens", 0) * price[0]
        + usage.get("output_tokens", 0) * price[1]
        + usage.get("cache_read_input_tokens", 0) * price[2]
        + usage.get("cache_creation_input_tokens", 0) * price[3]
    ) / 1e6


@dataclass(frozen=True)
class Refused:
    """An edit the path policy refused during a failure's attempts."""

    path: str
    reason: str


@dataclass(frozen=True)
class CheckResult:
    """One check of the validation gate on one attempt (`validate.Verdict` minus feedback)."""

    check: str  # target | regression | tamper | diff_budget | checks | review | ...
    ok: bool
    reason: str


@dataclass(frozen=True)
class AttemptDetail:
    """What the gate said about one attempt: the checks that ran, in order; the first one
    not ok (if any) is what stopped it."""

    attempt: int
    kept: bool
    checks: tuple[CheckResult, ...] = ()

    @property
    def stopped_by(self) -> CheckResult | None:
        return next((c for c in self.checks if not c.ok), None)


@dataclass(frozen=True)
class Outcome:
    """The verdict on one originally failing test."""

    nodeid: str
    outcome: str  # fixed | not_fixed | flaky | skipped
    attempts: int = 0
    files_changed: tuple[str, ...] = ()
    reason: str = ""
    refusals: tuple[Refused, ...] = ()
    question: str = ""  # what the agent asked the user when it gave up
    fixed_by: str = ""  # the node id whose fix also repaired this one
    usage: Mapping[str, int] = field(default_factory=dict)  # this failure's attempts
    patch: str = ""  # the patch file's name in the run folder
    commit: str = ""  # with --agent-commit: the commit that holds the fix
    attempts_detail: tuple[AttemptDetail, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["files_changed"] = list(self.files_changed)
        data["refusals"] = [asdict(r) for r in self.refusals]
        data["usage"] = dict(self.usage)
        data["attempts_detail"] = [
            {**asdict(d), "checks": [asdict(c) for c in d.checks]} for d in self.attempts_detail
        ]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Outcome:
        return cls(
            nodeid=str(data["nodeid"]),
            outcome=str(data["outcome"]),
            attempts=int(data.get("attempts", 0)),
            files_changed=tuple(data.get("files_changed", ())),
            reason=str(data.get("reason", "")),
            refusals=tuple(
                Refused(str(r.get("path", "")), str(r.get("reason", "")))
                for r in data.get("refusals", ())
                if isinstance(r, Mapping)
            ),
            question=str(data.get("question", "")),
            fixed_by=str(data.get("fixed_by", "")),
            usage={k: int(v) for k, v in dict(data.get("usage") or {}).items()},
            patch=str(data.get("patch", "")),
            commit=str(data.get("commit", "")),
            attempts_detail=tuple(
                AttemptDetail(
                    int(d["attempt"]),
                    bool(d["kept"]),
                    tuple(CheckResult(**c) for c in d.get("checks", ())),
                )
                for d in data.get("attempts_detail", ())
                if isinstance(d, Mapping)
            ),
        )


@dataclass
class RunReport:
    outcomes: list[Outcome] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    model: str = ""
    dry_run: bool = False
    interrupted: bool = False
    fatal: str = ""  # an API error that stopped the run (exit 4), one line
    error: str = ""  # an unexpected error that stopped the run (exit 3), one line
    run_dir: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    exit_status: int | None = None  # pytest's, once the fix loop decided it

    def cost(self) -> float:
        return estimate_cost(self.model, self.usage)

    def to_json(self) -> dict[str, Any]:
        return {
            "failures": [o.to_json() for o in self.outcomes],
            "usage": dict(self.usage),
            "model": self.model,
            "estimated_cost_usd": round(self.cost(), 4),
            "dry_run": self.dry_run,
            "interrupted": self.interrupted,
            "stopped": self.fatal,
            "error": self.error,
            "seconds": dict(self.seconds),
            "exit_status": self.exit_status,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], run_dir: Path | None = None) -> RunReport:
        return cls(
            outcomes=[Outcome.from_json(f) for f in data.get("failures", [])],
            usage=dict(data.get("usage") or {}),
            model=str(data.get("model", "")),
            dry_run=bool(data.get("dry_run", False)),
            interrupted=bool(data.get("interrupted", False)),
            run_dir=run_dir,
            seconds=dict(data.get("seconds") or {}),
            exit_status=data.get("exit_status"),
        )

    def verdict(self, o: Outcome) -> str:
        return verdict_text(
            o.outcome,
            attempts=o.attempts,
            reason=o.reason,
            fixed_by=o.fixed_by,
            dry_run=self.dry_run,
        )

    def lines(self) -> list[str]:
        """The terminal section: one line per failure (and what a person should act on under
        it: refused edits, the agent's question), then files, tokens and where the rest is."""
        out = []
        if self.interrupted:
            out.append("interrupted: every file the fixer touched was restored")
        for o in self.outcomes:
            out.append(f"{self.verdict(o)}: {o.nodeid}")
            for refused in o.refusals:
                out.append(f"    refused {refused.path}: {refused.reason}")
            if o.question:
                out.append(f"    the agent asks: {o.question}")
            if o.commit:
                out.append(f"    committed as {o.commit[:12]}")
            elif o.outcome == "fixed" and o.reason:
                out.append(f"    {o.reason}")  # e.g. why it was not committed
            for detail in o.attempts_detail:
                stop = detail.stopped_by
                if stop is not None and not detail.kept:
                    out.append(f"  attempt {detail.attempt} stopped by {stop.check}: {stop.reason}")
        files = sorted({f for o in self.outcomes if o.outcome == "fixed" for f in o.files_changed})
        if files:
            out.append(f"files changed: {', '.join(files)}")
        u = self.usage
        out.append(
            f"tokens: {u.get('input_tokens', 0)} input, {u.get('output_tokens', 0)} output, "
            f"{u.get('cache_read_input_tokens', 0)} cache read, "
            f"{u.get('cache_creation_input_tokens', 0)} cache write; "
            f"estimated cost ${self.cost():.4f}"
        )
        if self.run_dir is not None:
            out.append(f"patches, transcripts and report: {self.run_dir}")
        return out

    def result_line(self) -> str:
        """The last line of the run: the result, and the exit status the shell sees."""
        exit_part = f" — exit {self.exit_status}" if self.exit_status is not None else ""
        if self.interrupted:
            return (
                f"pytest-agentic: interrupted; every file the fixer touched was restored{exit_part}"
            )
        total = len(self.outcomes)
        counts: dict[str, int] = {}
        for o in self.outcomes:
            counts[o.outcome] = counts.get(o.outcome, 0) + 1
        fixed = "would be fixed (dry run)" if self.dry_run else "fixed"
        parts = [f"{counts.get('fixed', 0)} of {total} failure{'s' * (total != 1)} {fixed}"]
        for outcome, words in (
            ("not_fixed", "not fixed"),
            ("flaky", "flaky"),
            ("skipped", "skipped"),
        ):
            if counts.get(outcome):
                parts.append(f"{counts[outcome]} {words}")
        return "pytest-agentic: " + ", ".join(parts) + exit_part

    def markdown(self, limit: int = MARKDOWN_LIMIT) -> str:
        """A pull request body: the result, a table, and per failure its verdict, diff,
        reasons, refused edits, question, tokens and cost. Text that came from the model is
        escaped (no mentions, links or HTML); diffs sit in fences longer than any backtick
        run inside them. The body stays under `limit` characters (GitHub refuses bodies over
        65,536): table rows, then sections, then diffs are cut first-come, with a note."""
        u = self.usage
        foot = [
            "",
            "---",
            f"Model {_md_code(self.model)} · tokens: {u.get('input_tokens', 0):,} input, "
            f"{u.get('output_tokens', 0):,} output, {u.get('cache_read_input_tokens', 0):,} "
            f"cache read, {u.get('cache_creation_input_tokens', 0):,} cache write · estimated "
            f"cost ${self.cost():.4f}",
        ]
        if self.run_dir is not None:
            foot.append(f"Run folder: {_md_code(self.run_dir.name)} (patches and transcripts)")
        whole = "the whole report: `pytest-agentic report`"
        room = limit - _size(foot) - 2 * len(whole) - 200
        body = [f"## {_md_escape(self.result_line())}", ""]
        body += ["| failure | verdict | attempts | tokens | cost |", "|---|---|---|---|---|"]
        rows = 0
        for o in self.outcomes:
            cell = _md_code(o.nodeid).replace("|", "\\|")  # GFM: escape pipes in code spans too
            row = (
                f"| {cell} | {_md_escape(self.verdict(o))} | {o.attempts} "
                f"| {sum(o.usage.values()):,} | ${estimate_cost(self.model, o.usage):.4f} |"
            )
            if _size(body) + len(row) > room // 2:
                break
            body.append(row)
            rows += 1
        if rows < len(self.outcomes):
            body += ["", f"{len(self.outcomes) - rows} more failures not listed; {whole}"]
        shown = 0
        for o in self.outcomes:
            sec = self._section(o)
            if _size(body) + _size(sec) > room:
                break
            diff = self._patch_text(o)
            if diff:
                left = room - _size(body) - _size(sec) - 20
                cut = len(diff) > left
                if cut:
                    diff = diff[: max(0, left)]
                    diff = diff[: diff.rfind("\n") + 1]
                if diff:
                    fence = "`" * max(3, _longest_backticks(diff) + 1)
                    sec += ["", fence + "diff", diff.rstrip("\n"), fence]
                if cut:
                    sec += ["", f"diff cut to fit; the whole patch is {_md_code(o.patch)}"]
            body += sec
            shown += 1
        if shown < len(self.outcomes):
            body += ["", f"{len(self.outcomes) - shown} more failures not shown; {whole}"]
        return "\n".join(body + foot) + "\n"

    def _section(self, o: Outcome) -> list[str]:
        sec = ["", f"### {_md_code(o.nodeid)}", "", f"**{_md_escape(self.verdict(o))}**"]
        if o.files_changed and o.outcome == "fixed":
            sec += ["", "Files: " + ", ".join(_md_code(f) for f in o.files_changed)]
        if o.commit:
            sec += ["", f"Commit: {_md_code(o.commit[:12])}"]
        if o.question:
            sec += ["", "The agent asks:", "", "> " + _md_escape(o.question)]
        if o.refusals:
            sec += ["", "Refused by the path policy:", ""]
            sec += [f"- {_md_code(r.path)}: {_md_escape(r.reason)}" for r in o.refusals]
        return sec

    def _patch_text(self, o: Outcome) -> str:
        if not o.patch or self.run_dir is None:
            return ""
        try:
            return (self.run_dir / o.patch).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


def _size(lines: Sequence[str]) -> int:
    return sum(len(line) + 1 for line in lines)


def _longest_backticks(text: str) -> int:
    return max((len(m) for m in re.findall(r"`+", text)), default=0)


def _md_code(text: str) -> str:
    fence = "`" * (_longest_backticks(text) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_escape(text: str) -> str:
    """Model-written text as plain text in markdown: no HTML, links, images or @mentions."""
    text = " ".join(str(text).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\`*_\[\]#!|~@])", r"\\\1", text)


def new_run_dir(root: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = root / RUNS_DIR
    path = base / stamp
    n = 1
    while path.exists():
        n += 1
        path = base / f"{stamp}-{n}"
    path.mkdir(parents=True)
    ignore_bookkeeping(root, RUNS_DIR + "/")
    return path


def slug(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")[:80]


def write_patch(run_dir: Path, index: int, nodeid: str, diff: str) -> Path:
    path = run_dir / f"{index:02d}-{slug(nodeid)}.patch"
    # The patch carries a file's bytes as they are, undecodable ones as surrogates.
    write_atomic(path, diff.encode("utf-8", "surrogateescape"))
    return path


def write_transcript(
    run_dir: Path, index: int, nodeid: str, attempt: int, data: Sequence[Any], kind: str = ""
) -> None:
    """One conversation; `kind` "review" names an attempt's review conversation."""
    suffix = f"-{kind}" if kind else ""
    path = run_dir / "transcripts" / f"{index:02d}-{slug(nodeid)}-attempt{attempt}{suffix}.json"
    write_atomic(path, json.dumps(list(data), indent=1, ensure_ascii=False, default=str))


def write_report(report: RunReport, paths: Sequence[Path]) -> None:
    text = json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n"
    for path in paths:
        write_atomic(path, text)


def write_section(reporter: Any, report: RunReport, sandbox: str) -> None:
    """The `pytest-agentic fix` section on pytest's terminal reporter, ending in the result
    line; nothing when there is nothing to say. `sandbox` describes where re-runs ran."""
    if not (report.outcomes or report.interrupted or report.fatal or report.error):
        return
    reporter.write_sep("=", "pytest-agentic fix")
    if report.fatal:
        reporter.write_line(f"stopped: {report.fatal}", red=True, bold=True)
    if report.error:
        reporter.write_line(
            f"internal error: {report.error} (the open attempt was restored, verified "
            "fixes kept"
            + (f"; traceback in {report.run_dir / 'error.log'})" if report.run_dir else ")"),
            red=True,
            bold=True,
        )
    for line in report.lines():
        reporter.write_line(line)
    if report.outcomes:
        reporter.write_line(sandbox)
    fixed_all = report.exit_status == 0
    reporter.write_line(report.result_line(), bold=True, green=fixed_all, red=not fixed_all)


def find_run(root: Path, name: str | None = None) -> Path:
    """The run folder `name` (a folder under `.agentic/runs/` or a path), else the newest."""
    base = root / RUNS_DIR
    if name:
        for candidate in (Path(name), base / name):
            if (candidate / "report.json").is_file():
                return candidate
        raise AgenticError(
            f"{name}: no fix run there (no report.json); runs are the folders in {RUNS_DIR}/"
        )
    runs = sorted(p.parent for p in base.glob("*/report.json")) if base.is_dir() else []
    if not runs:
        raise AgenticError(f"no fix runs under {RUNS_DIR}/; run `pytest --agent-fix` first")
    return runs[-1]


def load_run(run_dir: Path) -> RunReport:
    path = run_dir / "report.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return RunReport.from_json(data, run_dir)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AgenticError(f"{path}: not a readable fix report ({exc})") from None


def last_report(root: Path) -> str:
    """A text summary of the newest run under `.agentic/runs/`."""
    try:
        report = load_run(find_run(root))
    except AgenticError as exc:
        return str(exc)
    return "\n".join([*report.lines(), report.result_line()])


# --- transcripts as text -------------------------------------------------------------------

RESULT_LINES = 8
RESULT_CHARS = 800


def transcript_files(report: RunReport, nodeid: str) -> tuple[str, list[Path]]:
    """The transcripts of the failure `nodeid` names (exactly, else as the one failure whose
    node id contains it), oldest attempt first."""
    ids = [o.nodeid for o in report.outcomes]
    matches = [nodeid] if nodeid in ids else [i for i in ids if nodeid in i]
    if len(matches) != 1:
        known = ", ".join(ids) or "none"
        what = "matches several failures" if matches else "is not a failure of this run"
        raise AgenticError(f"{nodeid}: {what}; the run's failures: {known}")
    (chosen,) = matches
    assert report.run_dir is not None
    folder = report.run_dir / "transcripts"
    pattern = re.compile(rf"^\d+-{re.escape(slug(chosen))}-attempt(\d+)\.json$")
    found = [p for p in folder.glob("*.json") if pattern.match(p.name)] if folder.is_dir() else []
    found.sort(key=lambda p: int(pattern.match(p.name).group(1)))  # type: ignore[union-attr]
    return chosen, found


def render_transcript(messages: Sequence[Any]) -> str:
    """A conversation as text: each message's role, its text, tool calls in a few words and
    tool results cut to a few lines."""
    out: list[str] = []
    calls: dict[str, tuple[str, dict[str, Any]]] = {}
    for message in messages:
        if not isinstance(message, dict):
            continue
        out.append(f"--- {message.get('role', '?')}")
        content = message.get("content")
        blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
        for block in blocks:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text":
                out.append(str(block.get("text", "")).rstrip())
            elif kind == "tool_use":
                raw = block.get("input")
                params: dict[str, Any] = raw if isinstance(raw, dict) else {}
                calls[str(block.get("id"))] = (str(block.get("name")), params)
                out.append(f"→ {_call_words(str(block.get('name')), params)}")
            elif kind == "tool_result":
                name, params = calls.get(str(block.get("tool_use_id")), ("?", {}))
                text = _result_text(block.get("content"))
                error = bool(block.get("is_error"))
                words = tool_summary(name, params, text, error)
                plain = not words.startswith("refused") and " failed: " not in words
                head = f"← {words}" + (" (error)" if error and plain else "")
                out.append(head)
                out += ["   " + line for line in _cut(text)]
            elif kind == "thinking":
                out.append("(thinking) " + str(block.get("thinking", "")).rstrip())
    return "\n".join(out) + "\n"


def _call_words(name: str, params: dict[str, Any]) -> str:
    if name == "run_tests":
        return "run_tests"
    words = tool_summary(name, params, "", False)
    if name == "str_replace_based_edit_tool" and params.get("command") in ("str_replace",):
        old, new = str(params.get("old_str", "")), str(params.get("new_str", ""))
        words += f": {len(old.splitlines())} line(s) → {len(new.splitlines())} line(s)"
    return words


def _result_text(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return str(content or "")


def _cut(text: str) -> list[str]:
    lines = text[:RESULT_CHARS].splitlines()
    more = len(text.splitlines()) - RESULT_LINES
    shown = lines[:RESULT_LINES]
    if more > 0 or len(text) > RESULT_CHARS:
        shown.append(f"[... {len(text):,} characters in all]")
    return shown
