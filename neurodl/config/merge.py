"""How option sets are resolved and saved: ``--config`` files, flat dicts of values and ``config.json``.

Precedence, lowest first: the dataclass defaults, then ``--config FILE`` (YAML or JSON), then
flags given explicitly on the command line.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

from neurodl.errors import UsageError

T = TypeVar("T")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON options file into a dict (keys may use - or _)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: config file does not exist.")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml  # only when a YAML config is given

            data = yaml.safe_load(text)
    except Exception as exc:  # yaml and json raise many types; all mean "unparsable"
        raise UsageError(
            f"{path}: cannot be parsed ({exc}).", "Write the options as a YAML or JSON mapping."
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: must hold a mapping of option names to values.")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _coerce(value: Any, kind: Any, name: str, source: str) -> Any:
    """Check and convert one option value to its declared type (from a config file or a flag)."""
    text = str(kind)

    def bad(expected: str) -> UsageError:
        return UsageError(f"{source}: option '{name}' must be {expected}, not {value!r}.")

    try:
        if text.startswith("tuple"):
            items = value if isinstance(value, list | tuple) else ([] if value in (None, "") else [value])
            element = float if "float" in text else int if "int" in text else str
            return tuple(element(v) for v in items)
        if text == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "yes", "1", "false", "no", "0"):
                return str(value).lower() in ("true", "yes", "1")
            raise bad("true or false")
        if text == "float":
            if isinstance(value, bool):
                raise bad("a number")
            return float(value)
        if text == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise bad("an integer")
            return int(value)
        if text == "str":
            return str(value)
    except (TypeError, ValueError) as exc:
        expected = {"float": "a number", "int": "an integer"}.get(
            text,
            f"a list of {'numbers' if 'float' in text or 'int' in text else 'names'}"
            if text.startswith("tuple")
            else text,
        )
        raise bad(expected) from exc
    return value


def _nested_defaults(cls: type) -> dict[str, Any]:
    """Default instances of the nested option sets of ``cls`` (e.g. its ``train`` options)."""
    defaults = {}
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            if dataclasses.is_dataclass(value):
                defaults[f.name] = value
    return defaults


def build(cls: type[T], values: dict[str, Any], *, source: str = "options") -> T:
    """Build a frozen option set from a flat dict, refusing unknown names.

    Keys of nested option sets (``train`` in a task's options) may be given
    flat: ``{"lr": 0.1}`` sets ``train.lr``. Nested sets start from the task's
    own defaults (a task may default to another learning rate than the engine).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    nested = _nested_defaults(cls)
    own: dict[str, Any] = {}
    sub: dict[str, dict[str, Any]] = {name: {} for name in nested}
    sub_fields = {name: {g.name: g for g in dataclasses.fields(base)} for name, base in nested.items()}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key in nested and isinstance(value, dict):
            sub[key].update({k.replace("-", "_"): v for k, v in value.items()})
        elif key in fields and key not in nested:
            own[key] = _coerce(value, fields[key].type, key, source)
        else:
            owner = next((name for name, names in sub_fields.items() if key in names), None)
            if owner is None:
                known = sorted(
                    [k for k in fields if k not in nested]
                    + [k for names in sub_fields.values() for k in names]
                )
                raise UsageError(f"{source}: unknown option '{key}'.", f"Known options: {', '.join(known)}.")
            sub[owner][key] = value
    for name, base in nested.items():
        unknown = sorted(set(sub[name]) - set(sub_fields[name]))
        if unknown:
            raise UsageError(
                f"{source}: unknown option '{unknown[0]}' in '{name}'.",
                f"Known options: {', '.join(sorted(sub_fields[name]))}.",
            )
        own[name] = dataclasses.replace(
            base, **{k: _coerce(v, sub_fields[name][k].type, k, source) for k, v in sub[name].items()}
        )
    return cls(**own)


def to_dict(options: Any) -> dict[str, Any]:
    """Options as a JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(options)))


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Rebuild saved options (from a run's ``config.json``)."""
    return build(cls, values, source="config.json")
