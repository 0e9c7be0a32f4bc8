"""The first message: the code the failing test reaches, found from real files, within budget."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from fake_anthropic import FakeAnthropic, done, edit, message
from pytest_agentic.context import first_message, reached_definitions
from pytest_agentic.fixer import Failure

# The reviewer (issue 9) is on by default and has its own tests (test_gate.py); the runs
# here are about other behaviour, so they leave it out rather than interleave a scripted
# review with every conversation.
NO_REVIEW = "--no-agent-review"


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def filler(count: int, start: int = 0) -> str:
    """`count` three-line functions: f_<start>..; each `return <i>`."""
    return "".join(f"def f_{i}():\n    return {i}\n\n" for i in range(start, start + count))


def prompt(root: Path, test_rel: str, test_name: str, **kwargs: object) -> str:
    lines = (root / test_rel).read_text().splitlines()
    lineno = next(n for n, line in enumerate(lines, 1) if f"def {test_name}(" in line)
    failure = Failure(
        nodeid=f"{test_rel}::{test_name}",
        when="call",
        report="AssertionError: assert 2 == 3",
        path=test_rel,
        lineno=lineno,
        frames=tuple(kwargs.pop("frames", ())),  # type: ignore[arg-type]
    )
    blocks = first_message(root, [failure], None, **kwargs)  # type: ignore[arg-type]
    assert len(blocks) == 1
    return str(blocks[0]["text"])


BUGGY = """\
def scaled_total(values, factor):
    total = 0
    for value in values:
        total += value * factor
    return total + 1  # the bug: a wrong return value, no exception
"""


@pytest.fixture
def long_module(tmp_path: Path) -> Path:
    """pkg/long.py: 1,000+ lines, the buggy function at line 700."""
    head = filler(233)  # 699 lines
    tail = filler(110, start=1000)
    write(tmp_path, "pkg/__init__.py", "")
    write(tmp_path, "pkg/long.py", head + BUGGY + "\n\n" + tail)
    write(
        tmp_path,
        "tests/test_long.py",
        """\
        from pkg.long import scaled_total


        def test_other():
            assert True


        def test_scaled_total():
            assert scaled_total([1, 2], 1) == 3
        """,
    )
    lines = (tmp_path / "pkg/long.py").read_text().splitlines()
    assert len(lines) > 1000 and lines[699] == "def scaled_total(values, factor):"
    return tmp_path


def test_a_wrong_value_deep_in_a_long_module_shows_the_whole_function_not_the_top(
    long_module: Path,
) -> None:
    text = prompt(long_module, "tests/test_long.py", "test_scaled_total")
    assert "pkg/long.py:700-704 scaled_total()" in text
    for number, line in enumerate(BUGGY.splitlines(), start=700):
        assert f"{number:5} {line}" in text  # every line of the body, with its number
    assert "def f_0()" not in text and "def f_99()" not in text  # nothing of lines 1-300
    code = text.split("Definitions the test reaches")[1]  # after the test's own source
    assert not re.search(r"^\s+(?:[1-9]|[1-9]\d|[12]\d\d|300) ", code, re.M)
    assert "Imported by the test" not in text
    assert "Already shown above: pkg/long.py:700-704 scaled_total()" in text


def test_the_top_of_a_module_is_shown_only_when_nothing_resolves(tmp_path: Path) -> None:
    write(tmp_path, "calc.py", "import operator\n\nadd = getattr(operator, 'add')\n")
    write(
        tmp_path,
        "test_calc.py",
        """\
        import calc


        def test_add():
            assert calc.add(1, 2) == 3
        """,
    )
    text = prompt(tmp_path, "test_calc.py", "test_add")
    assert "Imported by the test: calc.py" in text
    assert "    3 add = getattr(operator, 'add')" in text
    assert "Already shown above: calc.py:1-3." in text


@pytest.mark.parametrize(
    "init",
    ["from .mod import f\n", "from pkg.mod import f\n", "from .mod import *\n"],
    ids=["relative", "absolute", "star"],
)
def test_a_name_re_exported_by_a_package_resolves_to_its_module(tmp_path: Path, init: str) -> None:
    write(tmp_path, "src/pkg/__init__.py", init)
    write(tmp_path, "src/pkg/mod.py", filler(200) + "def f(x):\n    return x * 3\n")
    write(
        tmp_path,
        "tests/test_pkg.py",
        """\
        from pkg import f


        def test_f():
            assert f(1) == 2
        """,
    )
    text = prompt(tmp_path, "tests/test_pkg.py", "test_f")
    assert "src/pkg/mod.py:601-602 f()" in text
    assert "  602     return x * 3" in text


def test_a_re_export_cycle_ends(tmp_path: Path) -> None:
    write(tmp_path, "pkg/__init__.py", "from .a import *\n")
    write(tmp_path, "pkg/a.py", "from .b import *\n")
    write(tmp_path, "pkg/b.py", "from .a import *\nfrom . import *\n")
    write(tmp_path, "test_cycle.py", "from pkg import nowhere\n\n\ndef test_x():\n    nowhere()\n")
    assert reached_definitions(tmp_path, "test_cycle.py", 4) == []


CALC_CLASS = """\
class Base:
    def describe(self):
        return "calc"


class Calc(Base):
    def __init__(self):
        self.calls = 0

    def add(self, a, b):
        self.calls += 1
        return self._combine(a, b)

    def _combine(self, a, b):
        return a - b

    def unused(self):
        return None
"""


def test_a_method_called_on_an_instance_resolves_to_its_class(tmp_path: Path) -> None:
    write(tmp_path, "calc.py", filler(100) + CALC_CLASS)
    write(
        tmp_path,
        "test_calc.py",
        """\
        from calc import Calc


        def test_add():
            c = Calc()
            assert c.add(2, 3) == 5
            assert c.describe() == "calc"
        """,
    )
    definitions = {d.label: d for d in reached_definitions(tmp_path, "test_calc.py", 4)}
    # Calling it on the instance reaches the method, the class and its constructor; the
    # method's own `self._combine` one level further; an inherited method in the base class.
    assert definitions["Calc.add()"].depth == 0
    assert definitions["class Calc"].depth == 0
    assert definitions["Calc.__init__()"].depth == 0
    assert definitions["Base.describe()"].depth == 0
    assert definitions["Calc._combine()"].depth == 1
    text = prompt(tmp_path, "test_calc.py", "test_add")
    # The class is small: shown whole once, not again method by method.
    assert "calc.py:306-318 class Calc" in text
    assert "  315         return a - b" in text
    assert text.count("def add(self, a, b)") == 1


def test_a_method_of_a_class_too_big_for_the_budget_comes_with_its_class_line(
    tmp_path: Path,
) -> None:
    big = "".join(f"    def m{i}(self):\n        return {i}\n\n" for i in range(300))
    source = "class Big:\n" + big + "    def total(self):\n        return 41\n"
    write(tmp_path, "big.py", source)
    write(
        tmp_path,
        "tests/test_big.py",
        """\
        import pytest

        from big import Big


        @pytest.fixture
        def big():
            return Big()


        def test_total(big):
            assert big.total() == 42
        """,
    )
    text = prompt(tmp_path, "tests/test_big.py", "test_total", max_chars=4000)
    # The fixture returns Big(), so `big.total()` is Big.total.
    assert "big.py:902-903 Big.total()" in text
    assert "    1 class Big:\n  ...\n  902     def total(self):\n  903         return 41" in text
    assert "Also reached, not shown (over the size budget): big.py:1-903 class Big" in text
    assert "def m150" not in text


def test_the_budget_is_honoured_smallest_first(tmp_path: Path) -> None:
    functions = []
    for i in range(40):
        body = "".join(f"    x += {j}\n" for j in range(i * 3))
        functions.append(f"def g{i}(x):\n{body}    return x\n")
    write(tmp_path, "many.py", "\n\n".join(functions))
    calls = "\n".join(f"    many.g{i}(1)" for i in reversed(range(40)))
    write(tmp_path, "test_many.py", f"import many\n\n\ndef test_all():\n{calls}\n")
    budget = 6000
    text = prompt(tmp_path, "test_many.py", "test_all", max_chars=budget)
    shown = re.findall(r"^many\.py:\d+-\d+ g(\d+)\(\)\n```python\n(.*?)\n```", text, re.M | re.S)
    assert 5 < len(shown) < 40
    assert sum(len(body) for _, body in shown) <= budget
    assert [int(i) for i, _ in shown] == list(range(len(shown)))  # smallest first
    left = text.split("Also reached, not shown (over the size budget): ")[1].split("\n")[0]
    assert f"g{len(shown)}()" in left
    assert re.search(r" and \d+ more$", left)  # more than the listed twenty


def test_one_definition_bigger_than_the_budget_is_listed_not_cut(tmp_path: Path) -> None:
    body = "".join(f"    x += {j}\n" for j in range(500))
    write(tmp_path, "huge.py", f"def huge(x):\n{body}    return x\n")
    write(tmp_path, "test_huge.py", "from huge import huge\n\n\ndef test_h():\n    huge(1)\n")
    text = prompt(tmp_path, "test_huge.py", "test_h", max_chars=2000)
    assert "x += 1\n" not in text
    assert "Also reached, not shown (over the size budget): huge.py:1-502 huge()" in text
    assert "Imported by the test" not in text  # it resolved; the top is not a fallback


def test_traceback_frames_keep_their_excerpts(tmp_path: Path) -> None:
    write(tmp_path, "pkg/__init__.py", "")
    write(
        tmp_path,
        "pkg/parse.py",
        filler(50) + "def parse(text):\n    return helper(text)\n\n\n"
        "def helper(text):\n    raise ValueError(text)\n",
    )
    write(
        tmp_path,
        "test_parse.py",
        "from pkg.parse import parse\n\n\ndef test_parse():\n    assert parse('x')\n",
    )
    frame = (str(tmp_path / "pkg/parse.py"), 156)
    text = prompt(
        tmp_path,
        "test_parse.py",
        "test_parse",
        frames=[(str(tmp_path / "test_parse.py"), 5)] + [frame],
    )
    assert "Source around pkg/parse.py:156:" in text
    assert "  145 def f_48():" in text  # 12 lines of context before
    assert "  156     raise ValueError(text)" in text
    assert "pkg/parse.py:151-152 parse()" in text  # and the definitions, too
    assert "pkg/parse.py:155-156 helper()" in text  # one level down
    assert "Already shown above: pkg/parse.py:144-156; " in text


def test_a_symlink_out_of_the_root_is_never_read(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside, "secret.py", "def leak():\n    return 'TOKEN-1234'\n")
    root = tmp_path / "project"
    write(root, "test_leak.py", "from secret import leak\n\n\ndef test_leak():\n    leak()\n")
    (root / "secret.py").symlink_to(outside / "secret.py")
    text = prompt(root, "test_leak.py", "test_leak")
    assert "TOKEN-1234" not in text


def test_unparsable_or_missing_project_files_are_skipped(tmp_path: Path) -> None:
    write(tmp_path, "broken.py", "def f(:\n")
    write(tmp_path, "test_b.py", "from broken import f\nimport gone\n\n\ndef test_b():\n    f()\n")
    text = prompt(tmp_path, "test_b.py", "test_b")
    assert "## test_b.py::test_b (failure)" in text
    assert "Definitions the test reaches" not in text


# --- end to end --------------------------------------------------------------------------------


def test_the_agent_gets_the_buggy_function_and_fixes_it(
    pytester: pytest.Pytester, long_module: Path, fake_anthropic: FakeAnthropic
) -> None:
    for rel in ("pkg/__init__.py", "pkg/long.py", "tests/test_long.py"):
        target = pytester.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text((long_module / rel).read_text())
    pytester.makepyprojecttoml(
        '[tool.pytest.ini_options]\npythonpath = ["."]\n'
        "[tool.pytest-agentic]\ncontext_max_chars = 5000\n"
    )
    fake_anthropic.reply(
        message(edit("pkg/long.py", "return total + 1  # the bug", "return total  # the bug")),
        done(),
    )
    result = pytester.runpytest("--agent-fix", NO_REVIEW)
    assert result.ret == 0
    request = fake_anthropic.requests[0].body
    text = request["messages"][0]["content"][0]["text"]
    assert "- tests/test_long.py::test_scaled_total" in text
    assert "  704     return total + 1  # the bug: a wrong return value, no exception" in text
    assert "def f_0()" not in text
    assert "Already shown above: pkg/long.py:700-704 scaled_total()" in text
    assert "view_range" in request["system"][0]["text"]


def test_absurdly_deep_code_falls_back_without_crashing(tmp_path: Path) -> None:
    # Parses, but following the attribute chain recurses past Python's limit.
    chain = "g" + ".a" * 1500
    write(tmp_path, "deep.py", f"def g(y):\n    return y\n\n\ndef f(x):\n    return {chain}\n")
    write(tmp_path, "test_deep.py", "from deep import f\n\n\ndef test_d():\n    f(1)\n")
    text = prompt(tmp_path, "test_deep.py", "test_d")
    assert "Imported by the test: deep.py" in text


PROBE = """\
import gc, json, os, sys

def _state():
    return {
        "gc": gc.isenabled(),
        "frozen": gc.get_freeze_count(),
        "hooks": [i for i, f in enumerate(sys.meta_path)
                  if type(f).__name__ == "AssertionRewritingHook"],
    }

def pytest_configure(config):
    if USER_FREEZE:
        gc.freeze()
    config._probe_before = _state()

def pytest_unconfigure(config):
    if os.environ.get("PYTEST_AGENTIC_RERUN"):
        return  # a re-run: the probe is of the session that ran the fix loop
    after = dict(_state(), sdk="anthropic" in sys.modules)
    with open("probe.json", "w") as f:
        json.dump({"before": config._probe_before, "after": after}, f)
"""


@pytest.mark.parametrize("user_freeze", [False, True], ids=["plain", "user-froze-objects"])
def test_the_sdk_import_leaves_the_interpreter_as_it_found_it(
    pytester: pytest.Pytester, fake_anthropic: FakeAnthropic, user_freeze: bool
) -> None:
    # Issue 13: the SDK is imported in a thread during the confirm re-run, with the garbage
    # collector off, its objects then frozen, and pytest's assertion-rewriting hook out of
    # the way (it would look at each of the SDK's ~1,500 modules). After the run all of
    # that is undone: collector on, nothing frozen, the hook back where it was.
    import json

    pytester.makeconftest(f"USER_FREEZE = {user_freeze}\n" + PROBE)
    pytester.makepyfile(
        lib="def double(x):\n    return x * 3\n",
        test_lib="from lib import double\n\ndef test_double():\n    assert double(2) == 4\n",
    )
    pytester.makepyprojecttoml('[tool.pytest.ini_options]\npythonpath = ["."]\n')
    fake_anthropic.reply(message(edit("lib.py", "x * 3", "x * 2")), done())
    result = pytester.runpytest_subprocess("--agent-fix", NO_REVIEW)
    assert result.ret == 0, result.stdout.str()
    probe = json.loads((pytester.path / "probe.json").read_text())
    assert probe["after"]["sdk"]  # imported in this process, so the undoing was exercised
    before, after = probe["before"], probe["after"]
    assert before["gc"] and before["hooks"]
    assert (after["gc"], after["hooks"]) == (before["gc"], before["hooks"])
    if user_freeze:  # theirs, not thawed by us (objects freed meanwhile leave the count)
        assert after["frozen"] > 0
    else:
        assert after["frozen"] == 0
    assert "x * 2" in (pytester.path / "lib.py").read_text()


def _double_project(pytester: pytest.Pytester, tests: str) -> None:
    pytester.makepyfile(lib="def double(x):\n    return x * 3\n", test_lib=tests)
    pytester.makepyprojecttoml('[tool.pytest.ini_options]\npythonpath = ["."]\n')


def test_the_sdk_never_imports_beside_the_users_tests(
    pytester: pytest.Pytester, fake_anthropic: FakeAnthropic
) -> None:
    # Without xdist the tests run in this process: the import waits for the session's end
    # (a thread beside them would slow them, and a fork() meanwhile warns or deadlocks).
    _double_project(
        pytester,
        "import sys, threading\n"
        "from lib import double\n\n"
        "def test_a_fails():\n    assert double(2) == 4\n\n"
        "def test_b_runs_after_a_failure():\n"
        '    assert "anthropic" not in sys.modules\n'
        '    assert "agentic-client" not in [t.name for t in threading.enumerate()]\n',
    )
    fake_anthropic.reply(message(edit("lib.py", "x * 3", "x * 2")), done())
    result = pytester.runpytest_subprocess("--agent-fix", NO_REVIEW, "-p", "no:randomly")
    result.assert_outcomes(failed=1, passed=1)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["fixed in 1 attempt: test_lib.py::test_a_fails"])


XDIST_PROBE = """\
import json, os, sys, threading
import pytest

@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    if os.environ.get("PYTEST_AGENTIC_RERUN") or hasattr(session.config, "workerinput"):
        return
    names = [t.name for t in threading.enumerate()]
    started = "anthropic" in sys.modules or "agentic-client" in names
    with open("probe.json", "w") as f:
        json.dump({"started": started}, f)
"""


def test_under_xdist_the_sdk_imports_in_the_controller_during_the_session(
    pytester: pytest.Pytester, fake_anthropic: FakeAnthropic
) -> None:
    # The controller runs no test: its import starts at the first failure, so by the end of
    # the session (before the fix loop's sessionfinish) it is under way or done.
    import json

    pytester.makeconftest(XDIST_PROBE)
    _double_project(
        pytester,
        "from lib import double\n\n"
        "def test_a_fails():\n    assert double(2) == 4\n\n"
        "def test_b():\n    pass\n",
    )
    fake_anthropic.reply(message(edit("lib.py", "x * 3", "x * 2")), done())
    result = pytester.runpytest_subprocess("-n", "2", "--agent-fix", NO_REVIEW)
    assert result.ret == 0, result.stdout.str()
    assert json.loads((pytester.path / "probe.json").read_text()) == {"started": True}
    assert "x * 2" in (pytester.path / "lib.py").read_text()
