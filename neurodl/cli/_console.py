"""The consoles commands write to: people on stderr, machines on stdout."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console


def err_console() -> Console:
    """Console on stderr for progress, tables and messages meant for people.

    Made on each call (it is cheap) so that tests capturing ``sys.stderr`` see it.
    """
    return Console(file=sys.stderr, highlight=False, soft_wrap=not sys.stderr.isatty())


def print_json(payload: Any) -> None:
    """Write a machine-readable result on stdout."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    sys.stdout.flush()
