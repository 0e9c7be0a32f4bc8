"""Convention files: AGENTS.md, knowledge files and pointers, scaffolded from the code and
checked for truth; `context_for` gives the fix loop what an agent should read first."""

from __future__ import annotations

from pathlib import Path

__all__ = ["context_for", "matching_knowledge_files"]


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
        docs.append(f'<document path="{rel}">\n{text.rstrip()}\n</document>')
    return "\n\n".join(docs)
