"""What one training step will need, known before anything is allocated.

A full-size cohort with a large network, input or batch would otherwise be killed
by the kernel mid-epoch with no message (CPU), or stop on a CUDA out-of-memory
error after the data was prepared. The estimate runs the network once on the
``meta`` device (shapes only: no memory, no arithmetic) and adds up what a step
holds: weights, their gradients, the optimiser's state and, per sample, every
tensor the forward pass produces (what autograd keeps for the backward pass,
and the backward pass's own buffers of the same sizes).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from neurodl.config import TrainOptions
from neurodl.data.cache import available_memory, format_bytes
from neurodl.errors import UsageError

# Optimiser state per weight, in weights' sizes (Adam: two moments; SGD/RMSprop: momentum buffers).
_OPTIMIZER_STATE = {"sgd": 1, "adam": 2, "adamw": 2, "adadelta": 2, "adagrad": 1, "rmsprop": 2}
# The backward pass holds gradients of activations next to the saved ones, and CPU convolutions
# (oneDNN) keep reordered copies of their inputs: measured peaks of 3D CNNs on the CPU were
# 1.0-1.5x the sum of the forward outputs (cnn, densenet121, resnet18).
_BACKWARD_FACTOR = 1.5
# What the process holds before the first step (PyTorch, MONAI, a batch being prepared).
_RUNTIME = 600 * 2**20

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepMemory:
    """Bytes one training step needs: ``weights`` (with gradients and optimiser state),
    ``activations`` (for the whole batch) and their ``total`` with the runtime's own."""

    weights: int
    activations: int
    per_sample: int
    batch_size: int

    @property
    def total(self) -> int:
        return self.weights + self.activations + _RUNTIME


def _forward_bytes(model: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> int:
    """Bytes of every new tensor (not a view, not an input changed in place) the forward pass of
    ``model`` creates, on ``meta``.

    A torch-function mode sees what modules compute and what a ``forward`` does with plain
    functions (``torch.cat`` of DenseNet's dense blocks, ``F.relu``).
    """
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    # Normalisations keep their input's shape; their meta kernels go through decompositions that
    # import TorchDynamo (seconds), so the mode answers for them.
    same_shape = {F.batch_norm, F.instance_norm, F.group_norm, F.layer_norm}

    class Count(TorchFunctionMode):
        total = 0

        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if func in same_shape:
                out = torch.empty_like(args[0])
            else:
                out = func(*args, **(kwargs or {}))
            seen = {id(a) for a in args if isinstance(a, torch.Tensor)}
            for tensor in out if isinstance(out, list | tuple) else (out,):
                if isinstance(tensor, torch.Tensor) and tensor._base is None and id(tensor) not in seen:
                    Count.total += tensor.numel() * tensor.element_size()
            return out

    with Count():
        model(*inputs)
    return Count.total


def estimate_step(
    build: Callable[[], torch.nn.Module],
    input_shape: Sequence[int],
    options: TrainOptions,
    *,
    batch_size: int | None = None,
    inputs: int = 1,
) -> StepMemory:
    """The memory of one training step of the network ``build`` makes, on inputs of ``input_shape``.

    Args:
        build: makes the network (called on the meta device: nothing is allocated).
        input_shape: one sample (channels, X, Y, Z).
        options: batch size, optimiser and precision.
        batch_size: samples per step, if not ``options.batch_size`` (e.g. patches per volume).
        inputs: how many such tensors the network takes.
    """
    batch = batch_size if batch_size is not None else max(1, options.batch_size)
    with torch.device("meta"):
        model = build()
    model.train()
    weights = sum(p.numel() * 4 for p in model.parameters())
    state = _OPTIMIZER_STATE.get(options.optimizer, 2)
    if options.optimizer in ("sgd", "rmsprop") and options.momentum == 0:
        state -= 1
    # Two samples: batch normalisation refuses one sample per channel (a 1x1x1 map) in training.
    pair = [torch.empty((2, *input_shape), device="meta") for _ in range(inputs)]
    per_sample = _forward_bytes(model, pair) // 2
    if options.precision in ("bf16", "fp16"):
        per_sample = per_sample * 6 // 10  # convolutions in 16 bits, normalisation still in 32
    activations = int(per_sample * _BACKWARD_FACTOR * batch)
    return StepMemory(weights * (2 + state), activations, per_sample, batch)


def device_memory(device: torch.device) -> tuple[int, str]:
    """Bytes free for training on ``device``, and what they are (RAM or the GPU's memory)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        free, _ = torch.cuda.mem_get_info(index)
        return int(free), f"free memory of GPU {index} ({torch.cuda.get_device_name(index)})"
    return available_memory(), "available RAM"


def require_step_fits(
    build: Callable[[], torch.nn.Module],
    input_shape: Sequence[int],
    options: TrainOptions,
    *,
    batch_size: int | None = None,
    inputs: int = 1,
    model_name: str = "the model",
    reserved: int = 0,
) -> StepMemory | None:
    """Refuse, before anything is allocated, a step that cannot fit the training device.

    Returns the estimate, or None when the network cannot run on the meta device.

    ``reserved`` bytes (e.g. a cache of preprocessed images) are counted as taken.

    Raises:
        UsageError: the estimate exceeds the device's free memory; the message gives both
            and what to make smaller.
    """
    from neurodl.engine.runtime import resolve_device

    try:
        estimate = estimate_step(build, input_shape, options, batch_size=batch_size, inputs=inputs)
    except Exception as exc:  # an operation without a meta kernel: the estimate guides, it never blocks
        log.debug("no memory estimate for %s (%s)", model_name, exc, exc_info=True)
        return None
    device = resolve_device(options.device)
    if device.type == "mps":
        return estimate  # unified memory with no free-memory query: nothing to compare with
    free, what = device_memory(device)
    needed = estimate.total + reserved
    if needed <= free:
        return estimate
    shape = "x".join(str(int(s)) for s in input_shape[1:])
    fits = int(
        max(0, free - reserved - estimate.weights - _RUNTIME)
        // max(1.0, _BACKWARD_FACTOR * estimate.per_sample)
    )
    smaller = max(16, int(16 * math.floor(max(input_shape[1:]) * (free / needed) ** (1 / 3) / 16)))
    hint = (
        f"Use a smaller --batch-size (at most {fits} fits)"
        if fits >= 1
        else "A single sample does not fit: use a smaller input"
    )
    raise UsageError(
        f"one training step of {model_name} on {shape} inputs with batch {estimate.batch_size} needs about "
        f"{format_bytes(needed)} ({format_bytes(estimate.activations)} of activations, "
        f"{format_bytes(estimate.per_sample * _BACKWARD_FACTOR)} per sample; {format_bytes(estimate.weights)} of weights, "
        f"gradients and optimiser state), but the {what} is {format_bytes(free)}.",
        f"{hint}, a coarser --spacing or a smaller --size (e.g. --size {smaller}), "
        "--precision bf16 on a GPU, or a smaller --model.",
    )
