"""The `pytest-agentic` command line: tasks, scope checks (and the jobs of the other parts).

Exit status: 0 ok; 1 a check found problems (scope violation, invalid task); 2 usage,
configuration or task error (one line on stderr, no traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
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
    check_specs,
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
        print(f"created {BOOKKEEPING}/.gitignore (ignores {ACTIVE_FILE}, runs and journals)")
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
    # An invalid spec is listed, marked `!` with its first problem, rather than failing the
    # whole listing: one broken file must not hide the others (`task check` gives every problem).
    specs = check_specs(config)
    tasks = [s.task for s in specs if s.task is not None]
    active = active_task_id(config)
    try:
        ordered = dependency_order(tasks)
    except AgenticError as exc:
        print(f"! {exc}")
        ordered = sorted(tasks, key=lambda t: t.id)
    for task in ordered:
        mark = "*" if task.id == active else " "
        deps = f"  (after {', '.join(task.depends_on)})" if task.depends_on else ""
        title = f"  {task.title}" if task.title else ""
        print(f"{mark} {task.id}{title}{deps}")
    for spec in specs:
        if spec.task is None:
            stem = Path(spec.path).stem
            print(f"! {stem}  (invalid: {spec.problems[0]}; see `{PROG} task check`)")
    if not specs:
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


def scope_warnings(config: Config, tasks: Sequence[Task]) -> list[str]:
    """A warning per scope pattern that matches no tracked file: often a typo, but a task may
    well create new files, so it never fails the check."""
    try:
        top = gitrepo.toplevel(config.root)
        tracked = gitrepo.tracked_files(top)
    except AgenticError:
        return []
    rels = []
    policy = PathPolicy(config.root)
    for rel in tracked:
        inside = policy.relative(top / rel)
        if inside is not None:
            rels.append(inside)
    warnings = []
    for task in tasks:
        where = task.path.as_posix() if task.path else task.id
        for pattern in task.scope:
            if not pattern.strip() or pattern.lstrip().startswith("!"):
                continue
            spec = compile_scope([pattern], where)
            if not any(spec.match_file(rel) for rel in rels):
                warnings.append(
                    f"{where}: warning: scope pattern {pattern!r} matches no tracked file "
                    "(fine if the task creates it)"
                )
    return warnings


def task_check(config: Config, args: argparse.Namespace) -> int:
    tasks, problems = load_all(config)
    active = active_task_id(config)
    if active is not None and active not in {t.id for t in tasks}:
        problems.append(f"{ACTIVE_FILE}: active task {active!r} does not exist or is invalid")
    for problem in problems:
        print(problem, file=sys.stderr)
    for warning in scope_warnings(config, tasks):
        print(warning)
    if problems:
        return 1
    print(f"{len(tasks)} task{'s' if len(tasks) != 1 else ''} valid")
    return 0


def task_verify(config: Config, args: argparse.Namespace) -> int:
    """Run the task's `verify` arguments with pytest; the exit status is pytest's. With
    `--fix`, add `--agent-fix` and make the task active for that run only (in the child's
    environment), so the fixer's edits stay inside its scope."""
    import subprocess

    task = load_task(config, args.id)
    if not task.verify:
        raise AgenticError(
            f"{_rel(config, task_path(config, task.id))}: task {task.id!r} has no `verify`; "
            'add the pytest arguments that prove it done, e.g. verify = ["tests/test_x.py"]'
        )
    command = [sys.executable, "-m", "pytest", *task.verify]
    env = dict(os.environ)
    if args.fix:
        command.append("--agent-fix")
        env[ENV_ACTIVE] = task.id
    print(f"{PROG} task verify: pytest {' '.join(command[3:])}", flush=True)
    # Output streams straight through: pytest's own progress is what the user wants to see.
    return subprocess.run(command, cwd=config.root, env=env, check=False).returncode


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
    from pytest_agentic.report import find_run, load_run, render_transcript, transcript_files

    run = load_run(find_run(config.root, args.run))
    if args.transcript is not None:
        nodeid, files = transcript_files(run, args.transcript)
        if not files:
            raise AgenticError(
                f"{nodeid}: no transcript in {_rel(config, run.run_dir or config.root)}"
            )
        for path in files:
            print(f"=== {nodeid}: {path.name}")
            try:
                messages = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise AgenticError(f"{path}: not a readable transcript ({exc})") from None
            sys.stdout.write(render_transcript(messages if isinstance(messages, list) else []))
        return 0
    if args.format == "markdown":
        sys.stdout.write(run.markdown())
    else:
        print("\n".join([*run.lines(), run.result_line()]))
    return 0


def apply(config: Config, args: argparse.Namespace) -> int:
    from pytest_agentic.deliver import apply_run
    from pytest_agentic.report import find_run

    applied, problems = apply_run(config.root, find_run(config.root, args.run))
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print("nothing was applied", file=sys.stderr)
        return 1
    for line in applied:
        print(line)
    return 0


# --- init -------------------------------------------------------------------------------


def init(config: Config, args: argparse.Namespace) -> int:
    from pytest_agentic.conventions.init import init_main

    status = init_main(
        (["--dry-run"] if args.dry_run else []) + (["--no-verify"] if args.no_verify else [])
    )
    if status == 0 and not args.dry_run:
        hint = pre_push_hint(config.root)
        if hint:
            print(hint)
    return status


def pre_push_hint(root: Path) -> str | None:
    """`pre-commit install` installs only the pre-commit hook: a hook configured for the
    pre-push stage never runs until its own hook type is installed."""
    import yaml

    try:
        data = yaml.safe_load((root / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    pushing = any(
        isinstance(hook, dict)
        and hook.get("id") == "agentic-scope"
        and any(stage in ("pre-push", "push") for stage in hook.get("stages") or [])
        for repo in (data.get("repos") or [] if isinstance(data, dict) else [])
        if isinstance(repo, dict)
        for hook in repo.get("hooks") or []
    )
    if not pushing:
        return None
    try:
        hook = gitrepo.git(root, "rev-parse", "--git-path", "hooks/pre-push", check=False)
    except AgenticError:
        return None
    if hook.returncode == 0:
        path = root / hook.stdout.decode("utf-8", "replace").strip()
        try:
            if "pre-commit" in path.read_text(encoding="utf-8", errors="replace"):
                return None  # installed already
        except OSError:
            pass
    return (
        "agentic-scope also runs at pre-push: run `pre-commit install --hook-type pre-push` "
        "to install that hook"
    )


# --- parser -----------------------------------------------------------------------------


class _Version(argparse.Action):
    """`--version`, looked up only when asked for (importlib.metadata is slow to import)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("pytest-agentic")
        except PackageNotFoundError:
            found = "unknown (not installed)"
        print(f"{PROG} {found}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    init_cmd = commands.add_parser(
        "init", help="write AGENTS.md, knowledge and pointer files, .gitignore lines, hooks"
    )
    init_cmd.add_argument("--dry-run", action="store_true", help="print the diff; write nothing")
    init_cmd.add_argument(
        "--no-verify",
        action="store_true",
        help="write the commands found without checking them (no collection, no make -n)",
    )
    init_cmd.set_defaults(func=init)

    task = commands.add_parser(
        "task", help="task specs: new, start, stop, list, show, check, verify, widen"
    )
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
    check = tasks.add_parser("check", help="validate every task spec; every problem, exit 1 on any")
    check.set_defaults(func=task_check)
    verify = tasks.add_parser(
        "verify", help="run the task's `verify` arguments with pytest (exit status of pytest)"
    )
    verify.add_argument("id", metavar="ID")
    verify.add_argument(
        "--fix",
        action="store_true",
        help="add --agent-fix, with ID as the active task for that run",
    )
    verify.set_defaults(func=task_verify)
    widen = tasks.add_parser("widen", help="add globs to a task's scope")
    widen.add_argument("id", metavar="ID")
    widen.add_argument("globs", nargs="+", metavar="GLOB")
    widen.set_defaults(func=task_widen)

    restore_cmd = commands.add_parser(
        "restore", help="put back every file a fix attempt left changed (after a crash or kill)"
    )
    restore_cmd.set_defaults(func=restore)
    report_cmd = commands.add_parser(
        "report", help="summarise a fix run (the newest by default), or print a transcript"
    )
    report_cmd.add_argument(
        "--format",
        choices=("text", "markdown"),
        default="text",
        help="text (as on the terminal) or markdown (a pull request body)",
    )
    report_cmd.add_argument(
        "--transcript",
        metavar="NODEID",
        help="print the conversations for this failure as text (a unique part of its id will do)",
    )
    report_cmd.add_argument("--run", metavar="RUN", help="a folder in .agentic/runs/ (or a path)")
    report_cmd.set_defaults(func=report)
    apply_cmd = commands.add_parser(
        "apply", help="apply a dry run's patches, only if every one applies cleanly"
    )
    apply_cmd.add_argument(
        "run", nargs="?", metavar="RUN", help="a folder in .agentic/runs/ (default: the newest)"
    )
    apply_cmd.set_defaults(func=apply)

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
