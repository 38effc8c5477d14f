"""Pickle-free storage of nested training state (checkpoints).

A checkpoint holds model, optimiser and scheduler state: nested dicts and lists
of tensors and plain values. Tensors go into one safetensors file; the nesting
and the plain values go, as JSON, into that file's metadata. One file, written
atomically, that loading never executes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from neurodl.errors import RunDirectoryError
from neurodl.io.atomic import atomic_output

_SKELETON_KEY = "neurodl_state"


def _flatten(value: Any, tensors: dict[str, Any]) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().cpu().contiguous()
        return {"__tensor__": name}
    if isinstance(value, dict):
        return {"__dict__": [[_flatten(k, tensors), _flatten(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_flatten(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_flatten(v, tensors) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")


def _unflatten(value: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__dict__" in value:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in value["__dict__"]}
        if "__tuple__" in value:
            return tuple(_unflatten(v, tensors) for v in value["__tuple__"])
        raise ValueError("unknown node in checkpoint")
    if isinstance(value, list):
        return [_unflatten(v, tensors) for v in value]
    return value


def save_state(state: dict[str, Any], path: str | Path) -> Path:
    """Write nested training state to one safetensors file, atomically."""
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    skeleton = _flatten(state, tensors)
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata={_SKELETON_KEY: json.dumps(skeleton)})
    return Path(path)


def load_state(path: str | Path) -> dict[str, Any]:
    """Read state written by :func:`save_state`; a damaged file raises RunDirectoryError."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        skeleton = json.loads(metadata[_SKELETON_KEY])
        state = _unflatten(skeleton, tensors)
    except (SafetensorError, OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
        raise RunDirectoryError(
            f"{path}: checkpoint is damaged ({exc}).", "Delete it and train again without --resume."
        ) from exc
    if not isinstance(state, dict):
        raise RunDirectoryError(
            f"{path}: checkpoint is damaged (not a mapping).", "Delete it and train again without --resume."
        )
    return state
