"""Starting a ``train`` command in one process, or as one of several started by torchrun."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def launched(distributed: bool) -> Iterator[bool]:
    """Join torchrun's process group for the block when ``distributed``; yield whether this process reports.

    Only the reporting process (rank 0, or the only one) prints results; the
    process group is left at the end.
    """
    if not distributed:
        yield True
        return
    from neurodl.engine import distributed as group  # torch: only for a distributed run

    with group.session(os.environ) as process:
        yield process.is_main
