"""The format of convention files: generated-section markers, fences, and what the markdown
names (paths, links, commands, `@` imports). render.py writes it, lint.py checks it.

A generated section is the text between `<!-- pytest-agentic:begin NAME -->` and
`<!-- pytest-agentic:end NAME -->`, each alone on its line. Rules that keep the user's bytes
and make generated text inert (issue 14):

- Outside a section, a marker inside a fenced code block is an example, not a marker.
- Inside a section, only the matching end marker counts (generated text is escaped, below,
  so it never holds a marker line; an unbalanced fence in it cannot swallow the end).
- Generated text has every marker-looking line escaped (`&lt;!--`), so text from a docstring
  or a package description can never close its section early and land outside it.
- A file keeps its newline style: bodies are written with the file's own line ending and text
  outside the markers is never touched, byte for byte.

The scanners are linear in line length: no pattern here can backtrack over a line of 100k
`[` (the link pattern excludes `[` from link text; comments are cut by index, not slicing).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from pytest_agentic.errors import AgenticError

ANY_MARKER_RE = re.compile(
    r"^[ \t]*<!-- pytest-agentic:(begin|end) ([A-Za-z0-9_.-]+) -->[ \t\r]*$", re.MULTILINE
)
# Loose on purpose: anything a reader (or a later parser) could take for a marker is escaped.
_MARKERISH_RE = re.compile(r"<!--(?=\s*pytest-agentic:)")
FENCE_RE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)")
CODE_SPAN_RE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
LINK_RE = re.compile(r"\[[^\[\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"\n]*\")?\)")
IMPORT_RE = re.compile(r"(?:^|(?<=\s))@([^\s`<>()\[\]]+)")
SHELL_FENCES = frozenset({"sh", "bash", "shell", "console", "zsh"})
PATH_EXTENSIONS = frozenset(
    {
        ".py",
        ".pyi",
        ".md",
        ".rst",
        ".txt",
        ".toml",
        ".cfg",
        ".ini",
        ".yaml",
        ".yml",
        ".json",
        ".lock",
        ".sh",
        ".in",
        ".csv",
        ".html",
        ".js",
        ".ts",
    }
)
# Names Claude Code would load into every session if imported, and which hold secrets.
_SECRET_RE = re.compile(
    r"(^|/)(\.env(\..*)?|id_(rsa|dsa|ecdsa|ed25519)(\.pub)?|.*\.(pem|key|p12|pfx)|shadow|"
    r"gshadow|passwd|\.netrc|\.pgpass|\.pypirc|\.npmrc|credentials(\.json)?|\.git-credentials|"
    r"environ|secrets?(\..*)?)$|(^|/)(\.ssh|\.aws|\.gnupg|\.kube|\.docker)(/|$)|^/proc/|^/dev/"
)


def begin_marker(name: str) -> str:
    return f"<!-- pytest-agentic:begin {name} -->"


def end_marker(name: str) -> str:
    return f"<!-- pytest-agentic:end {name} -->"


def newline_of(text: str) -> str:
    """The file's line ending: CRLF when most of its lines end so, else LF."""
    crlf = text.count("\r\n")
    return "\r\n" if crlf and crlf * 2 >= text.count("\n") else "\n"


def escape_markers(text: str) -> str:
    """`text` (generated from code or metadata) with nothing a parser could take for a
    marker: `<!-- pytest-agentic:` becomes `&lt;!-- pytest-agentic:` (renders the same).
    A name that is not valid UTF-8 (a file name git reports as bytes) becomes `?`s, so the
    file written stays UTF-8 (issue 14: UnicodeEncodeError)."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    return _MARKERISH_RE.sub("&lt;!--", text)


def looks_secret(target: str) -> bool:
    """Whether an `@` import names a file that usually holds secrets."""
    return _SECRET_RE.search(target.replace("\\", "/")) is not None


@dataclass(frozen=True)
class Section:
    """One generated section: its name, body span (character offsets) and marker lines."""

    name: str
    body_start: int
    body_end: int
    begin_line: int
    end_line: int


def _fenced_lines(text: str) -> set[int]:
    """Line numbers (1-based) inside fenced code blocks, fence lines included."""
    inside: set[int] = set()
    fence: str | None = None
    for number, line in enumerate(text.split("\n"), start=1):
        opening = FENCE_RE.match(line)
        if fence is not None:
            inside.add(number)
            if opening and opening.group(1) == fence and not opening.group(2):
                fence = None
        elif opening:
            fence = opening.group(1)
            inside.add(number)
    return inside


def parse_sections(text: str, where: str = "") -> list[Section]:
    """The generated sections of `text`; badly nested or unclosed markers are user errors
    naming the line, since rewriting around them could eat hand-written text."""
    sections: list[Section] = []
    open_name: str | None = None
    open_at = (0, 0)
    seen: set[str] = set()
    fenced: set[int] | None = None
    for match in ANY_MARKER_RE.finditer(text):
        kind, name = match.group(1), match.group(2)
        line = text.count("\n", 0, match.start()) + 1
        if open_name is None:
            if fenced is None:
                fenced = _fenced_lines(text)
            if line in fenced:
                continue  # an example in a fenced block, not a marker
        elif not (kind == "end" and name == open_name):
            if kind == "end":
                raise AgenticError(
                    f"{where}:{line}: 'end {name}' without a matching "
                    f"`{begin_marker(name)}` before it"
                )
            raise AgenticError(
                f"{where}:{line}: marker 'begin {name}' inside section '{open_name}' "
                f"(opened on line {open_at[1]}); close it with `{end_marker(open_name)}`"
            )
        if kind == "begin":
            if name in seen:
                raise AgenticError(f"{where}:{line}: section '{name}' appears twice")
            open_name, open_at = name, (match.end() + 1, line)
        else:
            if open_name != name:
                raise AgenticError(
                    f"{where}:{line}: 'end {name}' without a matching "
                    f"`{begin_marker(name)}` before it"
                )
            seen.add(name)
            start = min(open_at[0], match.start())
            sections.append(Section(name, start, match.start(), open_at[1], line))
            open_name = None
    if open_name is not None:
        raise AgenticError(
            f"{where}:{open_at[1]}: section '{open_name}' is never closed; add "
            f"`{end_marker(open_name)}`"
        )
    return sections


def section_body(body: str, newline: str = "\n") -> str:
    """A generated body as written between its markers: escaped, in the file's newline."""
    body = escape_markers(body.replace("\r\n", "\n").strip("\n"))
    if not body:
        return ""
    return body.replace("\n", newline) + newline


def fill_sections(text: str, contents: Mapping[str, str], where: str = "") -> str:
    """`text` with the bodies of the sections named in `contents` replaced; everything else,
    line endings included, byte for byte as it was."""
    newline = newline_of(text)
    out: list[str] = []
    pos = 0
    for section in parse_sections(text, where):
        if section.name not in contents:
            continue
        out.append(text[pos : section.body_start])
        out.append(section_body(contents[section.name], newline))
        pos = section.body_end
    out.append(text[pos:])
    return "".join(out)


# --- what the markdown names ------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """Something a convention file names: a path, a command or an `@` import."""

    kind: str  # "span", "link", "command", "import"
    text: str
    line: int


def _strip_comments(line: str, in_comment: bool) -> tuple[str, bool]:
    """The visible part of `line` and whether an HTML comment is still open after it
    (indexes, not repeated slicing: linear in the line's length)."""
    visible: list[str] = []
    pos, end = 0, len(line)
    while pos < end:
        if in_comment:
            close = line.find("-->", pos)
            if close < 0:
                return "".join(visible), True
            in_comment, pos = False, close + 3
        else:
            start = line.find("<!--", pos)
            if start < 0:
                visible.append(line[pos:])
                break
            visible.append(line[pos:start])
            in_comment, pos = True, start + 4
    return "".join(visible), in_comment


def references(text: str) -> Iterator[Reference]:
    """Code spans, links and `@` imports outside fences and HTML comments; each line of a
    shell fence as a command."""
    fence: str | None = None
    fence_lang = ""
    in_comment = False
    for number, line in enumerate(text.splitlines(), start=1):
        opening = FENCE_RE.match(line)
        if fence is not None:
            if opening and opening.group(1) == fence and not opening.group(2):
                fence = None
            elif fence_lang in SHELL_FENCES:
                command = line.strip()
                if command.startswith("$ "):
                    command = command[2:]
                if command and not command.startswith("#"):
                    yield Reference("command", command, number)
            continue
        if opening:
            fence, fence_lang = opening.group(1), opening.group(2).lower()
            continue
        visible, in_comment = _strip_comments(line, in_comment)
        for match in CODE_SPAN_RE.finditer(visible):
            yield Reference("span", match.group(1).strip(), number)
        for match in LINK_RE.finditer(visible):
            yield Reference("link", match.group(1), number)
        for match in IMPORT_RE.finditer(CODE_SPAN_RE.sub("", visible)):
            target = match.group(1).rstrip(".,;:")
            if (
                "/" in target
                or os.path.splitext(target)[1] in PATH_EXTENSIONS
                or looks_secret(target)
            ):
                yield Reference("import", target, number)
