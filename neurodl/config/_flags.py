"""How an option set's fields are typed on the command line: ``option()``, :class:`Flag` and the ``--help`` panels.

Plain data, read by ``neurodl.cli`` to build each task's ``train`` command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The panels of a ``train --help``, in the order shown (a flag without one is in the first, "Options").
IMAGES = "Images and preprocessing"
MODEL = "Model"
TRAINING = "Training"
TRACKING = "Tracking"
PANELS = ("", IMAGES, MODEL, TRAINING, TRACKING)


@dataclass(frozen=True)
class Flag:
    """How a field of an option set is typed on the command line: plain data, read by ``neurodl.cli``.

    ``parse`` names how the typed text becomes the value: ``items`` (comma-separated names),
    ``ints``, ``floats``, ``hidden`` (layer sizes, or none), ``batch_size`` (a number, or all);
    empty: the field's own type. ``repeat``: the flag may be given several times. ``after``:
    listed in ``--help`` after that field's flag rather than in field order.
    """

    names: tuple[str, ...]
    help: str
    panel: str = ""
    parse: str = ""
    repeat: bool = False
    metavar: str = ""
    envvar: str = ""
    after: str = ""


# How a task's command shows fields of its nested option sets where that differs from their own
# flag: the Flag attributes that change, or None for no flag (the field can still be set in --config).
FlagChanges = dict[str, dict[str, Any] | None]


def option(default: Any, *names: str, help: str, **shown: Any) -> Any:
    """A field with its default and its flag: ``lr: float = option(1e-3, "--lr", help="Step size.")``."""
    return field(default=default, metadata={"flag": Flag(names, help, **shown)})
