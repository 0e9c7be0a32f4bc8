"""The `pytest-agentic` command line: tasks, scope checks (and the jobs of the other parts).

Exit status: 0 ok; 1 a check found problems (scope violation, invalid task); 2 usage,
configuration or task error (one line on stderr, no traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pytest_agentic import gitrepo
from pytest_agentic.atomic import write_atomic
from pytest_agentic.config import Config, load_config
from pytest_agentic.errors import AgenticError, run_main
from pytest_agentic.scope import BOOKKEEPING, PathPolicy
from pytest_agentic.tasks import (
    ACTIVE_FILE,
    ENV_ACTIVE,
    Task,
    active_task_id,
    check_id,
    compile_scope,
    dependency_order,
    dump_task,
    load_all,
    load_task,
    task_path,
)
from pytest_agentic.workspace import ignore_bookkeeping, restore_all

PROG = "pytest-agentic"


def _rel(config: Config, path: Path) -> str:
    try:
        return path.relative_to(config.root).as_posix()
    except ValueError:
        return str(path)


# --- task -------------------------------------------------------------------------------


def task_new(config: Config, args: argparse.Namespace) -> int:
    check_id(args.id, "task new")
    path = task_path(config, args.id)
    if path.exists():
        raise AgenticError(
            f"{_rel(config, path)}: task {args.id!r} already exists; edit it, or "
            f"`pytest-agentic task widen {args.id} GLOB` to add to its scope"
        )
    scope = [s for s in args.scope if s.strip()]
    if not scope:
        raise AgenticError("task new: --scope needs at least one non-empty glob")
    compile_scope(scope, "--scope")
    verify = [a for group in args.verify or [] for a in group]
    depends_on = [d for group in args.depends_on or [] for d in group]
    tasks, _ = load_all(config)
    known = {t.id for t in tasks}
    for dep in depends_on:
        check_id(dep, "--depends-on")
        if dep not in known:
            raise AgenticError(f"--depends-on: unknown task {dep!r}; create it first")
    task = Task(
        id=args.id,
        scope=tuple(scope),
        title=args.title or "",
        goal=args.goal or "",
        verify=tuple(verify),
        depends_on=tuple(depends_on),
    )
    write_atomic(path, dump_task(task))
    print(f"created {_rel(config, path)}; start it with `{PROG} task start {args.id}`")
    return 0


def task_widen(config: Config, args: argparse.Namespace) -> int:
    task = load_task(config, args.id)
    compile_scope(args.globs, "widen")
    added = tuple(g for g in args.globs if g not in task.scope)
    scope = task.scope + added
    new = Task(task.id, scope, task.title, task.goal, task.verify, task.depends_on)
    path = task_path(config, args.id)
    write_atomic(path, dump_task(new))
    print(f"{_rel(config, path)}: scope is now {', '.join(scope)}")
    return 0


def task_start(config: Config, args: argparse.Namespace) -> int:
    task = load_task(config, args.id)
    write_atomic(config.root / ACTIVE_FILE, task.id + "\n")
    if ignore_bookkeeping(config.root, ACTIVE_FILE):
        print(f"added {ACTIVE_FILE} to {BOOKKEEPING}/.gitignore")
    print(f"task {task.id!r} is active; changes outside its scope will be refused")
    env = os.environ.get(ENV_ACTIVE, "").strip()
    if env and env != task.id:
        print(f"note: ${ENV_ACTIVE}={env} is set and takes precedence", file=sys.stderr)
    return 0


def task_stop(config: Config, args: argparse.Namespace) -> int:
    path = config.root / ACTIVE_FILE
    if path.exists():
        task_id = path.read_text(encoding="utf-8").strip()
        path.unlink()
        print(f"task {task_id!r} stopped")
    else:
        print("no task was active")
    env = os.environ.get(ENV_ACTIVE, "").strip()
    if env:
        print(f"note: ${ENV_ACTIVE}={env} is set and still selects a task", file=sys.stderr)
    return 0


def task_list(config: Config, args: argparse.Namespace) -> int:
    tasks, problems = load_all(config)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 2
    active = active_task_id(config)
    for task in dependency_order(tasks):
        mark = "*" if task.id == active else " "
        deps = f"  (after {', '.join(task.depends_on)})" if task.depends_on else ""
        title = f"  {task.title}" if task.title else ""
        print(f"{mark} {task.id}{title}{deps}")
    if not tasks:
        print(f"no tasks in {_rel(config, config.tasks_dir)}; create one with `{PROG} task new`")
    return 0


def task_show(config: Config, args: argparse.Namespace) -> int:
    task = load_task(config, args.id)
    active = active_task_id(config) == task.id
    print(f"id:         {task.id}{'  (active)' if active else ''}")
    print(f"file:       {_rel(config, task_path(config, task.id))}")
    print(f"title:      {task.title}")
    print(f"goal:       {task.goal}")
    print(f"scope:      {', '.join(task.scope)}")
    print(f"verify:     {' '.join(task.verify)}")
    print(f"depends_on: {', '.join(task.depends_on)}")
    try:
        top = gitrepo.toplevel(config.root)
    except AgenticError:
        print("files:      (not a git repository)")
        return 0
    policy = PathPolicy(config.root, task=task)
    matched = []
    for rel in gitrepo.tracked_files(top):
        inside = policy.relative(top / rel)
        if inside is not None and policy.in_scope(inside):
            matched.append(inside)
    print(f"files:      {len(matched)} tracked file{'s' if len(matched) != 1 else ''} in scope")
    for rel in matched:
        print(f"  {rel}")
    return 0


def task_check(config: Config, args: argparse.Namespace) -> int:
    tasks, problems = load_all(config)
    for problem in problems:
        print(problem, file=sys.stderr)
    active = active_task_id(config)
    if active is not None and active not in {t.id for t in tasks}:
        print(
            f"{ACTIVE_FILE}: active task {active!r} does not exist or is invalid", file=sys.stderr
        )
        problems.append(active)
    if problems:
        return 1
    print(f"{len(tasks)} task{'s' if len(tasks) != 1 else ''} valid")
    return 0


# --- scope ------------------------------------------------------------------------------


def scope_check(config: Config, args: argparse.Namespace) -> int:
    from pytest_agentic.hooks.scope import run_check

    return run_check(Path.cwd(), base=args.base, task_id=args.task, prog=f"{PROG} scope check")


# --- restore, report -------------------------------------------------------------------


def restore(config: Config, args: argparse.Namespace) -> int:
    from pytest_agentic.sandbox import held_for_restore

    # Refused while a fix run is alive: its journal and workspaces are in use, not left over.
    with held_for_restore(config.root) as removed:
        restored = restore_all(config.root)
    for rel in restored:
        print(f"restored {rel}")
    for folder in removed:
        print(f"removed the workspaces of a killed run: {folder}")
    if not restored and not removed:
        print("nothing to restore: no fix attempt left a journal")
    return 0


def report(config: Config, args: argparse.Namespace) -> int:
    from pytest_agentic.report import last_report

    print(last_report(config.root))
    return 0


# --- init -------------------------------------------------------------------------------


def init(config: Config, args: argparse.Namespace) -> int:
    from pytest_agentic.conventions.init import init_main

    return init_main(["--dry-run"] if args.dry_run else [])


# --- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    init_cmd = commands.add_parser(
        "init", help="write AGENTS.md, knowledge and pointer files, .gitignore lines, hooks"
    )
    init_cmd.add_argument("--dry-run", action="store_true", help="print the diff; write nothing")
    init_cmd.set_defaults(func=init)

    task = commands.add_parser("task", help="task specs: new, start, stop, list, show, check")
    tasks = task.add_subparsers(dest="task_command", metavar="SUBCOMMAND", required=True)
    new = tasks.add_parser("new", help="write .agentic/tasks/ID.toml")
    new.add_argument("id", metavar="ID")
    new.add_argument(
        "--scope",
        action="append",
        required=True,
        metavar="GLOB",
        help="a gitwildmatch glob the task may change (repeat; '!' excludes)",
    )
    new.add_argument("--title", help="one line saying what the task is")
    new.add_argument("--goal", help="what done looks like")
    new.add_argument(
        "--verify",
        action="append",
        nargs="+",
        metavar="ARG",
        help="pytest arguments that verify the task (write --verify=-k for dashes)",
    )
    new.add_argument(
        "--depends-on",
        action="append",
        nargs="+",
        metavar="ID",
        help="tasks that must be done first",
    )
    new.set_defaults(func=task_new)
    start = tasks.add_parser("start", help="make ID the active task (.agentic/active)")
    start.add_argument("id", metavar="ID")
    start.set_defaults(func=task_start)
    stop = tasks.add_parser("stop", help="no active task")
    stop.set_defaults(func=task_stop)
    listing = tasks.add_parser(
        "list", help="all tasks in dependency order, the active one marked *"
    )
    listing.set_defaults(func=task_list)
    show = tasks.add_parser("show", help="a task's fields and the tracked files its scope matches")
    show.add_argument("id", metavar="ID")
    show.set_defaults(func=task_show)
    check = tasks.add_parser("check", help="validate every task spec; exit 1 on any problem")
    check.set_defaults(func=task_check)
    widen = tasks.add_parser("widen", help="add globs to a task's scope")
    widen.add_argument("id", metavar="ID")
    widen.add_argument("globs", nargs="+", metavar="GLOB")
    widen.set_defaults(func=task_widen)

    restore_cmd = commands.add_parser(
        "restore", help="put back every file a fix attempt left changed (after a crash or kill)"
    )
    restore_cmd.set_defaults(func=restore)
    report_cmd = commands.add_parser("report", help="summarise the newest fix run")
    report_cmd.set_defaults(func=report)

    scope = commands.add_parser("scope", help="check changes against the active task's scope")
    scopes = scope.add_subparsers(dest="scope_command", metavar="SUBCOMMAND", required=True)
    scheck = scopes.add_parser("check", help="check staged changes (default) or REV...HEAD")
    which = scheck.add_mutually_exclusive_group()
    which.add_argument("--staged", action="store_true", help="check the index (the default)")
    which.add_argument("--base", metavar="REV", help="check the diff REV...HEAD (for CI)")
    scheck.add_argument("--task", metavar="ID", help="check against this task, not the active one")
    scheck.set_defaults(func=scope_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        config = load_config(Path.cwd())
        return int(args.func(config, args))

    return run_main(body, PROG)


if __name__ == "__main__":
    raise SystemExit(main())
