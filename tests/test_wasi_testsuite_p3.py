"""Conformance: the official wasi-testsuite's 37 WASI 0.3 programs, run through this host's
command line with the operations of the suite's own runner (devtools/conformance_p3.py;
the runner itself needs Python 3.12: wasi_tls_host/wasi_testsuite_adapter.py (``wasi-tls-host testsuite``) lets it run them
the same way).

Every program is expected to pass (cli, clocks, random, filesystem, sockets, run-with-err);
one that may not is listed with its reason, strictly.
"""

from __future__ import annotations

import pytest

from devtools.conformance_p3 import SUITE_P3, Case, discover, on_host, run_case

if not SUITE_P3.is_dir():
    pytest.skip(f"no WASI 0.3 wasi-testsuite at {SUITE_P3}: set WASI_TESTSUITE_P3 to the suite's folder "
                "(it lives outside the repository)", allow_module_level=True)

CASES = discover(SUITE_P3)

# Programs that fail here, each with why (strict: once one passes, the mark must go).
EXPECTED_FAILURES: dict[str, str] = {}


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, id=c.name, marks=[pytest.mark.xfail(reason=EXPECTED_FAILURES[c.name], strict=True)]
                     if c.name in EXPECTED_FAILURES else [])
        for c in CASES
    ],
)
def test_wasi_testsuite_p3(case: Case) -> None:
    outcome = run_case(case, on_host())
    assert outcome.passed, outcome.detail


def test_suite_is_complete() -> None:
    """The suite measured here has 37 programs; a partial copy must not pass silently."""
    assert len(CASES) == 37
    assert set(EXPECTED_FAILURES) <= {c.name for c in CASES}


def test_leftovers_of_an_earlier_run_are_removed_and_symlinks_not_followed(tmp_path) -> None:
    """filesystem-hard-links leaves ``parent.cleanup -> ..`` in the suite's directory when
    the official runner runs it in place: removing it must not follow it (rmtree refused)."""
    from devtools.conformance import remove_leftovers

    (tmp_path / "keep.txt").write_text("keep")
    (tmp_path / "parent.cleanup").symlink_to("..")
    (tmp_path / "dir.cleanup").mkdir()
    (tmp_path / "dir.cleanup" / "f").write_text("x")
    (tmp_path / "file.cleanup").write_text("x")
    remove_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
