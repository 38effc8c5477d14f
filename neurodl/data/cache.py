"""Where preprocessed volumes are kept between epochs: RAM, disk, RAM then disk, or nowhere.

``--cache disk`` keeps each preprocessed volume as one safetensors file (tensors
only: reading it never runs code), named by a hash of what produced it: the
source files (path, size and modification time) and the preprocessing. A changed
file or another preprocessing gives another name, so a stale entry is never read.

``--cache auto`` (the default) keeps volumes in RAM while they fit a budget (a
share of the memory available when the run starts, ``--cache-budget``) and on
disk beyond it, so a cohort of any size trains in the memory of a few batches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neurodl.errors import UsageError
from neurodl.io.atomic import atomic_output

if TYPE_CHECKING:  # torch only where tensors are read or written: parse_budget checks options early
    import torch

log = logging.getLogger(__name__)

FORMAT = 1
CACHE_MODES = ("auto", "memory", "disk", "none")
# The share of the memory available at start-up that --cache auto may fill, and its ceiling:
# past a few hundred volumes, reading a preprocessed file back (milliseconds, usually from the
# page cache, which the kernel can reclaim) costs next to nothing against a training step,
# while every volume held in RAM grows the run's footprint with the cohort.
DEFAULT_BUDGET_SHARE = 0.25
DEFAULT_BUDGET_CEILING = 512 * 2**20
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9}
_UNITS |= {"t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def available_memory() -> int:
    """Bytes of RAM this process can still use: the kernel's estimate, or a container's limit if lower.

    Linux: ``MemAvailable`` and the cgroup (v2 or v1) limit minus usage, as under
    SLURM or Docker; elsewhere, half the physical memory.
    """
    available: int | None = None
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        available = None
    if available is None:
        try:
            available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
        except (AttributeError, OSError, ValueError):
            available = 8 * 2**30
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            available = min(available, max(0, int(limit) - usage))
    return int(available)


def format_bytes(count: float) -> str:
    """``1536 * 2**20`` -> ``"1.5 GiB"``."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(count) >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{int(count)} B"


def parse_budget(text: str, available: int | None = None) -> int:
    """Bytes from ``--cache-budget``: an amount (``4GiB``, ``512MB``, ``0``) or a share of the
    available memory (``25%``); empty: the default (25 % of the available memory, at most 512 MiB).

    Raises:
        UsageError: not an amount or a percentage.
    """
    text = str(text).strip().lower().replace(" ", "")
    if available is None and (not text or text.endswith("%")):
        available = available_memory()
    if not text:
        return int(min(DEFAULT_BUDGET_SHARE * (available or 0), DEFAULT_BUDGET_CEILING))
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(%|[a-z]*)", text)
    if match is None or (match.group(2) not in _UNITS and match.group(2) != "%"):
        raise UsageError(
            f"--cache-budget '{text}' is not an amount of memory.",
            "Use e.g. --cache-budget 4GiB, 512MB, 25% (of the available memory) or 0 (everything on disk).",
        )
    number = float(match.group(1))
    if match.group(2) == "%":
        if number > 100:
            raise UsageError(
                f"--cache-budget {text} is more than all the available memory.", "Use at most 100%."
            )
        return int(number / 100 * (available or 0))
    return int(number * _UNITS[match.group(2)])


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


class VolumeStore:
    """Preprocessed volumes of one dataset between epochs, by item index.

    Args:
        mode: ``memory`` (RAM, unbounded), ``disk`` (a :class:`VolumeCache` in ``folder``),
            ``auto`` (RAM while the entries fit ``budget`` bytes, ``folder`` on disk beyond)
            or ``none`` (kept nowhere: preprocessed again when needed).
        folder: where disk entries go (needed by ``disk``; ``auto`` without one keeps
            what does not fit nowhere).
        preprocessing: the JSON-able preprocessing (part of every disk key).
        budget: bytes ``auto`` may hold in RAM.

    Example:
        >>> store = VolumeStore("auto", folder=run / "cache", preprocessing=prep, budget=2**30)
        >>> store.load(3, files, kind="image") or store.save(3, files, {"image": tensor}, kind="image")
    """

    def __init__(
        self, mode: str, *, folder: Path | None, preprocessing: dict[str, Any], budget: int = 0
    ) -> None:
        if mode not in CACHE_MODES:
            raise ValueError(f"unknown cache mode {mode!r}")
        if mode == "disk" and folder is None:
            raise ValueError("cache='disk' needs a cache_dir")
        self.mode = mode
        self.budget = budget if mode == "auto" else (2**63 if mode == "memory" else 0)
        self.memory: dict[int, dict[str, torch.Tensor]] = {}
        self.in_memory = 0
        self.disk = (
            VolumeCache(folder, preprocessing) if folder is not None and mode in ("disk", "auto") else None
        )
        self.on_disk: set[int] = set()

    @property
    def keeps(self) -> bool:
        """Whether anything is kept (``warm`` is worth it)."""
        return self.mode != "none"

    def load(self, index: int, files: Sequence[str | Path], *, kind: str) -> dict[str, torch.Tensor] | None:
        """The kept tensors of item ``index`` made from ``files``, or None."""
        if index in self.memory:
            return self.memory[index]
        if self.disk is None:
            return None
        # Also for an item this process has not written: an earlier run (a resumed one, or one
        # sharing --cache-dir) may have.
        stored = self.disk.load(self.disk.key(files, kind=kind))
        if stored is not None and self.mode == "auto":
            self._remember(index, stored)
        return stored

    def _remember(self, index: int, tensors: dict[str, torch.Tensor]) -> bool:
        size = sum(t.element_size() * t.numel() for t in tensors.values())
        if self.in_memory + size > self.budget:
            return False
        self.memory[index] = tensors
        self.in_memory += size
        return True

    def save(
        self, index: int, files: Sequence[str | Path], tensors: dict[str, torch.Tensor], *, kind: str
    ) -> None:
        """Keep the tensors of item ``index``: in RAM while they fit, else on disk (if any)."""
        if self._remember(index, tensors):
            return
        if self.disk is not None:
            self.disk.save(self.disk.key(files, kind=kind), tensors)
            self.on_disk.add(index)

    def describe(self) -> str:
        """One line for people: where the volumes are."""
        parts = [f"{len(self.memory)} in memory ({format_bytes(self.in_memory)})"]
        if self.on_disk:
            parts.append(f"{len(self.on_disk)} on disk in {self.disk.folder if self.disk else '?'}")
        return ", ".join(parts)
