"""Convention files: AGENTS.md, knowledge files and pointers, scaffolded from the code and
checked for truth; `context_for` gives the fix loop what an agent should read first."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_agentic.config import Config

__all__ = ["context_for", "convention_files", "front_matter", "matching_knowledge_files"]


def convention_files(config: Config) -> tuple[str, ...]:
    """The files agentic-scaffold writes, root-relative: AGENTS.md, the pointer files and the
    knowledge folder (ending in "/"). The scope check lets people commit them whatever the
    active task (the scaffold hook refreshes them on any commit); the agent never may."""
    knowledge = str(config["knowledge_dir"]).strip("/")
    return ("AGENTS.md", *(str(p) for p in config["pointer_files"]), knowledge + "/")


#: Most characters `context_for` returns: the fixer's budget for convention text in the first
#: message (a 20k-module package produced 1.86 MB before, issue 14).
CONTEXT_BUDGET_CHARS = 24_000
#: Most bytes read of one AGENTS.md or knowledge file.
MAX_DOC_BYTES = 128 * 1024
#: Most knowledge files looked at (each is read to see its `paths` front matter).
MAX_KNOWLEDGE_FILES = 500


def _knowledge_files(config: Config) -> list[str]:
    """Knowledge files (root-relative), never through a symlink out of the root."""
    from pytest_agentic.safeio import escape

    folder = str(config["knowledge_dir"]).strip("/")
    if escape(config.root, folder):
        return []  # a knowledge folder that leads out of the root is not read at all
    path = config.root / folder
    if not path.is_dir():
        return []
    names = sorted(p.name for p in path.iterdir() if p.name.endswith(".md"))
    return [f"{folder}/{name}" for name in names[:MAX_KNOWLEDGE_FILES]]


def _read_doc(config: Config, rel: str) -> str | None:
    """A convention file's text, or None: outside the root, a symlink out of it, not a
    regular file, too big or not UTF-8 all mean "not there" to the fixer."""
    from pytest_agentic.errors import AgenticError
    from pytest_agentic.safeio import read_project_text

    try:
        return read_project_text(config.root, rel, MAX_DOC_BYTES)
    except AgenticError:
        return None


def front_matter(text: str) -> tuple[list[tuple[str, int]] | None, str | None]:
    """The `paths` globs of a knowledge file's front matter with their lines, or an error.
    Here, not in `lint`: the fix loop reads front matter for its first message and must not
    pay for importing the checks (their module-level regexes, introspection)."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return None, "no front matter; start the file with ---, paths: [globs], ---"
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        return None, "front matter is never closed with ---"
    import yaml

    try:
        data = yaml.safe_load("\n".join(lines[1:end])) or {}
    except yaml.YAMLError as exc:
        return None, f"front matter is not valid YAML: {str(exc).splitlines()[0]}"
    except RecursionError:  # yaml's composer recurses per nesting level
        return None, "front matter is not valid YAML: nested too deeply"
    paths = data.get("paths") if isinstance(data, dict) else None
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        return None, "front matter needs `paths:`, a list of globs this file covers"
    out = []
    for glob in paths:
        line = next((i + 1 for i in range(1, end) if glob in lines[i]), 1)
        out.append((glob, line))
    return out, None


def matching_knowledge_files(root: Path, paths: list[str]) -> list[str]:
    """Knowledge files (repo-relative) whose front-matter `paths` globs match any of `paths`
    (absolute, or relative to `root`)."""
    from pytest_agentic.config import load_config
    from pytest_agentic.globs import GlobError, GlobSpec

    root = root.absolute()
    config = load_config(root)
    rels = []
    for path in paths:
        p = Path(path)
        if p.is_absolute():
            try:
                p = p.relative_to(config.root)
            except ValueError:
                continue
        rels.append(p.as_posix())
    found = []
    for rel in _knowledge_files(config):
        text = _read_doc(config, rel)
        if text is None:
            continue
        globs, error = front_matter(text)
        if error or not globs:
            continue
        try:
            spec = GlobSpec([g for g, _ in globs])
        except GlobError:  # a bad glob is agentic-conventions' to report, not the fixer's
            continue
        if any(spec.match_file(r) for r in rels):
            found.append(rel)
    return found


def context_for(root: Path, paths: list[str], budget: int = CONTEXT_BUDGET_CHARS) -> str:
    """AGENTS.md plus the knowledge files covering `paths` (e.g. the files in a failing
    test's traceback), each in a `<document path="...">` block, for the agent's first
    message; at most `budget` characters (a document that does not fit is cut, and says so).
    Empty when the project has none of them. Files are read only inside the project root,
    never through a symlink out of it (a secret there must never reach the model)."""
    from pytest_agentic.config import load_config

    root = root.absolute()
    config = load_config(root)
    docs: list[str] = []
    used = 0
    for rel in ["AGENTS.md", *matching_knowledge_files(root, paths)]:
        text = _read_doc(config, rel)
        if text is None:
            continue
        head, tail = f'<document path="{rel}">\n', "\n</document>"
        room = budget - used - len(head) - len(tail) - (2 if docs else 0)
        if room <= 200:
            break
        body = for_agent(text).rstrip()
        if len(body) > room:
            note = f"\n[cut: {len(body) - room + 40:,} more characters in {rel}]"
            body = body[: max(0, room - len(note))] + note
        docs.append(head + body + tail)
        used += len(docs[-1]) + (2 if len(docs) > 1 else 0)
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
