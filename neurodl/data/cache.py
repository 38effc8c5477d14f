"""Preprocessed volumes kept on disk (``--cache disk``), so decoding happens once across runs.

Each entry is one safetensors file (tensors only: reading it never runs code),
named by a hash of what produced it: the source files (path, size and
modification time) and the preprocessing. A changed file or another
preprocessing gives another name, so a stale entry is never read.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from neurodl.io.atomic import atomic_output

log = logging.getLogger(__name__)

FORMAT = 1


class VolumeCache:
    """A folder of preprocessed tensors, keyed by their source files and preprocessing.

    Args:
        folder: where the files go (created when the first entry is written).
        preprocessing: a JSON-able description of the preprocessing (part of every key).

    Example:
        >>> cache = VolumeCache(Path("runs/cnn/cache"), preprocessing.to_dict())
        >>> key = cache.key([t1_path], kind="image")
        >>> cache.load(key) or cache.save(key, {"image": tensor})
    """

    def __init__(self, folder: Path, preprocessing: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.preprocessing = preprocessing

    def key(self, files: Sequence[str | Path], *, kind: str) -> str:
        """The name of the entry made from ``files`` (``kind`` tells pipelines apart)."""
        sources = []
        for file in files:
            path = Path(file).resolve()
            stat = path.stat()
            sources.append([str(path), stat.st_size, stat.st_mtime_ns])
        text = json.dumps(
            {"format": FORMAT, "kind": kind, "preprocessing": self.preprocessing, "files": sources},
            sort_keys=True,
        )
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        """The tensors of an entry, or None when there is none (or it is unreadable: it is rebuilt)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.path(key)
        if not path.exists():
            return None
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            log.warning("cached volume %s is unreadable (%s); preprocessing the image again", path, exc)
            return None

    def save(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Write an entry atomically (processes writing the same entry at once do no harm)."""
        from safetensors.torch import save_file

        with atomic_output(self.path(key)) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
