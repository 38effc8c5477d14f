"""Several processes, one run: PyTorch distributed data parallel (DDP) launched by ``torchrun``.

``torchrun --nproc-per-node N -m neurodl classify train ... --distributed`` starts N
copies of the same command. Each trains on its own share of every epoch's batches;
DDP averages the gradients, so all copies hold the same weights. Rank 0 alone writes
(the run directory, checkpoints, progress, console output); the others compute.

Everything here is a no-op in a single process, so code paths stay the same.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from neurodl.errors import NeurodlError, UsageError

T = TypeVar("T")

# What torchrun (and torch.distributed.launch) put in each process's environment.
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Process:
    """This process's place in the group."""

    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start(environ: Mapping[str, str], *, timeout_minutes: float = 30.0) -> Process:
    """Join the process group torchrun set up (NCCL for CUDA tensors, Gloo for CPU ones).

    Args:
        environ: the process environment (``os.environ``), read for torchrun's variables.
        timeout_minutes: how long a collective waits for a lagging process before failing.

    Raises:
        UsageError: not started by torchrun (its variables are missing).
    """
    missing = [name for name in TORCHRUN_VARIABLES if name not in environ]
    if missing:
        raise UsageError(
            f"--distributed needs the environment torchrun sets up ({', '.join(missing)} not set).",
            "Launch with: torchrun --nproc-per-node N -m neurodl ... --distributed (or drop --distributed).",
        )
    try:
        process = Process(int(environ["RANK"]), int(environ["LOCAL_RANK"]), int(environ["WORLD_SIZE"]))
    except ValueError as exc:
        raise UsageError(
            f"--distributed: torchrun's RANK/LOCAL_RANK/WORLD_SIZE are not integers ({exc})."
        ) from exc
    if dist.is_initialized():
        return process
    if torch.cuda.is_available():
        torch.cuda.set_device(process.local_rank % torch.cuda.device_count())
        # NCCL for tensors on the GPU, Gloo for the small CPU objects (metrics, errors) and --device cpu.
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return process


def stop(*, synchronise: bool = True) -> None:
    """Leave the process group; with ``synchronise`` first wait until every process got here.

    The wait makes the run directory complete (rank 0 wrote it) when any process returns.
    """
    if not active():
        return
    if synchronise:
        dist.barrier()
    dist.destroy_process_group()


@contextlib.contextmanager
def session(environ: Mapping[str, str]) -> Iterator[Process]:
    """:func:`start`, then :func:`stop` at the end (without waiting for the others after an error)."""
    process = start(environ)
    finished = False
    try:
        yield process
        finished = True
    finally:
        stop(synchronise=finished)


def active() -> bool:
    """Whether this process is one of several (a process group is initialised)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True in the process that writes (rank 0, or the only process)."""
    return rank() == 0


def on_main(action: Callable[[], T]) -> T:
    """Run ``action`` in rank 0 only and give every process its result, or raise its error everywhere.

    For steps that write (creating the run directory) and whose failure must stop
    every process, not leave the others waiting.
    """
    if not active():
        return action()
    payload: list[Any] = [None]
    if is_main():
        try:
            payload[0] = ("ok", action())
        except NeurodlError as exc:
            payload[0] = ("error", type(exc), exc.message, exc.fix)
        except Exception as exc:
            payload[0] = ("failed", f"{type(exc).__name__}: {exc}")
            dist.broadcast_object_list(payload, src=0)
            raise
    dist.broadcast_object_list(payload, src=0)
    kind, *rest = payload[0]
    if kind == "ok":
        return rest[0]  # type: ignore[no-any-return]
    if kind == "error":
        error_type, message, fix = rest
        raise _rebuild(error_type, message, fix)
    raise RuntimeError(f"rank 0 failed: {rest[0]}")


def _rebuild(error_type: type[NeurodlError], message: str, fix: str | None) -> NeurodlError:
    error = NeurodlError.__new__(error_type)
    NeurodlError.__init__(error, message, fix)
    return error


def sum_across(values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over every process (the values themselves in a single process)."""
    if not active():
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [float(v) for v in tensor]


def gather(value: T) -> list[T]:
    """``value`` of every process, in rank order (``[value]`` in a single process)."""
    if not active():
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (e.g. batch-norm running statistics).

    DDP averages gradients, so parameters agree; buffers are updated by each
    process's own batches and must agree before the model is evaluated.
    """
    if not active():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def wrap_module(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` in DDP, on ``device``.

    Buffers are not broadcast at every forward pass (``broadcast_buffers=False``):
    that keeps evaluation free of collective calls, so processes may evaluate
    different numbers of batches; :func:`broadcast_buffers` aligns them before.
    """
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    if not any(p.requires_grad for p in module.parameters()):
        return module
    # PyTorch 2.13 renamed the option; older releases only know broadcast_buffers.
    no_sync: dict[str, Any] = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        else {"broadcast_buffers": False}
    )
    return DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None, **no_sync
    )
