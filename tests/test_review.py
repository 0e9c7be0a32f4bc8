"""The reviewer conversation on its own: the real SDK against the fake Messages API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fake_anthropic import ApiError, FakeAnthropic, approve, done, message, reject, tool_use
from pytest_agentic.agent import Toolbox, Usage
from pytest_agentic.review import SUBMIT_REVIEW_TOOL, review, review_message
from pytest_agentic.scope import PathPolicy
from pytest_agentic.workspace import Journal


@pytest.fixture
def client(fake_anthropic: FakeAnthropic) -> Iterator[Any]:
    import anthropic

    with anthropic.Anthropic(max_retries=0) as sdk:
        yield sdk


def run(client: Any, root: Path, usage: Usage | None = None) -> Any:
    import anthropic

    (root / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    toolbox = Toolbox(
        root, PathPolicy(root, for_agent=True), Journal(root, "r"), lambda: "", read_only=True
    )
    return review(
        client,
        model="claude-sonnet-4-6",
        message=review_message("- t.py::test_add", "--- a/calc.py\n+++ b/calc.py\n", "ok", []),
        toolbox=toolbox,
        usage=usage or Usage(),
        api_error=anthropic.APIError,
        max_turns=4,
    )


def test_approve_and_reject_end_the_review(
    client: Any, fake_anthropic: FakeAnthropic, tmp_path: Path
) -> None:
    fake_anthropic.reply(approve("Fine."))
    usage = Usage()
    ok = run(client, tmp_path, usage)
    assert ok.verdict.ok and ok.verdict.reason == "approved: Fine."
    assert usage.total > 0
    request = fake_anthropic.requests[0]
    assert request.body["tools"][-1] == SUBMIT_REVIEW_TOOL
    assert request.body["model"] == "claude-sonnet-4-6"
    # A one-paragraph reason keeps its words, however they are spaced, in the feedback.
    fake_anthropic.reply(reject("Special-cases\n  the inputs."))
    bad = run(client, tmp_path)
    assert not bad.verdict.ok
    assert bad.verdict.reason == "rejected by the reviewer: Special-cases the inputs."
    assert bad.verdict.feedback == "Special-cases\n  the inputs."
    assert bad.transcript[-1] == {
        "role": "review",
        "verdict": "reject",
        "reason": "Special-cases\n  the inputs.",
    }


def test_a_malformed_verdict_is_a_tool_error_and_the_review_goes_on(
    client: Any, fake_anthropic: FakeAnthropic, tmp_path: Path
) -> None:
    fake_anthropic.reply(
        message(tool_use("submit_review", verdict="maybe", reason="hmm")),
        message(tool_use("submit_review", verdict="approve", reason="   ")),
        approve("Now properly."),
    )
    result = run(client, tmp_path)
    assert result.verdict.ok
    first, second = (r.tool_results()[0] for r in fake_anthropic.requests[1:3])
    assert first["is_error"] and '"approve" or "reject"' in first["content"]
    assert second["is_error"] and "non-empty" in second["content"]


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        ([ApiError(500, "api_error", "down")], "no review: API error 500: "),
        ([done("Looks good to me."), done("Really.")], "no review: the reviewer answered without"),
        (
            [message(tool_use("str_replace_based_edit_tool", command="view", path="calc.py"))] * 4,
            "no review: no submit_review call within 4 turns",
        ),
    ],
    ids=["api-error", "prose-only", "out-of-turns"],
)
def test_a_review_that_cannot_be_had_is_not_an_approval(
    client: Any, fake_anthropic: FakeAnthropic, tmp_path: Path, script: list[Any], reason: str
) -> None:
    fake_anthropic.reply(*script)
    result = run(client, tmp_path)
    assert not result.verdict.ok
    assert result.verdict.reason.startswith(reason)


def test_the_prose_answer_gets_one_nudge(
    client: Any, fake_anthropic: FakeAnthropic, tmp_path: Path
) -> None:
    fake_anthropic.reply(done("Looks good."), approve("Approved after the nudge."))
    assert run(client, tmp_path).verdict.ok
    nudge = fake_anthropic.requests[1].last_user
    assert nudge[0]["text"] == "Give your verdict by calling submit_review."
