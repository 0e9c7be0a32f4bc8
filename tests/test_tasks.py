from __future__ import annotations

from pathlib import Path

import pytest

from pytest_agentic.config import load_config
from pytest_agentic.errors import AgenticError
from pytest_agentic.tasks import (
    Task,
    active_task,
    active_task_id,
    dependency_order,
    dump_task,
    load_all,
    load_task,
    parse_task_text,
)


def project(tmp_path: Path, tasks: dict[str, str]) -> Path:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    folder = tmp_path / ".agentic" / "tasks"
    folder.mkdir(parents=True)
    for name, text in tasks.items():
        (folder / f"{name}.toml").write_text(text, encoding="utf-8")
    return tmp_path


def test_a_full_task_loads_and_id_defaults_to_the_file_stem(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        {
            "base": 'scope = ["src/**"]\n',
            "retry": (
                'title = "Retry"\ngoal = "g"\nscope = ["src/app/**", "!src/app/legacy/**"]\n'
                'verify = ["-k", "retry"]\ndepends_on = ["base"]\n'
            ),
        },
    )
    task = load_task(load_config(root), "retry")
    assert task == Task(
        id="retry",
        scope=("src/app/**", "!src/app/legacy/**"),
        title="Retry",
        goal="g",
        verify=("-k", "retry"),
        depends_on=("base",),
    )
    assert load_task(load_config(root), "base").id == "base"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('scope = ["a"]\nowner = "me"\n', "t.toml: unknown key 'owner'; known keys: "),
        ('scope = ["a"]\nscop = ["b"]\n', "t.toml: unknown key 'scop'; did you mean 'scope'?"),
        ('title = "x"\n', "t.toml: scope is required: a list of gitwildmatch globs"),
        ("scope = []\n", "t.toml: scope is empty; list the globs this task may change"),
        ('scope = ["!a"]\n', "t.toml: scope has only '!' exclusions, so it matches nothing"),
        ('scope = "src/**"\n', "t.toml: scope must be a list of strings, not str"),
        ('id = "other"\nscope = ["a"]\n', "t.toml: id 'other' does not match the file name"),
        ('scope = ["a"]\ndepends_on = ["bad id"]\n', "t.toml: depends_on: bad task id 'bad id'"),
    ],
)
def test_invalid_task_specs_are_named_with_the_problem(text: str, message: str) -> None:
    with pytest.raises(AgenticError) as exc:
        parse_task_text(text, Path("t.toml"))
    assert str(exc.value).startswith(message)


def test_bad_id_in_the_file_name(tmp_path: Path) -> None:
    root = project(tmp_path, {"-bad": 'scope = ["a"]\n'})
    _, problems = load_all(load_config(root))
    assert problems == [
        ".agentic/tasks/-bad.toml: bad task id '-bad'; use letters, digits, '.', '_' or '-' "
        "(starting with a letter or digit, at most 64 characters)"
    ]


def test_unknown_dependency_and_cycles_are_named(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        {
            "a": 'scope = ["a"]\ndepends_on = ["b"]\n',
            "b": 'scope = ["b"]\ndepends_on = ["c"]\n',
            "c": 'scope = ["c"]\ndepends_on = ["a"]\n',
        },
    )
    _, problems = load_all(load_config(root))
    assert problems == ["dependency cycle: a -> b -> c -> a"]
    (root / ".agentic/tasks/c.toml").write_text('scope = ["c"]\ndepends_on = ["ghost"]\n')
    _, problems = load_all(load_config(root))
    assert problems == [".agentic/tasks/c.toml: depends_on names unknown task 'ghost'"]


def test_dependency_order_puts_dependencies_first() -> None:
    tasks = [
        Task("deploy", ("d",), depends_on=("api", "db")),
        Task("api", ("a",), depends_on=("db",)),
        Task("db", ("b",)),
        Task("docs", ("c",)),
    ]
    assert [t.id for t in dependency_order(tasks)] == ["db", "api", "deploy", "docs"]


def test_active_task_env_wins_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = project(tmp_path, {"one": 'scope = ["a"]\n', "two": 'scope = ["b"]\n'})
    config = load_config(root)
    assert active_task_id(config) is None
    (root / ".agentic/active").write_text("one\n")
    assert active_task(config) == load_task(config, "one")
    monkeypatch.setenv("PYTEST_AGENTIC_TASK", "two")
    assert active_task_id(config) == "two"


def test_missing_active_task_says_how_to_create_it(tmp_path: Path) -> None:
    root = project(tmp_path, {})
    (root / ".agentic/active").write_text("ghost\n")
    with pytest.raises(AgenticError) as exc:
        active_task(load_config(root))
    assert str(exc.value) == (
        ".agentic/tasks/ghost.toml: no such task 'ghost'; create it with "
        "`pytest-agentic task new ghost --scope GLOB`"
    )


def test_dump_round_trips_quotes_and_unicode() -> None:
    task = Task("t", ('src/"q"/**', "docs/ü ñ.md"), title='say "hi"\\', verify=("-k", "x"))
    assert parse_task_text(dump_task(task), Path("t.toml")) == task
