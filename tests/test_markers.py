"""The fast loop stays fast: a fault test without the `slow` marker stops the run instead of slipping into
`-m "not slow"`. Checked on a throwaway tree run by pytester, with the rule tests/conftest.py applies."""

from __future__ import annotations

import pytest

CONFTEST = """
from pathlib import Path

from tests.support.markers import require_marker


def pytest_collection_modifyitems(items):
    require_marker(items, Path(__file__).resolve().parent / "faults", "slow")
"""
MARKED = "import pytest\n\npytestmark = pytest.mark.slow\n\n\ndef test_kill():\n    pass\n"
UNMARKED = "def test_restart():\n    pass\n"


@pytest.fixture
def tree(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\nmarkers =\n    slow: system-level\n")
    (pytester.mkdir("faults") / "test_marked_faults.py").write_text(MARKED)
    (pytester.path / "test_unit.py").write_text("def test_unit():\n    pass\n")
    return pytester


def test_a_fault_test_without_the_marker_is_a_usage_error_naming_it(tree: pytest.Pytester) -> None:
    (tree.path / "faults" / "test_unmarked_faults.py").write_text(UNMARKED)
    result = tree.runpytest("-m", "not slow")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*must be marked 'slow'*", "*faults/test_unmarked_faults.py::test_restart*"])
    assert "test_marked_faults" not in result.stderr.str()


def test_marked_fault_tests_are_left_out_of_the_fast_loop(tree: pytest.Pytester) -> None:
    result = tree.runpytest("-m", "not slow")
    result.assert_outcomes(passed=1, deselected=1)


def test_the_whole_suite_still_runs_them(tree: pytest.Pytester) -> None:
    tree.runpytest().assert_outcomes(passed=2)
