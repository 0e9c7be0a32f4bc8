"""The reviewer: a second conversation that approves or rejects a fix the tests already passed.

Its own request thread (never the fixing conversation's), `review_model` (default: the fix
model), read-only tools (view, and search where the toolbox has it) and one custom tool,
`submit_review`, whose call ends the review. A review that cannot be had (an API error, no
`submit_review` within its turns) means the fix is not kept: an unreviewed fix is not a fix.
The request loop mirrors `agent.converse` (same client, `Usage` and cache points).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_agentic import agent
from pytest_agentic.agent import EDITOR_TOOL, MAX_TOKENS, Toolbox, Usage, _with_cache_point
from pytest_agentic.context import read_lines
from pytest_agentic.jobs import Job, Run, _Client, _EditLog
from pytest_agentic.report import write_transcript
from pytest_agentic.sandbox import Workspace
from pytest_agentic.validate import FileChange, Verdict, assertion_literals, special_cases

REVIEW_TURNS = 12
DIFF_LIMIT = 20_000
OUTPUT_LIMIT = 4_000

SUBMIT_REVIEW_TOOL = {
    "name": "submit_review",
    "description": (
        "Give your verdict on the change and end the review. `approve` keeps the fix; "
        "`reject` reverts it, and your reason is passed word for word to the engineer's next "
        "attempt, so say concretely what is wrong and what a good fix would do instead."
    ),
    "input_schema": {
        "type": "object",
        "properties": {
            "verdict": {"type": "string", "enum": ["approve", "reject"]},
            "reason": {"type": "string", "description": "one paragraph"},
        },
        "required": ["verdict", "reason"],
    },
}

SYSTEM = """\
You review a change another engineer made to fix failing Python tests. The failing tests now \
pass, the tests that passed before still pass, and the project's checks pass. Decide whether \
the change is a real fix that a senior engineer would merge. Reject it when:
- it special-cases the test's inputs or expected values (branches on the literals the test \
uses, hard-coded results, detecting that it runs under a test) instead of fixing the logic;
- it weakens a check: removes validation, swallows exceptions, loosens a comparison, skips work \
the code should do, or changes behaviour other callers rely on;
- it creeps in scope: changes unrelated to the failure, refactoring, reformatting, features;
- it invents functions, methods, constants, parameters or APIs that do not exist in the \
project or its dependencies, or calls them wrongly;
- it is over-engineered: would a senior engineer call this overcomplicated for the bug?
You may view files with str_replace_based_edit_tool (read-only: view only; paths relative to \
the repository root) to check callers and definitions. End the review by calling \
submit_review exactly once with verdict "approve" or "reject" and a one-paragraph reason. \
When you reject, say what is wrong and what a good fix would do instead.
"""


@dataclass(frozen=True)
class Review:
    """A review's verdict and its conversation, for the transcript."""

    verdict: Verdict
    transcript: list[dict[str, Any]] = field(default_factory=list)


def review_message(
    failing: str, diff: str, rerun_output: str, flags: Sequence[str]
) -> list[dict[str, Any]]:
    """What the reviewer is shown: the failing tests (as the fixer saw them), the diff, the
    re-run's output and the tamper check's flags."""
    parts = [
        "## The failing tests and their context (as the engineer saw them)",
        failing,
        "## The change (unified diff)",
        "```diff\n" + diff[-DIFF_LIMIT:] + "\n```",
        "## Re-run of the tests with the change",
        "```\n" + rerun_output[-OUTPUT_LIMIT:] + "\n```",
        "## Flags from the automatic checks",
        "\n".join(f"- {flag}" for flag in flags)
        or "- none (no new branch compares with a literal from the failing test's assertions)",
        "\nReview the change, then call submit_review.",
    ]
    return [{"type": "text", "text": "\n".join(parts)}]


def _tools(toolbox: Toolbox) -> list[dict[str, Any]]:
    # `search` arrives with the hardened toolbox; offer it once the toolbox has it.
    search = getattr(agent, "SEARCH_TOOL", None)
    return [EDITOR_TOOL, *([search] if search else []), SUBMIT_REVIEW_TOOL]


def _submitted(params: dict[str, Any]) -> tuple[str, str] | str:
    """(verdict, reason), or why the call is malformed."""
    verdict = params.get("verdict")
    reason = params.get("reason")
    if verdict not in ("approve", "reject"):
        return '`verdict` must be "approve" or "reject"'
    if not isinstance(reason, str) or not reason.strip():
        return "`reason` must be a non-empty paragraph"
    return str(verdict), reason.strip()


def review(
    client: Any,
    *,
    model: str,
    message: list[dict[str, Any]],
    toolbox: Toolbox,
    usage: Usage,
    api_error: type[BaseException],
    max_turns: int = REVIEW_TURNS,
) -> Review:
    """Run the review conversation until `submit_review` is called (or it cannot be had)."""
    system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    tools = _tools(toolbox)
    first = [*message[:-1], {**message[-1], "cache_control": {"type": "ephemeral"}}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": first}]
    transcript: list[dict[str, Any]] = [{"role": "user", "content": first}]

    def not_had(why: str) -> Review:
        return Review(
            Verdict("review", False, f"no review: {why}", "The change could not be reviewed."),
            transcript,
        )

    nudged = False
    for turn in range(max_turns):
        request = messages[:-1] + [_with_cache_point(messages[-1])] if turn else messages
        try:
            response = client.messages.create(
                model=model, max_tokens=MAX_TOKENS, system=system, tools=tools, messages=request
            )
        except api_error as exc:
            status = getattr(exc, "status_code", None)
            detail = (getattr(exc, "message", None) or str(exc)).splitlines()[0]
            return not_had(f"API error {status}: {detail}" if status else f"API error: {detail}")
        usage.add(response.usage)
        assistant = [block.to_dict() for block in response.content]
        messages.append({"role": "assistant", "content": assistant})
        transcript.append({"role": "assistant", "content": assistant})
        calls = [block for block in response.content if block.type == "tool_use"]
        results: list[dict[str, Any]] = []
        for call in calls:
            params = dict(call.input or {})
            if call.name == "submit_review":
                answer = _submitted(params)
                if isinstance(answer, tuple):
                    verdict, reason = answer
                    transcript.append({"role": "review", "verdict": verdict, "reason": reason})
                    if verdict == "approve":
                        return Review(Verdict("review", True, "approved: " + reason), transcript)
                    one_line = "rejected by the reviewer: " + " ".join(reason.split())
                    return Review(Verdict("review", False, one_line, reason), transcript)
                text, is_error = answer, True
            else:
                text, is_error = toolbox.call(call.name, params)
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": call.id}
            result["content"] = text
            if is_error:
                result["is_error"] = True
            results.append(result)
        if not calls:
            # An answer in prose: ask once for the tool call the verdict is read from.
            if nudged:
                return not_had("the reviewer answered without calling submit_review")
            nudged = True
            results = [{"type": "text", "text": "Give your verdict by calling submit_review."}]
        messages.append({"role": "user", "content": results})
        transcript.append({"role": "user", "content": results})
    return not_had(f"no submit_review call within {max_turns} turns")


def review_attempt(
    run: Run,
    job: Job,
    ws: Workspace,
    patch: str,
    changes: list[FileChange],
    output: str,
    checks: list[Verdict],
) -> Verdict:
    """The gate's last check for one attempt (`attempt.gate`): the reviewer's conversation, on
    its own thread of requests, with read-only tools rooted at the attempt's workspace."""
    import anthropic

    literals: set[object] = set()
    for failure in job.failures:
        lines = read_lines(ws.path, failure.path) if failure.path else None
        if lines is not None:
            literals |= assertion_literals("\n".join(lines), failure.lineno)
    ran = "\n".join(f"{c.check}: {c.reason}" for c in checks)
    message = review_message(
        job.context[0]["text"] if job.context else "\n".join(job.nodeids),
        patch,
        f"{ran}\n{output}",
        special_cases(changes, literals),
    )
    toolbox = Toolbox(
        ws.path,
        # The reviewer reads under the same read policy as the agent: no secret in its prompt.
        run.settings.agent_policy(ws.path),
        _EditLog(ws.path, "review"),
        lambda: "",
        read_only=True,
    )
    usage = Usage()
    try:
        outcome = review(
            _Client(run),
            model=run.settings.review_model or run.settings.model,
            message=message,
            toolbox=toolbox,
            usage=usage,
            api_error=anthropic.APIError,
        )
    finally:
        run.add_usage(usage)
        job.usage.add(usage)  # a review's tokens are its failure's too
    if run.run_dir is not None:
        write_transcript(
            run.run_dir, job.index, job.nodeids[0], job.attempts, outcome.transcript, "review"
        )
    return outcome.verdict
