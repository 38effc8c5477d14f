"""Errors a user can act on.

Every error that reaches the user is a :class:`NeurodlError`: it carries what is
wrong (naming the file, row or column) and how to fix it. One place in
``neurodl.cli.main`` turns them into an exit code and a message; nothing else
in the package prints or exits.
"""

from __future__ import annotations

from enum import IntEnum
from pathlib import Path


class ExitStatus(IntEnum):
    """Process exit codes, the same for every command."""

    SUCCESS = 0
    RUN_FAILED = 1
    BAD_INPUT = 2
    INTERRUPTED = 130


class NeurodlError(Exception):
    """Base class: a problem the user can fix.

    Args:
        message: what is wrong, naming the file, row or column.
        fix: what to do about it (optional, shown on its own line).
    """

    exit_status = ExitStatus.BAD_INPUT

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return self.message if not self.fix else f"{self.message}\nFix: {self.fix}"


class UsageError(NeurodlError):
    """An option value or a combination of options that cannot work."""


class InputFileError(NeurodlError):
    """An input file is missing, unreadable or not what the command expects."""

    def __init__(self, path: str | Path, message: str, fix: str | None = None) -> None:
        super().__init__(f"{path}: {message}", fix)
        self.path = Path(path)


class ImageError(InputFileError):
    """A NIfTI file that cannot be read, or whose shape or values are unusable."""


class ManifestError(NeurodlError):
    """A manifest (CSV/TSV) with a missing column, a bad value or missing files."""


class DataError(NeurodlError):
    """Data that is readable but cannot be trained on (one class, NaNs, too few rows)."""


class RunDirectoryError(NeurodlError):
    """A run directory that is missing, incomplete, from another task or tampered with."""


class OutputError(NeurodlError):
    """An output path that would overwrite an input or an existing result."""


class NothingToDo(NeurodlError):
    """A command that finds its work already done (e.g. ``--resume`` on a finished run): exit 0."""

    exit_status = ExitStatus.SUCCESS


class TrainingFailed(NeurodlError):
    """A run that started but failed (for example, the loss became NaN)."""

    exit_status = ExitStatus.RUN_FAILED


class Interrupted(NeurodlError):
    """Ctrl-C during a run; the last checkpoint was kept."""

    exit_status = ExitStatus.INTERRUPTED
