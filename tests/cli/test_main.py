"""The `neurodl` entry point: help, version, exit codes, --debug, and a light import."""

from __future__ import annotations

import subprocess
import sys

from neurodl import __version__

HEAVY = {"torch", "monai", "pandas", "matplotlib"}


def test_help_lists_commands(run_cli):
    result = run_cli("--help")
    assert result.exit_code == 0
    for command in ("info", "check", "sample-data", "models"):
        assert command in result.output


def test_version(run_cli):
    result = run_cli("--version")
    assert result.exit_code == 0
    assert f"neurodl {__version__}" in result.output


def test_command_help(run_cli):
    for command in ("info", "check"):
        result = run_cli(command, "--help")
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output


def test_unknown_command_exits_2(run_cli):
    result = run_cli("nonsense")
    assert result.exit_code == 2
    assert "nonsense" in result.output


def test_unknown_option_exits_2(run_cli):
    result = run_cli("info", "--no-such-option", "x.nii")
    assert result.exit_code == 2


def test_debug_is_accepted_anywhere(run_cli):
    assert run_cli("--debug", "--version").exit_code == 0
    assert run_cli("--version", "--debug").exit_code == 0
    assert run_cli("info", "--debug", "--help").exit_code == 0


def test_user_error_has_no_traceback_unless_debug(run_cli, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("participant_id,t1\nsub-01,a.nii.gz\n")

    plain = run_cli("check", manifest, "--image", "flair")
    assert plain.exit_code == 2
    assert "Error:" in plain.stderr and "Fix:" in plain.stderr
    assert "Traceback" not in plain.output

    debug = run_cli("check", manifest, "--image", "flair", "--debug")
    assert debug.exit_code == 2
    assert "Traceback" in debug.stderr


def _imported_modules(code: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        check=True,
    )
    names = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_cli_import_is_light():
    imported = _imported_modules("import neurodl.cli.main")
    assert "typer" in imported  # the parse worked
    assert not imported & HEAVY, f"neurodl --help imports {sorted(imported & HEAVY)}"


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "neurodl", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert __version__ in result.stdout
