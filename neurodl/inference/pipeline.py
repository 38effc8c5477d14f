"""A three-stage pipeline for batch prediction: read ahead, compute, write behind.

While the model computes image *i* in the calling thread, background threads
read and preprocess images *i+1 ... i+workers*, and one writer thread inverts
and writes image *i-1*. Queues are bounded (``workers`` images read ahead, one
being written), so memory stays at a few images however long the batch is.
Results come back in input order, and the outputs do not depend on
``workers``: each stage is a pure function of its image.

A stage that raises a :class:`~neurodl.errors.NeurodlError` fails that image
only: its outcome carries the error and the batch goes on. Anything else (a
bug, Ctrl-C) stops the batch; outputs are written atomically, so an
interrupted batch leaves no partial file and a rerun skips what was written.

Example:
    >>> for outcome in pipelined(images, read, predict, write, workers=2):
    ...     print(outcome.item, outcome.error or outcome.result)
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from neurodl.errors import NeurodlError

Item = TypeVar("Item")


@dataclass
class Outcome(Generic[Item]):
    """What became of one input: the last stage's result, or the user-facing error that stopped it."""

    item: Item
    result: Any = None
    error: NeurodlError | None = None


@dataclass
class _Failed:
    error: NeurodlError


def _guard(stage: Callable[..., Any], *args: Any) -> Any:
    """Run a stage; a NeurodlError becomes a value so later stages pass it through."""
    if isinstance(args[-1], _Failed):
        return args[-1]
    try:
        return stage(*args)
    except NeurodlError as exc:
        return _Failed(exc)


def _outcome(item: Item, value: Any) -> Outcome[Item]:
    return Outcome(item, error=value.error) if isinstance(value, _Failed) else Outcome(item, result=value)


def pipelined(
    items: Iterable[Item],
    prepare: Callable[[Item], Any],
    compute: Callable[[Item, Any], Any],
    finish: Callable[[Item, Any], Any],
    *,
    workers: int = 2,
) -> Iterator[Outcome[Item]]:
    """Yield one :class:`Outcome` per item, in input order.

    Args:
        items: the inputs.
        prepare: read and preprocess one item (background threads).
        compute: the model's part (calling thread: the device is used from one thread).
        finish: invert, write and measure (one background writer thread, in input order).
        workers: threads reading ahead; 0 runs every stage in the calling thread, one
            item after the other.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, not {workers}")
    if workers == 0:
        for item in items:
            prepared = _guard(prepare, item)
            yield _outcome(item, _guard(finish, item, _guard(compute, item, prepared)))
        return
    readers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="neurodl-read")
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="neurodl-write")
    reading: collections.deque[tuple[Item, Future[Any]]] = collections.deque()
    writing: collections.deque[tuple[Item, Future[Any]]] = collections.deque()
    source = iter(items)
    finished = False
    try:
        while True:
            while not finished and len(reading) < workers:
                item = next(source, _END)
                if item is _END:
                    finished = True
                else:
                    reading.append((item, readers.submit(_guard, prepare, item)))
            if not reading:
                break
            item, future = reading.popleft()
            computed = _guard(compute, item, future.result())
            writing.append((item, writer.submit(_guard, finish, item, computed)))
            # At most one image waits behind the one being written: memory stays bounded.
            while len(writing) > 1 or (writing and writing[0][1].done()):
                done_item, done = writing.popleft()
                yield _outcome(done_item, done.result())
        while writing:
            done_item, done = writing.popleft()
            yield _outcome(done_item, done.result())
    finally:
        # On Ctrl-C or a bug: drop what was not started; a write under way completes
        # (atomically) before the interpreter exits.
        readers.shutdown(wait=False, cancel_futures=True)
        writer.shutdown(wait=False, cancel_futures=True)


_END: Any = object()
