"""Glob matching (globs.py) against pathspec: typical scopes and the adversarial glob.

Typical: 50 globs (`src/pkgN/**`, `lib/modN_*.py`) against 10,000 paths. Adversarial (issue 14):
`*a*a…*b` (17 `a`s) against a 40-character name; pathspec's regex is skipped there (it runs
for minutes). Goal: the adversarial match under 0.1 s; typical on par with pathspec.

    python benchmarks/bench_globs.py
"""

from __future__ import annotations

import time

from pytest_agentic.globs import GlobSpec


def timed(label: str, func) -> None:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    func()
    print(f"{label:<44} {time.perf_counter() - start:8.4f} s")


def main() -> None:
    globs = [f"src/pkg{i}/**" for i in range(25)] + [f"lib/mod{i}_*.py" for i in range(25)]
    paths = [f"src/pkg{i % 50}/sub/file{i}.py" for i in range(5000)]
    paths += [f"lib/mod{i % 50}_x.py" for i in range(5000)]
    ours = GlobSpec(globs)
    timed("globs.py, 50 globs x 10,000 paths", lambda: [ours.match_file(p) for p in paths])
    try:
        import pathspec

        spec = pathspec.GitIgnoreSpec.from_lines(globs)
        timed("pathspec, 50 globs x 10,000 paths", lambda: [spec.match_file(p) for p in paths])
    except ImportError:
        print("pathspec not installed: no comparison")
    evil = GlobSpec(["*" + "a*" * 17 + "b"])
    timed("globs.py, *a*a...*b (17) vs 40 chars", lambda: evil.match_file("a" * 40))
    timed("globs.py, *a*a...*b (17) vs 3,000 chars", lambda: evil.match_file("a" * 3000))


if __name__ == "__main__":
    main()
