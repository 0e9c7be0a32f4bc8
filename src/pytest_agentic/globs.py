"""Gitwildmatch globs (task scopes, `protected`, knowledge `paths`) matched in linear time.

pathspec translates each glob into a backtracking regular expression: `*a*a*a…*b` with 17
`a`s against a 40-character name ran for minutes (issue 14). Here a pattern is cut into path
segments, a segment into the fixed-width pieces between its `*`s; `**` gaps are sets of
positions, and each piece is found leftmost (greedy placement is optimal for `*`), so a match
costs O(pattern length x path length) whatever the input.

The semantics are pathspec's `GitIgnoreSpec` (tests compare both on a corpus): `!` negation,
last match wins, a pattern without a slash matches at any depth, a leading or inner slash
anchors it, a trailing slash matches folders only, `**` as a whole segment spans folders, and a
match through a folder (`src` matching `src/a.py`) ranks below a direct match: the last
direct match decides, else the last folder match (so a later `!dir/` does not un-match an
earlier `dir/a.py`). One deliberate difference: a bracket class
never matches `/` (git's wildmatch does the same; pathspec's `[!a]` would).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pytest_agentic.errors import AgenticError

_GAP = None  # a `**` segment: zero or more whole path components


class GlobError(ValueError):
    """A pattern that cannot be compiled (a dangling backslash, a bad character range)."""


@dataclass(frozen=True)
class _Segment:
    """One path component's glob: fixed-width pieces separated by `*`."""

    pieces: tuple[re.Pattern[str], ...]
    widths: tuple[int, ...]
    starred: bool  # at least one `*`: the first piece is a prefix, the last a suffix
    # Fast paths (string operations, no regex): the segment is this exact name, or a single
    # `*` between a literal prefix and suffix.
    literal: str | None = None
    affixes: tuple[str, str] | None = None

    def matches(self, name: str) -> bool:
        if self.literal is not None:
            return name == self.literal
        if self.affixes is not None:
            prefix, suffix = self.affixes
            return (
                len(name) >= len(prefix) + len(suffix)
                and name.startswith(prefix)
                and name.endswith(suffix)
            )
        if not self.starred:
            return self.pieces[0].fullmatch(name) is not None
        first, *middle, last = self.pieces
        w_first, w_last = self.widths[0], self.widths[-1]
        if len(name) < w_first + w_last or first.match(name) is None:
            return False
        pos, end = w_first, len(name) - w_last
        for piece in middle:  # leftmost placement of each piece is optimal for `*`
            found = piece.search(name, pos, end)
            if found is None:
                return False
            pos = found.end()
        return last.match(name, end) is not None


def _segment(glob: str, whole: str) -> _Segment | None:
    """Compile one segment; None when it has a bad range (git then ignores the pattern)."""
    if glob == "*":  # pathspec: a lone `*` segment needs at least one character
        return _Segment((re.compile(r"[^/]"), re.compile(""), re.compile("")), (1, 0, 0), True)
    pieces: list[str] = [""]
    widths: list[int] = [0]
    literals: list[str | None] = [""]  # each piece's plain text, None once it has ? or [...]
    i, end = 0, len(glob)
    while i < end:
        char = glob[i]
        i += 1
        if char == "\\":
            if i >= end:
                raise GlobError(f"{whole!r}: a backslash at the end escapes nothing")
            pieces[-1] += re.escape(glob[i])
            widths[-1] += 1
            literals[-1] = None if literals[-1] is None else literals[-1] + glob[i]
            i += 1
        elif char == "*":
            pieces.append("")
            widths.append(0)
            literals.append("")
        elif char == "?":
            pieces[-1] += "[^/]"
            widths[-1] += 1
            literals[-1] = None
        elif char == "[":
            j = i
            if j < end and glob[j] in "!^":
                j += 1
            if j < end and glob[j] == "]":
                j += 1
            while j < end and glob[j] != "]":
                j += 1
            if j >= end:
                return None  # an unclosed `[`: pathspec (and git) drop the pattern
            body = glob[i:j]
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            body = body.replace("\\", "\\\\")
            pieces[-1] += f"(?:(?!/)[{'^' if negate else ''}{body}])"
            widths[-1] += 1
            literals[-1] = None
            i = j + 1
        else:
            pieces[-1] += re.escape(char)
            widths[-1] += 1
            literals[-1] = None if literals[-1] is None else literals[-1] + char
    try:
        compiled = tuple(re.compile(p) for p in pieces)
    except re.error as exc:
        raise GlobError(f"{whole!r}: {exc}") from None
    literal = literals[0] if len(pieces) == 1 else None
    affixes = None
    if len(pieces) == 2 and literals[0] is not None and literals[1] is not None:
        affixes = (literals[0], literals[1])
    return _Segment(compiled, tuple(widths), len(pieces) > 1, literal, affixes)


@dataclass(frozen=True)
class _Pattern:
    include: bool
    kind: str  # "any": every path; "nested": every path with a `/`; "segments"
    items: tuple[_Segment | None, ...] = ()  # segments and _GAP markers
    rest: bool = False  # a trailing `**`: the last segment must be a folder
    dir_only: bool = False  # written with a trailing `/`
    shape: str = ""  # "anchored" (no gap but a trailing one), "any-depth" (`**/x`), "" general
    # String fast paths for the common anchored globs (`src/app`, `src/app/**`): the whole
    # literal path, or the literal first folder every match starts with (`"src/"`).
    lit: str | None = None
    head: str = ""

    def match(self, parts: Sequence[str]) -> int:
        """0 no match, 1 a match through a folder, 2 a direct match (pathspec's priorities)."""
        if self.kind == "any":
            return 2
        if self.kind == "nested":
            return 0 if len(parts) < 2 else (1 if self.dir_only else 2)
        n = len(parts)
        items = self.items
        if self.shape == "anchored":  # `a/b/c`, `src/**`: one place to try
            fixed = items[:-1] if self.rest else items
            if len(fixed) > n:
                return 0
            for seg, part in zip(fixed, parts, strict=False):
                if not seg.matches(part):  # type: ignore[union-attr]
                    return 0
            if self.rest:
                return (1 if self.dir_only else 2) if len(fixed) < n else 0
            return 2 if len(fixed) == n else 1
        if self.shape == "any-depth":  # `*.py`, `conftest.py`, `build/`: one segment anywhere
            seg = items[1]
            assert seg is not None
            if not self.rest and seg.matches(parts[-1]):
                return 2
            if any(seg.matches(part) for part in parts[:-1]):
                return (1 if self.dir_only else 2) if self.rest else 1
            return 0
        states: set[int] = {0}
        for index, item in enumerate(self.items):
            if item is _GAP:
                if index + 1 == len(self.items):
                    break
                low = min(states)
                states = set(range(low, n + 1))
                continue
            states = {s + 1 for s in states if s < n and item.matches(parts[s])}
            if not states:
                return 0
        if self.rest:
            return (1 if self.dir_only else 2) if any(s < n for s in states) else 0
        if n in states:
            return 2
        return 1 if any(s < n for s in states) else 0


def _compile(line: str) -> _Pattern | None:
    """One gitwildmatch line, as pathspec's GitIgnoreSpecPattern reads it; None = no-op."""
    text = line if line.endswith("\\ ") else line.rstrip()
    if not text or text.startswith("#") or text == "/":
        return None
    include = not text.startswith("!")
    if not include:
        text = text[1:]
    segs = text.split("/")
    dir_only = not segs[-1]
    if not segs[0]:
        del segs[0]
    elif len(segs) == 1 or (len(segs) == 2 and not segs[1]):
        if segs[0] != "**":
            segs.insert(0, "**")
    if not segs:
        raise GlobError(f"{line!r}: the pattern is empty")
    if not segs[-1]:
        segs[-1] = "**"
    collapsed: list[str] = []
    for seg in segs:
        if not (seg == "**" and collapsed and collapsed[-1] == "**"):
            collapsed.append(seg)
    segs = collapsed
    if segs == ["**"]:
        return _Pattern(include, "nested" if dir_only else "any", dir_only=dir_only)
    if segs == ["**", "*"]:
        return _Pattern(include, "any")
    if segs == ["**", "*", "**"]:
        return _Pattern(include, "nested", dir_only=dir_only)
    items: list[_Segment | None] = []
    for seg in segs:
        if seg == "**":
            items.append(_GAP)
            continue
        compiled = _segment(seg, line)
        if compiled is None:
            return None
        items.append(compiled)
    rest = items[-1] is _GAP
    inner = items[1:-1] if rest else items[1:]
    shape = ""
    if _GAP not in (items[:-1] if rest else items):
        shape = "anchored"
    elif items[0] is _GAP and len(inner) == 1 and inner[0] is not _GAP:
        shape = "any-depth"
    lit, head = None, ""
    if shape == "anchored":
        fixed = [item for item in items if item is not None]
        literals = [seg.literal for seg in fixed]
        if all(text is not None for text in literals):
            lit = "/".join(text for text in literals if text is not None)
        elif literals[0] is not None and (len(fixed) > 1 or rest):
            head = literals[0] + "/"
    return _Pattern(include, "segments", tuple(items), rest, dir_only, shape, lit, head)


class GlobSpec:
    """Compiled gitwildmatch lines; `match_file(rel)` as pathspec's GitIgnoreSpec answers."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = tuple(lines)
        self._patterns = [p for p in map(_compile, self.lines) if p is not None]
        self._reversed = self._patterns[::-1]

    def match_file(self, rel: str) -> bool:
        while rel.startswith("./"):
            rel = rel[2:]
        rel = rel.lstrip("/")
        if not rel:
            return False
        parts: list[str] | None = None
        # pathspec's rule: the last direct match decides; failing one, the last folder match.
        folder: bool | None = None
        for pattern in self._reversed:
            lit = pattern.lit
            if lit is not None:  # string operations only: most scopes are such paths
                if rel == lit:
                    priority = 0 if pattern.rest else 2
                elif rel.startswith(lit) and rel[len(lit) : len(lit) + 1] == "/":
                    priority = (1 if pattern.dir_only else 2) if pattern.rest else 1
                else:
                    continue
            else:
                if pattern.head and not rel.startswith(pattern.head):
                    continue
                if parts is None:
                    parts = rel.split("/")
                priority = pattern.match(parts)
            if priority == 2:
                return pattern.include
            if priority == 1 and folder is None:
                folder = pattern.include
        return bool(folder)


def compile_globs(lines: Sequence[str], where: str) -> GlobSpec:
    """A GlobSpec; a pattern that cannot compile is a user error naming `where`."""
    try:
        return GlobSpec(lines)
    except GlobError as exc:
        raise AgenticError(f"{where}: bad glob {exc}") from None
