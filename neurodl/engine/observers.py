"""Callbacks that watch every fit started inside a block, without threading them through each task.

Experiment tracking (:mod:`neurodl.tracking`) and hyper-parameter search
(:mod:`neurodl.tune`) need callbacks in fits that a task starts deep inside
its ``train`` (one per fold with ``--cv``). They register an observer for the
duration of a ``train`` call; the task's progress set-up asks
:func:`fit_callbacks` for each fit it starts. The registration is a context
variable, so it is scoped to the block (and to the thread) that made it.

Example:
    >>> with observing(tracker):
    ...     biomarkers.train(table, options, out)  # every fit reports to tracker
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Protocol

from neurodl.engine.loop import Callback


class FitObserver(Protocol):
    """Something that watches fits: gives the callbacks for one fit."""

    def fit_callbacks(self, description: str) -> list[Callback]:
        """Callbacks for a fit the task describes as ``description`` ("training", "fold 2/5"...)."""
        ...


_OBSERVERS: ContextVar[tuple[FitObserver, ...]] = ContextVar("neurodl_fit_observers", default=())


@contextlib.contextmanager
def observing(observer: FitObserver) -> Iterator[FitObserver]:
    """Give ``observer`` every fit started inside the block."""
    token = _OBSERVERS.set((*_OBSERVERS.get(), observer))
    try:
        yield observer
    finally:
        _OBSERVERS.reset(token)


def fit_callbacks(description: str) -> list[Callback]:
    """The callbacks of every active observer for one fit (none outside an ``observing`` block)."""
    return [callback for observer in _OBSERVERS.get() for callback in observer.fit_callbacks(description)]
