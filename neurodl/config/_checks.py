"""The checks option sets run in ``__post_init__``: each refusal names the flag and the value."""

from __future__ import annotations

from neurodl.errors import UsageError


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"--{name.replace('_', '-')} '{value}' is not one of: {', '.join(choices)}.")


def check_positive(name: str, value: float) -> None:
    if value <= 0:
        raise UsageError(f"--{name.replace('_', '-')} must be > 0, not {value}.")


def check_cv(cv: int) -> None:
    """``--cv``: 0 (one train/validation split) or at least 2 folds."""
    if cv == 1 or cv < 0:
        raise UsageError(f"--cv must be 0 (no cross-validation) or at least 2, not {cv}.")


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """An image task's ``--val-fraction`` (in (0, 1)) and ``--test-fraction`` (in [0, 0.9))."""
    if not 0 < val_fraction < 1 or not 0 <= test_fraction < 0.9:
        raise UsageError(
            f"--val-fraction must be in (0, 1) and --test-fraction in [0, 0.9) (got {val_fraction}, {test_fraction})."
        )
