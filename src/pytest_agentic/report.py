"""What a fix run leaves behind: the terminal section, the JSON report, patches, transcripts."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pytest_agentic.atomic import write_atomic
from pytest_agentic.workspace import ignore_bookkeeping

RUNS_DIR = ".agentic/runs"

# US$ per million tokens: input, output, cache read, cache write (5-minute). Published list
# prices; an estimate only, and unknown models are priced as Sonnet.
PRICES = {
    "opus": (5.0, 25.0, 0.50, 6.25),
    "sonnet": (3.0, 15.0, 0.30, 3.75),
    "haiku": (1.0, 5.0, 0.10, 1.25),
}


@dataclass(frozen=True)
class Outcome:
    """The verdict on one originally failing test."""

    nodeid: str
    outcome: str  # fixed | not_fixed | flaky | skipped
    attempts: int = 0
    files_changed: tuple[str, ...] = ()
    reason: str = ""


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

    def cost(self) -> float:
        family = next((f for f in PRICES if f in self.model), "sonnet")
        price = PRICES[family]
        u = self.usage
        return (
            u.get("input_tokens", 0) * price[0]
            + u.get("output_tokens", 0) * price[1]
            + u.get("cache_read_input_tokens", 0) * price[2]
            + u.get("cache_creation_input_tokens", 0) * price[3]
        ) / 1e6

    def to_json(self) -> dict[str, Any]:
        return {
            "failures": [
                {**asdict(o), "files_changed": list(o.files_changed)} for o in self.outcomes
            ],
            "usage": dict(self.usage),
            "model": self.model,
            "estimated_cost_usd": round(self.cost(), 4),
            "dry_run": self.dry_run,
            "interrupted": self.interrupted,
            "stopped": self.fatal,
            "error": self.error,
            "seconds": dict(self.seconds),
        }

    def lines(self) -> list[str]:
        """The terminal section, one line per failure, then totals."""
        out = []
        for o in self.outcomes:
            if o.outcome == "fixed":
                n = o.attempts
                verb = "would be fixed (dry run)" if self.dry_run else "fixed"
                out.append(f"{verb} in {n} attempt{'s' if n != 1 else ''}: {o.nodeid}")
            elif o.outcome == "flaky":
                out.append(f"flaky (passed on re-run, not sent to the model): {o.nodeid}")
            elif o.outcome == "skipped":
                out.append(f"skipped ({o.reason}): {o.nodeid}")
            else:
                out.append(f"not fixed ({o.reason}): {o.nodeid}")
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
    run_dir: Path, index: int, nodeid: str, attempt: int, data: Sequence[Any]
) -> None:
    path = run_dir / "transcripts" / f"{index:02d}-{slug(nodeid)}-attempt{attempt}.json"
    write_atomic(path, json.dumps(list(data), indent=1, ensure_ascii=False, default=str))


def write_report(report: RunReport, paths: Sequence[Path]) -> None:
    text = json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n"
    for path in paths:
        write_atomic(path, text)


def last_report(root: Path) -> str:
    """A text summary of the newest run under `.agentic/runs/`."""
    base = root / RUNS_DIR
    runs = sorted(p for p in base.glob("*/report.json")) if base.is_dir() else []
    if not runs:
        return f"no fix runs under {RUNS_DIR}/; run `pytest --agent-fix` first"
    data = json.loads(runs[-1].read_text(encoding="utf-8"))
    report = RunReport(
        outcomes=[
            Outcome(
                f["nodeid"],
                f["outcome"],
                f["attempts"],
                tuple(f["files_changed"]),
                f.get("reason", ""),
            )
            for f in data["failures"]
        ],
        usage=data["usage"],
        model=data.get("model", ""),
        dry_run=data.get("dry_run", False),
        run_dir=runs[-1].parent,
    )
    return "\n".join(report.lines())
