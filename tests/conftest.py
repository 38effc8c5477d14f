"""Shared fixtures: run the real CLI and capture what a user would see."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from neurodl.cli.main import main
from neurodl_testing import CliResult


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliResult]:
    """Call ``neurodl ARGS...`` in-process; returns exit code, stdout and stderr."""
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: str | Path) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(int(code), captured.out, captured.err)

    return run
