"""Run every command of docs/guide.md, in order, the way a reader would.

The rules, so that the guide and this test stay in step:

- Every line of a ```bash block is a command (a trailing ``\\`` continues it on
  the next line); blank lines and other comments are skipped.
- ``neurodl ...`` lines run in-process (``run_cli``, the leading ``neurodl``
  dropped, ``shlex.split``); any other line (e.g. ``head`` to split a table)
  runs in ``bash``. All run in a temporary folder holding a symlink to the
  repository's ``sample_data/``, so the guide's relative ``runs/...`` outputs
  never touch the repository.
- A comment ``# exit N`` on the line before a command says that the command
  must exit with N (e.g. the diverging learning rate, exit 1); every other
  command must exit with 0.
- The reduced setting: every ``train`` command (``biomarkers train``,
  ``classify train``, ``segment train``, ``train-ae``...) runs with
  ``--epochs 2``, replacing the guide's ``--epochs N`` or added to it; nothing
  else changes. A command marked ``# exit N`` (N > 0) runs exactly as written,
  so that the failure it shows is the real one (the diverging ``--lr`` fails at
  epoch 22 of its default 300, in well under a second).
- Every figure the guide shows (``guide/*.png``) is committed in docs/guide/.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "guide.md"
REDUCED_EPOCHS = 2


@dataclass(frozen=True)
class GuideCommand:
    line: int
    text: str
    expected_exit: int

    @property
    def is_neurodl(self) -> bool:
        return self.text.split(maxsplit=1)[0] == "neurodl"


def guide_commands(markdown: str) -> list[GuideCommand]:
    """The commands of the ```bash blocks, each with its expected exit code."""
    commands: list[GuideCommand] = []
    in_bash = False
    expected = 0
    pending = ""
    start = 0
    for number, raw in enumerate(markdown.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            in_bash = not in_bash and stripped == "```bash"
            continue
        if not in_bash:
            continue
        if not pending:
            if not stripped:
                continue
            marker = re.fullmatch(r"#\s*exit\s+(\d+)", stripped)
            if marker:
                expected = int(marker.group(1))
                continue
            if stripped.startswith("#"):
                continue
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        commands.append(GuideCommand(start, pending + stripped, expected))
        pending, expected = "", 0
    return commands


def _set(argv: list[str], option: str, value: str) -> list[str]:
    """``argv`` with ``option`` set to ``value`` (replaced where given, added at the end)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(f"{option}="):
            out.append(arg)
    return [*out, option, value]


def reduced(argv: list[str]) -> list[str]:
    """The arguments of a ``train`` command with ``--epochs`` set to the test's setting.

    A ``tune`` command also runs 2 trials (of 2 epochs each).
    """
    if argv[:1] == ["tune"]:
        return _set(_set(argv, "--epochs", str(REDUCED_EPOCHS)), "--trials", "2")
    if not (argv[:1] == ["train-ae"] or argv[1:2] == ["train"]):
        return argv
    return _set(argv, "--epochs", str(REDUCED_EPOCHS))


def test_guide_parses() -> None:
    commands = guide_commands(GUIDE.read_text(encoding="utf-8"))
    assert len(commands) > 20
    assert any(c.expected_exit == 1 for c in commands), "the guide shows a diverging run"
    assert reduced(["biomarkers", "train", "t.tsv", "--epochs", "1000", "-q"])[-3:] == ["-q", "--epochs", "2"]
    assert reduced(["train-ae", "m.tsv"]) == ["train-ae", "m.tsv", "--epochs", "2"]
    assert reduced(["compare", "runs/a"]) == ["compare", "runs/a"]
    assert reduced(["tune", "biomarkers", "t.tsv", "--trials", "20"])[-2:] == ["--trials", "2"]


def test_guide_figures_are_committed() -> None:
    markdown = GUIDE.read_text(encoding="utf-8")
    figures = re.findall(r"!\[[^\]]*\]\((guide/[^)]+)\)", markdown)
    assert figures
    for figure in figures:
        path = GUIDE.parent / figure
        assert path.is_file(), f"{figure} is shown in guide.md but not committed"
        assert path.stat().st_size < 200_000, f"{figure} is larger than 200 kB"


@pytest.mark.slow
def test_guide_commands_run(
    run_cli: Callable[..., object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sample_data").symlink_to(REPO / "sample_data", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    timings: list[str] = []
    for command in guide_commands(GUIDE.read_text(encoding="utf-8")):
        started = time.perf_counter()
        if command.is_neurodl:
            argv = shlex.split(command.text)[1:]
            result = run_cli(*(argv if command.expected_exit else reduced(argv)))
            code, output = result.exit_code, result.output  # type: ignore[attr-defined]
        else:
            done = subprocess.run(["bash", "-c", command.text], capture_output=True, text=True, check=False)
            code, output = done.returncode, done.stdout + done.stderr
        timings.append(f"{time.perf_counter() - started:6.1f} s  guide.md:{command.line}  {command.text}")
        assert code == command.expected_exit, (
            f"guide.md:{command.line}: `{command.text}` exited with {code}, "
            f"expected {command.expected_exit}\n{output[-3000:]}"
        )
    print("\n".join(timings))  # shown by pytest -rP: where the time goes
