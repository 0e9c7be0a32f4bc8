"""globs.py: gitwildmatch with pathspec's semantics, without backtracking (issue 14)."""

from __future__ import annotations

import random
import subprocess
import sys

import pathspec
import pytest

from pytest_agentic.errors import AgenticError
from pytest_agentic.globs import GlobError, GlobSpec, compile_globs
from pytest_agentic.tasks import compile_scope

PATTERNS = [
    "*", "**", "**/", "/**", "/**/", "a", "a/", "/a", "a/b", "a/**", "a/**/b", "**/b",
    "**/a/**", "*.py", "src/*.py", "src/**/*.py", "!a", "!a/", "!*.py", "a*b", "*a*", "?",
    "a?", "[ab]", "[!a]x", "[^a]x", "src", "src/", "!src/", "src/a.py", "*/", "*/*", "**/*",
    "**/*/**", "a/*/b", "b/", "a/**/", "x/**/y/**/z", "\\*", "a\\?", "[a-c]*", "*[", "**a",
    "a**", "a/**/**/b", " a", "a ", "#a", "!#a", "a/b/", "/a/b/", "a\\ ", "[]a]", "*.p[yx]",
    "!**/x", "src/**", "!src/a.py",
]  # fmt: skip
PATHS = [
    "a", "b", "a/b", "a/a", "b/a", "a/b/c", "x/a/b", "src/a.py", "src/x/a.py", "src/src",
    "a.py", "ab", "acb", "aab", "x/y/z", "x/q/y/r/z", "a/x/y/b", "*", "a?", "c", "[", "src/a",
    "b/b/a", "a/b/a/b", "a ", "]", "x/a.px", "#a", "src/a.pyc", "x",
]  # fmt: skip


def test_same_answers_as_pathspec_on_a_corpus() -> None:
    rng = random.Random(14)
    combos = [[p] for p in PATTERNS] + [
        rng.sample(PATTERNS, rng.randint(2, 5)) for _ in range(3000)
    ]
    checked = 0
    for lines in combos:
        try:
            reference = pathspec.GitIgnoreSpec.from_lines(lines)
        except Exception:
            with pytest.raises(GlobError):
                GlobSpec(lines)
            continue
        ours = GlobSpec(lines)
        for path in PATHS:
            assert ours.match_file(path) == bool(reference.match_file(path)), (lines, path)
            checked += 1
    assert checked > 50_000


@pytest.mark.parametrize(
    ("lines", "path", "expected"),
    [
        (["src/**", "!src/legacy/**"], "src/legacy/x.py", False),
        (["src/**", "!src/legacy/**"], "src/new/x.py", True),
        (["docs/"], "docs/a/b.md", True),
        (["docs/"], "docs", False),
        (["*.py"], "deep/down/x.py", True),
        (["/x.py"], "deep/x.py", False),
        (["a/**/b"], "a/b", True),
        (["a/**/b"], "a/x/y/b", True),
        (["src/a.py", "!src/"], "src/a.py", True),  # a direct match outranks a folder match
    ],
)
def test_gitwildmatch_semantics(lines: list[str], path: str, expected: bool) -> None:
    assert GlobSpec(lines).match_file(path) is expected


def test_bad_patterns_are_user_errors() -> None:
    with pytest.raises(AgenticError, match=r"^scope: bad glob 'a\\\\': a backslash"):
        compile_globs(["a\\"], "scope")
    with pytest.raises(AgenticError, match="bad glob"):
        compile_scope(["[z-a]"], "scope")


def test_the_adversarial_glob_is_matched_at_once() -> None:
    # Bounded by the subprocess timeout, not timed: pathspec's regex ran past 60 s here.
    code = (
        "from pytest_agentic.globs import GlobSpec\n"
        "spec = GlobSpec(['*' + 'a*' * 17 + 'b', '**/' + '*a' * 30 + '*/**'])\n"
        "for name in ('a' * 40, 'a' * 3000, ('a' * 20 + '/') * 100 + 'x'):\n"
        "    assert not spec.match_file(name)\n"
        "assert spec.match_file('a' * 40 + 'b')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=20)
