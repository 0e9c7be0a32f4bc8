"""Convention files: AGENTS.md, knowledge files and pointers, scaffolded from the code and
checked for truth; `context_for` gives the fix loop what an agent should read first."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_agentic.config import Config

__all__ = ["context_for", "convention_files", "matching_knowledge_files"]


def convention_files(config: Config) -> tuple[str, ...]:
    """The files agentic-scaffold writes, root-relative: AGENTS.md, the pointer files and the
    knowledge folder (ending in "/"). The scope check lets people commit them whatever the
    active task (the scaffold hook refreshes them on any commit); the agent never may."""
    knowledge = str(config["knowledge_dir"]).strip("/")
    return ("AGENTS.md", *(str(p) for p in config["pointer_files"]), knowledge + "/")


def matching_knowledge_files(root: Path, paths: list[str]) -> list[str]:
    """Knowledge files (repo-relative) whose front-matter `paths` globs match any of `paths`
    (absolute, or relative to `root`)."""
    import pathspec

    from pytest_agentic.config import load_config
    from pytest_agentic.conventions.lint import front_matter

    root = root.absolute()
    config = load_config(root)
    rels = []
    for path in paths:
        p = Path(path)
        if p.is_absolute():
            try:
                p = p.relative_to(root)
            except ValueError:
                continue
        rels.append(p.as_posix())
    folder = config.root / str(config["knowledge_dir"])
    found = []
    for file in sorted(folder.glob("*.md")) if folder.is_dir() else []:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        globs, error = front_matter(text)
        if error or not globs:
            continue
        try:
            spec = pathspec.GitIgnoreSpec.from_lines([g for g, _ in globs])
        except Exception:  # a bad glob is agentic-conventions' to report, not the fixer's
            continue
        if any(spec.match_file(rel) for rel in rels):
            found.append(file.relative_to(config.root).as_posix())
    return found


def context_for(root: Path, paths: list[str]) -> str:
    """AGENTS.md plus the knowledge files covering `paths` (e.g. the files in a failing
    test's traceback), each in a `<document path="...">` block, for the agent's first
    message. Empty when the project has none of them."""
    root = root.absolute()
    from pytest_agentic.config import load_config

    config = load_config(root)
    docs = []
    names = ["AGENTS.md", *matching_knowledge_files(root, paths)]
    for rel in names:
        try:
            text = (config.root / rel).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        docs.append(f'<document path="{rel}">\n{for_agent(text)}\n</document>')
    return "\n\n".join(docs)


def for_agent(text: str) -> str:
    """A convention file as the fixer is sent it: HTML comments (markers, empty `people:`
    placeholders) removed, headings left with nothing under them dropped, blank runs closed
    up. Fenced code is kept byte for byte: a comment there is an example, not a note."""
    import re

    kept: list[str] = []
    fence: str | None = None
    in_comment = False
    for line in text.splitlines():
        if fence is None and not in_comment:
            opening = re.match(r"^\s*(```|~~~)", line)
            if opening:
                fence = opening.group(1)
                kept.append(line)
                continue
        elif fence is not None:
            if line.strip().startswith(fence):
                fence = None
            kept.append(line)
            continue
        visible, rest = "", line
        while rest:
            if in_comment:
                end = rest.find("-->")
                rest, in_comment = ("", True) if end < 0 else (rest[end + 3 :], False)
            else:
                start = rest.find("<!--")
                if start < 0:
                    visible, rest = visible + rest, ""
                else:
                    visible, rest, in_comment = visible + rest[:start], rest[start + 4 :], True
        if visible.strip() or not line.strip():
            kept.append(visible.rstrip())
        elif not visible.strip() and line.strip():
            continue  # a line that was only a comment
    # Drop headings whose section (up to the next heading of any level) is empty.
    out: list[str] = []
    for i, line in enumerate(kept):
        if re.match(r"^#{1,6} ", line):
            after = kept[i + 1 :]
            nxt = next((j for j, r in enumerate(after) if re.match(r"^#{1,6} ", r)), len(after))
            if not any(r.strip() for r in after[:nxt]):
                continue
        out.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip("\n")
