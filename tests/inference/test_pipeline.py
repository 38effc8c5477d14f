"""The read-ahead / write-behind pipeline: input order, failures that do not stop the batch, bounded memory."""

from __future__ import annotations

import threading
import time

import pytest

from neurodl.errors import ImageError
from neurodl.inference.pipeline import pipelined


class Stages:
    """Stages that record how many images are held between reading and writing."""

    def __init__(self, fail_at: str = "", bad: int = -1) -> None:
        self.lock = threading.Lock()
        self.alive = 0
        self.most_alive = 0
        self.fail_at = fail_at
        self.bad = bad
        self.written: list[int] = []

    def prepare(self, item: int) -> int:
        with self.lock:
            self.alive += 1
            self.most_alive = max(self.most_alive, self.alive)
        time.sleep(0.002 * (item % 3))  # uneven reads: later items can finish first
        if self.fail_at == "prepare" and item == self.bad:
            with self.lock:
                self.alive -= 1
            raise ImageError(f"in{item}.nii.gz", "cannot be read.")
        return item * 10

    def compute(self, item: int, value: int) -> int:
        if self.fail_at == "compute" and item == self.bad:
            with self.lock:
                self.alive -= 1
            raise ImageError(f"in{item}.nii.gz", "is empty.")
        return value + 1

    def finish(self, item: int, value: int) -> str:
        time.sleep(0.001 * ((item + 1) % 2))
        with self.lock:
            self.alive -= 1
            self.written.append(item)
        if self.fail_at == "finish" and item == self.bad:
            raise ImageError(f"out{item}.nii.gz", "cannot be written.")
        return f"{item}:{value}"


@pytest.mark.parametrize("workers", [0, 1, 2, 4])
def test_results_come_in_input_order_and_equal_the_sequential_ones(workers: int):
    stages = Stages()
    outcomes = list(pipelined(range(20), stages.prepare, stages.compute, stages.finish, workers=workers))
    assert [o.item for o in outcomes] == list(range(20))
    assert [o.result for o in outcomes] == [f"{i}:{i * 10 + 1}" for i in range(20)]
    assert stages.written == list(range(20))  # written in input order too
    # Images held at once: those read ahead, the one computed, the one written and one waiting.
    assert stages.most_alive <= max(1, workers + 3)


@pytest.mark.parametrize("stage", ["prepare", "compute", "finish"])
@pytest.mark.parametrize("workers", [0, 2])
def test_a_failing_image_is_reported_and_the_batch_goes_on(stage: str, workers: int):
    stages = Stages(fail_at=stage, bad=3)
    outcomes = list(pipelined(range(8), stages.prepare, stages.compute, stages.finish, workers=workers))
    assert [o.item for o in outcomes] == list(range(8))
    failed = [o for o in outcomes if o.error is not None]
    assert [o.item for o in failed] == [3]
    assert "in3.nii.gz" in str(failed[0].error) or "out3.nii.gz" in str(failed[0].error)
    assert all(o.result == f"{o.item}:{o.item * 10 + 1}" for o in outcomes if o.item != 3)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bug_stops_the_batch(workers: int):
    def compute(item: int, value: int) -> int:
        if item == 2:
            raise ZeroDivisionError("bug")
        return value

    with pytest.raises(ZeroDivisionError):
        list(pipelined(range(6), lambda i: i, compute, lambda i, v: v, workers=workers))


def test_negative_workers_are_refused():
    with pytest.raises(ValueError, match="workers"):
        list(pipelined([1], lambda i: i, lambda i, v: v, lambda i, v: v, workers=-1))
