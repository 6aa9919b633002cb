"""Conformance: the Component Model's own async tests (``test/async/*.wast``, from
``../shared/wit-reference/component-model``) on the core runtime, file by file.

Every file must pass every command, except those ``devtools.spec_async.KNOWN_FAILURES``
lists with the reason (each expected to fail, strictly; ``python -m devtools.spec_async``
prints the whole table with counts). A file that ``wasm-tools`` can no
longer convert (syntax the spec dropped since) is skipped with the tool's message.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.spec_async import KNOWN_FAILURES, SPEC_DIR, run_file, spec_files

if not spec_files():
    pytest.skip(f"no Component Model spec tests at {SPEC_DIR}: set COMPONENT_MODEL_TESTS (they live outside the repository)",
                allow_module_level=True)


@pytest.mark.parametrize("wast", spec_files(), ids=lambda p: p.stem)
def test_spec_async(wast: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if wast.stem in KNOWN_FAILURES:
        request.applymarker(pytest.mark.xfail(reason=KNOWN_FAILURES[wast.stem], strict=True))
    outcome = run_file(wast, tmp_path)
    if outcome.status in ("composed", "unconvertible"):
        pytest.skip(outcome.detail)
    assert outcome.status == "pass", "\n".join(outcome.failures)
    assert outcome.passed == outcome.commands > 0
