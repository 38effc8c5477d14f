"""One style for every command's ``--help``, as users of git, uv or nnU-Net expect.

- Positional arguments are upper case everywhere: ``MANIFEST`` (required),
  ``[MANIFEST]`` (optional), ``INPUTS...`` (one or more).
- A flag shows no value type; an option that takes a value shows what to type
  (``<int>``, ``<float>``, ``<text>``, ``<path>``, ``<file>``, ``<dir>``), never a
  Python type (``<list[Path]>`` reads ``<path>``; repeating the option adds more).
- A description's paragraphs flow: a line break inside a docstring paragraph is a space.
- Typo suggestions never offer ``--help``.

Typer renders help from its parameter classes, so the style is applied to them once
(:func:`apply`) and to each command tree's help text (:func:`tidy`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_PYTHON_TYPES = {"str": "text", "Path": "path", "bool": "text"}
_applied = False
_typer_display_type: Callable[[Any, Any], str | None] | None = None  # Typer's own, kept by apply()


def _upper_name(param: Any) -> str:
    return str(param.metavar or param.name).upper()


def _value_type(param: Any, ctx: Any) -> str | None:
    """``<int>``, ``<text>``, ``<path>``...; None for a flag (it takes no value)."""
    if getattr(param, "is_flag", False) or getattr(param, "is_bool_flag", False):
        return None
    shown = _typer_display_type(param, ctx) if _typer_display_type is not None else None
    if not shown:
        return shown
    inner = shown.removesuffix("...").strip("<>")
    match = re.fullmatch(r"list\[(.+)\]", inner)
    if match:
        inner = match.group(1)
    return f"<{_PYTHON_TYPES.get(inner, inner)}>"


def _usage_name(self: Any) -> str:
    name = _upper_name(self)
    name = name if self.required else f"[{name}]"
    return name + ("..." if self.nargs != 1 else "")


def apply() -> None:
    """Give Typer's parameter classes the house style (idempotent)."""
    global _applied, _typer_display_type
    if _applied:
        return
    from typer.core import TyperArgument, TyperOption

    _typer_display_type = TyperOption.display_type_rich  # the same for arguments
    TyperOption.display_type_rich = _value_type  # type: ignore[method-assign, assignment]
    TyperArgument.display_type_rich = _value_type  # type: ignore[method-assign, assignment]
    TyperArgument.display_name_raw = property(_upper_name)  # type: ignore[method-assign, assignment]
    TyperArgument._usage_display_name = _usage_name  # type: ignore[method-assign]
    _applied = True


def tidy(command: Any) -> Any:
    """Let every docstring paragraph of ``command`` and its subcommands flow as one line."""
    if getattr(command, "help", None):
        command.help = _flow(command.help)
    for sub in getattr(command, "commands", {}).values():
        tidy(sub)
    return command


def _flow(text: str) -> str:
    import inspect

    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(p.split("\n")) for p in paragraphs)


def without_help(possibilities: list[str] | None) -> list[str]:
    """Typo suggestions minus ``--help``/``-h`` (a typo of an option never means help)."""
    return [p for p in possibilities or [] if p not in ("--help", "-h")]
