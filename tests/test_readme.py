"""README.md stays true: every hook, subcommand and setting is documented."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from pytest_agentic.cli import build_parser
from pytest_agentic.config import KEYS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_hook_id_is_documented() -> None:
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    assert hooks, "no hooks declared"
    for hook in hooks:
        assert f"### `{hook['id']}`" in README, hook["id"]
        assert hook["pass_filenames"] is False, hook["id"]


def test_every_setting_is_documented() -> None:
    for key in KEYS:
        assert re.search(rf"^\| `{key}` \|", README, re.M), key


def test_every_subcommand_is_documented() -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, sub in commands.items():
        nested = sub._subparsers
        if nested is None:
            assert f"`{name}" in README, name
            continue
        for child in nested._group_actions[0].choices:
            assert (
                f"`{child} " in README or f"`{child}`" in README or (f"| `{name} {child}" in README)
            ), f"{name} {child}"


def test_ci_runs_exactly_the_readme_commands() -> None:
    block = README.split("## Development: the two set-up commands", 1)[1].split("```")[1]
    commands = [line for line in block.strip().splitlines() if line.strip()]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert len(commands) == 2
    assert [line for line in ci if line in commands] == commands


def test_every_pytest_option_is_documented() -> None:
    source = (ROOT / "src/pytest_agentic/plugin.py").read_text(encoding="utf-8")
    options = set(re.findall(r'"(--agent-[a-z-]+)"', source))
    # --agent-workers (issue 8), --agent-review (issue 9; its --no- form is checked below),
    # --agent-max-cost (issue 10), --agent-commit (issue 11)
    assert len(options) == 11
    for option in options:
        assert f"`{option}" in README, option
    assert '"--no-agent-review"' in source and "`--no-agent-review`" in README
