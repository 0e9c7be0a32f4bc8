"""The agent's tools on a real tree: what the model's calls do to files, and how they undo."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_agentic.agent import Toolbox
from pytest_agentic.config import DEFAULT_PROTECTED
from pytest_agentic.scope import PathPolicy
from pytest_agentic.workspace import Journal

CALC = "def add(a, b):\n    return a - b\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "calc.py").write_text(CALC)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests/test_calc.py").write_text("def test_add():\n    assert True\n")
    return tmp_path


@pytest.fixture
def toolbox(root: Path) -> Toolbox:
    policy = PathPolicy(root, protected=DEFAULT_PROTECTED, for_agent=True)
    return Toolbox(root, policy, Journal(root, "test"), lambda: "All 1 test(s) passed.")


def editor(toolbox: Toolbox, **params: object) -> tuple[str, bool]:
    return toolbox.call("str_replace_based_edit_tool", dict(params))


def tree(root: Path) -> dict[str, bytes | str]:
    """Every file (bytes), symlink (its target) and folder ("dir") under root, but .agentic."""
    entries: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(".agentic"):
            continue
        if path.is_symlink():
            entries[rel] = "-> " + str(path.readlink())
        elif path.is_dir():
            entries[rel] = "dir"
        else:
            entries[rel] = path.read_bytes()
    return entries


def test_an_edit_through_a_symlink_changes_the_target_and_keeps_the_link(
    root: Path, toolbox: Toolbox
) -> None:
    (root / "alias.py").symlink_to("calc.py")
    before = tree(root)
    result, is_error = editor(
        toolbox, command="str_replace", path="alias.py", old_str="a - b", new_str="a + b"
    )
    assert (result, is_error) == ("Edited calc.py.", False)
    assert (root / "alias.py").is_symlink()
    assert (root / "calc.py").read_text() == CALC.replace("a - b", "a + b")
    assert toolbox.journal.touched == ["calc.py"]
    toolbox.journal.restore()
    assert tree(root) == before


def test_a_symlink_may_not_carry_an_edit_into_a_test_file(root: Path, toolbox: Toolbox) -> None:
    (root / "helper.py").symlink_to("tests/test_calc.py")
    (root / "lib").symlink_to("tests", target_is_directory=True)
    before = tree(root)
    for path in ("helper.py", "lib/new_helper.py"):
        result, is_error = editor(toolbox, command="create", path=path, file_text="x = 1\n")
        assert is_error, path
        assert result.startswith(f"refused: {path} leads to tests/"), result
        assert "protected" in result
    assert tree(root) == before


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"command": "create", "path": "tests", "file_text": "x"}, "tests: is a folder"),
        ({"command": "create", "path": "calc.py/inner.py", "file_text": "x"}, "calc.py/inner.py"),
        ({"command": "view", "path": "calc.py", "view_range": ["1", "x"]}, "`view_range` must"),
        ({"command": "str_replace", "path": "calc.py", "old_str": "zzz"}, "occurs 0 times"),
        ({"command": "insert", "path": "calc.py", "insert_line": 99, "insert_text": "x"}, "0..2"),
        ({"command": "delete", "path": "calc.py"}, "unsupported command 'delete'"),
        ({"command": "view", "path": "nowhere.py"}, "nowhere.py: no such file"),
    ],
)
def test_bad_calls_come_back_as_errors_and_change_nothing(
    root: Path, toolbox: Toolbox, params: dict[str, object], message: str
) -> None:
    before = tree(root)
    result, is_error = editor(toolbox, **params)
    assert is_error
    assert message in result
    toolbox.journal.restore()
    assert tree(root) == before


def test_a_restore_removes_the_folders_an_attempt_created(root: Path, toolbox: Toolbox) -> None:
    before = tree(root)
    for path in ("pkg/sub/deep/mod.py", "pkg/other.py", "calc2.py"):
        assert editor(toolbox, command="create", path=path, file_text="x = 1\n")[1] is False
    (root / "pkg/sub/__pycache__").mkdir()  # what a re-run importing the new module leaves
    (root / "pkg/sub/__pycache__/deep.cpython-312.pyc").write_bytes(b"\0")
    assert (root / "pkg/sub/deep/mod.py").read_text() == "x = 1\n"
    toolbox.journal.restore()
    assert tree(root) == before


def test_a_restore_keeps_a_folder_the_user_filled_meanwhile(root: Path, toolbox: Toolbox) -> None:
    assert editor(toolbox, command="create", path="new/mod.py", file_text="x = 1\n")[1] is False
    (root / "new/notes.txt").write_text("mine")
    toolbox.journal.restore()
    assert not (root / "new/mod.py").exists()
    assert (root / "new/notes.txt").read_text() == "mine"


def test_view_lists_a_folder_and_numbers_lines(root: Path, toolbox: Toolbox) -> None:
    assert editor(toolbox, command="view", path=".") == ("calc.py\ntests/test_calc.py", False)
    assert editor(toolbox, command="view", path=str(root / "calc.py"), view_range=[2, -1]) == (
        "     2\t    return a - b",
        False,
    )


# --- issue #10: reads that leak, sizes that cost, inputs that crash, bytes that change ---------


def refused(result: tuple[str, bool], *needles: str) -> None:
    text, is_error = result
    assert is_error, text
    for needle in needles:
        assert needle in text, text


@pytest.fixture
def secrets(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Secrets around and inside the root, and symlinks that lead to them."""
    outside = tmp_path_factory.mktemp("outside") / "token.txt"
    outside.write_text("OUTSIDE-TOKEN-1234\n")
    (root / ".git").mkdir()
    (root / ".git/config").write_text("[remote]\nurl = https://user:GIT-TOKEN@example.com\n")
    (root / ".env").write_text("API_KEY=DOTENV-TOKEN\n")
    (root / "deploy.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    (root / "secrets").mkdir()
    (root / "secrets/db.py").write_text("PASSWORD = 'SECRETS-DIR-TOKEN'\n")
    (root / "pkg").mkdir()
    (root / "pkg/credentials.json").write_text('{"token": "CREDENTIALS-TOKEN"}\n')
    (root / "out_link.py").symlink_to(outside)
    (root / "environ.txt").symlink_to("/proc/self/environ")
    (root / "git_link").symlink_to(".git/config")
    (root / "env_link.py").symlink_to(".env")
    (root / "outdir").symlink_to(outside.parent, target_is_directory=True)
    return root


SECRET_PATHS = [
    ("out_link.py", "a symlink leads outside the project root"),
    ("environ.txt", "a symlink leads outside the project root"),
    ("outdir/token.txt", "a symlink leads outside the project root"),
    ("git_link", "a symlink leads into .git"),
    (".git/config", "inside .git"),
    (".env", "unreadable"),
    ("deploy.pem", "unreadable"),
    ("secrets/db.py", "unreadable"),
    ("pkg/credentials.json", "unreadable"),
    ("env_link.py", "unreadable"),
    ("../outside/token.txt", "outside the project root"),
]


@pytest.mark.parametrize(("path", "reason"), SECRET_PATHS)
def test_reads_of_secrets_and_through_symlinks_out_are_refused(
    secrets: Path, toolbox: Toolbox, path: str, reason: str
) -> None:
    refused(editor(toolbox, command="view", path=path), "refused:", reason)
    refused(editor(toolbox, command="view", path=path, view_range=[1, 5]), "refused:")


@pytest.mark.parametrize("path", [".env", ".env.local", "id_rsa", "secrets/new.py", "x.key"])
def test_secrets_are_not_writable_or_creatable_by_the_agent(
    secrets: Path, toolbox: Toolbox, path: str
) -> None:
    before = tree(secrets)
    refused(editor(toolbox, command="create", path=path, file_text="x"), "unreadable")
    refused(
        editor(toolbox, command="str_replace", path=path, old_str="API", new_str="x"), "refused"
    )
    assert tree(secrets) == before


def test_listings_and_searches_leave_secrets_out(secrets: Path, toolbox: Toolbox) -> None:
    listing, is_error = editor(toolbox, command="view", path=".")
    assert not is_error
    assert listing.splitlines() == ["calc.py", "tests/test_calc.py"]
    refused(editor(toolbox, command="view", path="secrets"), "secrets: unreadable")
    found, is_error = toolbox.call("search", {"pattern": "TOKEN|PRIVATE|PATH=|HOME="})
    assert not is_error
    assert found == "no matches"


def test_a_view_is_capped_with_a_note_on_view_range(root: Path) -> None:
    line = "x = 'a fairly long line of code to fill fifty megabytes quickly'\n"
    count = 50_000_000 // len(line)
    (root / "big.py").write_text(line * count)
    policy = PathPolicy(root, for_agent=True)
    toolbox = Toolbox(root, policy, Journal(root, "t"), lambda: "", view_max_chars=40_000)
    text, is_error = editor(toolbox, command="view", path="big.py")
    assert not is_error
    assert len(text) < 41_000
    *shown, note = text.splitlines()
    last = int(shown[-1].split("\t")[0])
    assert note.startswith(
        f"[output capped at view_max_chars (40000 characters): lines 1-{last} of {count} shown. "
        f'Ask for the rest with "view_range": [{last + 1}, '
    )
    text, _ = editor(toolbox, command="view", path="big.py", view_range=[last + 1, last + 3])
    assert [n.split("\t")[0].strip() for n in text.splitlines()] == [
        str(last + 1),
        str(last + 2),
        str(last + 3),
    ]
    # One enormous line is cut too.
    (root / "min.js").write_text("a" * 1_000_000)
    text, _ = editor(toolbox, command="view", path="min.js")
    assert len(text) < 41_000 and "lines 1-1 of 1 shown" not in text


@pytest.mark.parametrize(
    "params",
    [
        {"command": "create", "path": "huge.py", "file_text": "x" * (50 << 20)},
        {
            "command": "str_replace",
            "path": "calc.py",
            "old_str": "a - b",
            "new_str": "y" * (2 << 20),
        },
        {"command": "insert", "path": "calc.py", "insert_line": 1, "insert_text": "z" * (2 << 20)},
    ],
)
def test_writes_over_write_max_bytes_are_refused(
    root: Path, toolbox: Toolbox, params: dict[str, object]
) -> None:
    before = tree(root)
    refused(editor(toolbox, **params), "over write_max_bytes (1048576)", "not changed")
    assert tree(root) == before
    assert toolbox.journal.touched == []


def test_search_finds_lines_caps_results_and_skips_binary_and_huge_files(
    root: Path, toolbox: Toolbox
) -> None:
    (root / "pkg").mkdir()
    (root / "pkg/many.py").write_text("".join(f"hit_{n} = {n}\n" for n in range(500)))
    (root / "pkg/blob.bin").write_bytes(b"\0hit_binary\n")
    (root / "pkg/huge.py").write_text("hit_huge = 1\n" + "#" * (3 << 20))
    text, is_error = toolbox.call("search", {"pattern": r"return a [-+] b"})
    assert (text, is_error) == (
        "calc.py:2:    return a - b\n[1 file(s) over 2097152 bytes not searched]",
        False,
    )
    text, is_error = toolbox.call("search", {"pattern": r"^hit_\d+ =", "path": "pkg/"})
    lines = text.splitlines()
    assert lines[0] == "pkg/many.py:1:hit_0 = 0"
    assert len(lines) == 102  # 100 matches, the cap note, the skipped note
    assert lines[100] == "[capped at 100 matches: narrow the pattern or `path`]"
    assert "hit_binary" not in text and "hit_huge" not in text
    text, _ = toolbox.call("search", {"pattern": "def add", "path": "*.txt"})
    assert text == "no readable files match `path`"


def test_a_bad_or_catastrophic_regex_is_an_error_not_a_hang(root: Path) -> None:
    (root / "a.py").write_text("a" * 40 + "!\n")
    policy = PathPolicy(root, for_agent=True)
    toolbox = Toolbox(root, policy, Journal(root, "t"), lambda: "", search_seconds=1)
    refused(toolbox.call("search", {"pattern": "(unclosed"}), "bad regular expression")
    import time

    start = time.monotonic()
    refused(toolbox.call("search", {"pattern": r"(a+)+$"}), "search stopped after 1 s")
    assert time.monotonic() - start < 10


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        (
            "str_replace_based_edit_tool",
            {"command": "create", "path": "a\0b.py", "file_text": "x"},
            "NUL",
        ),
        (
            "str_replace_based_edit_tool",
            {"command": "str_replace", "path": "calc.py\0", "old_str": "a"},
            "NUL",
        ),
        ("str_replace_based_edit_tool", {"command": "view", "path": "\0"}, "NUL"),
        (
            "str_replace_based_edit_tool",
            {"command": "create", "path": ["calc.py"], "file_text": "x"},
            "`path` must be a string, not list",
        ),
        (
            "str_replace_based_edit_tool",
            {"command": "create", "path": "n.py", "file_text": 42},
            "`file_text` must be a string, not int",
        ),
        (
            "str_replace_based_edit_tool",
            {"command": "str_replace", "path": "calc.py", "old_str": "a - b", "new_str": {"x": 1}},
            "`new_str` must be a string",
        ),
        (
            "str_replace_based_edit_tool",
            {"command": "insert", "path": "calc.py", "insert_line": True, "insert_text": "x"},
            "`insert_line` must be an integer, not bool",
        ),
        (
            "str_replace_based_edit_tool",
            {"command": "view", "path": "calc.py", "view_range": "1-2"},
            "`view_range` must be a list",
        ),
        ("str_replace_based_edit_tool", {"command": ["view"]}, "unsupported command 'list'"),
        ("str_replace_based_edit_tool", ["not", "a", "dict"], "must be a JSON object"),
        ("search", {"pattern": 3}, "`pattern` must be a string, not int"),
        ("search", {"pattern": "x", "path": "a\0"}, "NUL"),
        ("give_up", {"reason": ["x"]}, "`reason` must be a string"),
    ],
)
def test_wrong_types_and_nul_bytes_are_errors_and_change_nothing(
    root: Path, toolbox: Toolbox, name: str, params: object, message: str
) -> None:
    before = tree(root)
    refused(toolbox.call(name, params), message)  # type: ignore[arg-type]
    assert tree(root) == before
    assert toolbox.gave_up is None


def test_nul_and_non_string_paths_are_refusals_in_the_policy(root: Path) -> None:
    policy = PathPolicy(root, for_agent=True)
    for bad in ("a\0b", 42, None, b"calc.py"):
        for check in (policy.check, policy.check_read):
            refusal = check(bad)  # type: ignore[arg-type]
            assert refusal is not None and "not" in refusal.reason, bad
        assert policy.relative(bad) is None  # type: ignore[arg-type]


def test_edits_keep_crlf_line_ends_and_undecodable_bytes(root: Path, toolbox: Toolbox) -> None:
    original = b"# caf\xe9 latin-1 comment\r\ndef add(a, b):\r\n    return a - b\r\n"
    (root / "win.py").write_bytes(original)
    text, _ = editor(toolbox, command="view", path="win.py")
    assert "\r" not in text and "     3\t    return a - b" in text
    assert editor(
        toolbox,
        command="str_replace",
        path="win.py",
        old_str="(a, b):\n    return a - b",
        new_str="(a, b):\n    return a + b",
    ) == ("Edited win.py.", False)
    assert (root / "win.py").read_bytes() == original.replace(b"a - b", b"a + b")
    assert (
        editor(toolbox, command="insert", path="win.py", insert_line=1, insert_text="import os\n")[
            1
        ]
        is False
    )
    assert (root / "win.py").read_bytes() == (
        b"# caf\xe9 latin-1 comment\r\nimport os\r\ndef add(a, b):\r\n    return a + b\r\n"
    )
    assert editor(toolbox, command="create", path="win.py", file_text="x = 1\ny = 2\n")[1] is False
    assert (root / "win.py").read_bytes() == b"x = 1\r\ny = 2\r\n"
    # An LF file stays LF; a mixed file keeps its mix.
    (root / "mixed.py").write_bytes(b"a = 1\r\nb = 2\nc = 3\n")
    assert (
        editor(toolbox, command="str_replace", path="mixed.py", old_str="c = 3", new_str="c = 4")[1]
        is False
    )
    assert (root / "mixed.py").read_bytes() == b"a = 1\r\nb = 2\nc = 4\n"
    toolbox.journal.restore()
    assert (root / "win.py").read_bytes() == original
