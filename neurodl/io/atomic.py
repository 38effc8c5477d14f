"""Atomic file writes: write to a temporary file beside the target, then rename.

A crash or Ctrl-C mid-write leaves the previous file (or no file) in place,
never a half-written one.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

# ".<target name>.<8 random characters from mkstemp>.tmp<suffixes>", as atomic_output names them.
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)*$")


def _suffixes(path: Path) -> str:
    # Keep ".nii.gz" etc. so libraries that pick a format from the name still do.
    return "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` atomically.

    Example:
        >>> with atomic_output("out/mask.nii.gz") as tmp:
        ...     nib.save(image, tmp)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=f".tmp{_suffixes(target)}", dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600 files; outputs get the permissions of any new file (0666 less the umask).
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def remove_partial_writes(folder: str | Path) -> list[Path]:
    """Delete the temporary files that writes killed mid-way (SIGKILL, power loss) left in ``folder``.

    Only call it on a folder no other process is writing to. Returns the files removed.
    """
    removed = []
    for path in Path(folder).rglob(".*"):
        if path.is_file() and _TEMPORARY.match(path.name):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def remove_partial_writes_of(paths: Iterable[str | Path]) -> list[Path]:
    """Delete the temporary files that writes of ``paths`` killed mid-way left beside them.

    Unlike :func:`remove_partial_writes`, this touches only these outputs' own
    temporaries, so it is safe in a folder that other processes (the other shards of a
    job array) write to. Each folder is listed once.
    """
    names: dict[Path, set[str]] = {}
    for path in map(Path, paths):
        names.setdefault(path.parent, set()).add(path.name)
    removed = []
    for folder, targets in names.items():
        if not folder.is_dir():
            continue
        for candidate in folder.iterdir():
            name = candidate.name
            if not (name.startswith(".") and _TEMPORARY.match(name)):
                continue
            target, _, rest = name[1:].rpartition(".tmp")[0].rpartition(".")
            if target in targets and len(rest) == 8:
                with contextlib.suppress(FileNotFoundError):
                    candidate.unlink()
                    removed.append(candidate)
    return removed


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically and return the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))
