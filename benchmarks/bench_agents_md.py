"""Size of AGENTS.md's generated text on real projects (goal: <= 1,500 tokens, chars / 4).

Run: python benchmarks/bench_agents_md.py SDIST_OR_FOLDER...
Get the three projects of issue 12 with
    pip download --no-deps --no-binary :all: more-itertools==10.5.0 python-slugify==9.2.0 \\
        attrs==26.1.0 -d /tmp/sdists
and pass /tmp/sdists/*.tar.gz. Each is unpacked into a fresh git repository, `init` runs
(with --no-verify unless --verify: collection needs each project's own dependencies), and the
script prints the tokens of the generated sections, of the whole AGENTS.md, of the knowledge
files and of what `context_for` sends the fixer, plus agentic-conventions' problem count.
Prints numbers; never fails a test run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "b",
    "GIT_AUTHOR_EMAIL": "b@x",
    "GIT_COMMITTER_NAME": "b",
    "GIT_COMMITTER_EMAIL": "b@x",
}


def unpack(source: Path, into: Path) -> Path:
    if source.is_dir():
        shutil.copytree(source, into, symlinks=True)
        return into
    with tarfile.open(source) as tar:
        tar.extractall(into.parent / "unpack", filter="data")
    (top,) = list((into.parent / "unpack").iterdir())
    top.rename(into)
    return into


def measure(source: Path, verify: bool) -> None:
    from pytest_agentic.config import load_config
    from pytest_agentic.conventions import context_for
    from pytest_agentic.conventions.init import apply_changes, command_checker, plan_init
    from pytest_agentic.conventions.lint import lint
    from pytest_agentic.conventions.render import parse_sections

    with tempfile.TemporaryDirectory() as tmp:
        root = unpack(source, Path(tmp) / "project")
        env = {**os.environ, **GIT_ENV}
        for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "sdist"]):
            subprocess.run(["git", *args], cwd=root, check=True, env=env, capture_output=True)
        config = load_config(root)
        left_out: list[str] = []
        works = command_checker(root, left_out) if verify else None
        apply_changes(root, plan_init(config, works))
        text = (root / "AGENTS.md").read_text(encoding="utf-8")
        generated = sum(len(text[s.body_start : s.body_end]) for s in parse_sections(text))
        knowledge = sorted((root / str(config["knowledge_dir"])).glob("*.md"))
        k_chars = [len(p.read_text(encoding="utf-8")) for p in knowledge]
        sent = context_for(root, [str(p) for p in (root / "src").rglob("*.py")][:5])
        problems = lint(load_config(root))
        print(f"{source.name}:")
        print(f"  AGENTS.md generated text: {generated / 4:,.0f} tokens (goal <= 1,500)")
        print(f"  AGENTS.md whole file:     {len(text) / 4:,.0f} tokens")
        print(f"  knowledge files:          {len(knowledge)}, largest {max(k_chars, default=0) / 4:,.0f} tokens")
        print(f"  context_for (fixer):      {len(sent) / 4:,.0f} tokens")
        print(f"  agentic-conventions:      {len(problems)} problem(s)")
        for line in left_out:
            print(f"  verify: {line}")
        for problem in problems[:10]:
            print(f"    {problem}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("sources", nargs="+", type=Path)
    parser.add_argument("--verify", action="store_true", help="verify commands as init does")
    args = parser.parse_args()
    for source in args.sources:
        measure(source, args.verify)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
