"""``--help`` of every command in one style: no Python types, flags without a value, upper-case positionals."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer

from neurodl.cli import _help
from neurodl.cli.main import app


def _commands() -> Iterator[tuple[list[str], Any]]:
    _help.apply()

    def walk(command: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield path, command

    yield from walk(typer.main.get_command(app), [])


COMMANDS = list(_commands())


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=" ".join)
def test_help_has_one_style(run_cli, path: list[str]) -> None:
    result = run_cli(*path, "--help")
    assert result.exit_code == 0, result.output
    text = result.stdout + result.stderr
    assert "<bool>" not in text, "flags take no value"
    assert "list[" not in text and "Path>" not in text and "<str>" not in text, "Python types leak"
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage
    positionals = re.sub(r"\[OPTIONS\]", "", usage.split("neurodl", 1)[1]).split()[len(path) :]
    for word in positionals:
        name = word.strip("[].")
        assert name == name.upper(), f"positional '{word}' is not upper case in: {usage.strip()}"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_option_with_a_default_shows_it(path: list[str], command: Any) -> None:
    for param in command.params:
        if param.param_type_name != "option" or param.is_flag or param.required or param.hidden:
            continue
        if param.default in (None, "", [], ()):
            continue
        assert param.show_default is not False, f"{' '.join(path)} {param.opts[0]} hides its default"


def test_image_columns_name_their_default(run_cli) -> None:
    for path, flag in (("classify", "--image"), ("segment", "--image"), ("translate", "--source")):
        text = " ".join(run_cli(path, "train", "--help").stdout.split())
        assert re.search(rf"{flag} .*?\(default: t1\)", text), path


def test_descriptions_flow_as_sentences(run_cli) -> None:
    text = run_cli("segment", "predict", "--help").stdout
    assert "so an interrupted batch resumes; a bad input is reported" in " ".join(text.split())
    line = next(line for line in text.splitlines() if "interrupted batch resumes;" in line)
    assert "a bad input" in line, "a paragraph breaks mid-sentence"


def test_typo_suggestions_never_list_help(run_cli) -> None:
    result = run_cli("segment", "predict", "--overlapp", "x")
    assert result.exit_code == 2
    assert "--overlap" in result.stderr and "--help" not in result.stderr
