"""Optional dependencies (pip extras) and the message when one is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from neurodl.errors import UsageError

# module to import -> the neurodl extra that installs it
EXTRAS = {"mlflow": "mlflow", "tensorboard": "tensorboard", "optuna": "tune"}


def require_extra(module: str, purpose: str) -> ModuleType:
    """Import an optional library, or stop with the ``pip install 'neurodl[EXTRA]'`` that provides it.

    Example:
        >>> optuna = require_extra("optuna", "neurodl tune")

    Raises:
        UsageError: the library is not installed (exit status 2).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = EXTRAS.get(module, module)
        raise UsageError(
            f"{purpose} needs the optional package '{module}', which is not installed ({exc}).",
            f"Install it with: pip install 'neurodl[{extra}]' (or 'neurodl[all]' for every optional feature).",
        ) from exc
