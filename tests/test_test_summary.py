"""tools/summarize_results.py: the totals line of `bash tools/test.sh` and its exit status (a part
that could not run is never counted as passed, and fails the run under CI=true)."""
from pathlib import Path

import pytest

from tests.conftest import load_script

REPO = Path(__file__).resolve().parents[1]


def _tool():
    return load_script("tools/summarize_results.py")


def _junit(path: Path, tests: int, failures: int = 0, errors: int = 0, skipped: int = 0) -> None:
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="{tests}" '
                    f'failures="{failures}" errors="{errors}" skipped="{skipped}"/></testsuites>')


@pytest.fixture
def results(tmp_path):
    _junit(tmp_path / "py3.11.xml", 10, skipped=1)
    _junit(tmp_path / "bpy-5.3.0.xml", 5)
    return tmp_path


def test_totals_over_every_part(results, capsys, monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert _tool().main([str(results)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "total: 14 passed, 0 failed, 1 skipped"
    assert "py3.11: 9 passed, 0 failed, 1 skipped" in lines


def test_failures_and_errors_fail_the_run(results, capsys):
    _junit(results / "bpy-4.2.23.xml", 3, failures=1, errors=1)
    assert _tool().main([str(results)]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "total: 15 passed, 2 failed, 1 skipped"


def test_a_part_that_could_not_run_is_never_passed(results, capsys, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    assert _tool().main([str(results), "--not-run", "py3.13 bpy-5.3.0"]) == 0  # a user's machine
    out = capsys.readouterr().out
    assert "py3.13: NOT RUN" in out and "bpy-5.3.0: NOT RUN" in out
    monkeypatch.setenv("CI", "true")
    assert _tool().main([str(results), "--not-run", "py3.13"]) == 1  # CI must run every part
    assert _tool().main([str(results), "--failed", "bpy-4.5.15"]) == 1  # a part that crashed without results
