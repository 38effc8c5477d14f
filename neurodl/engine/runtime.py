"""Device, precision and seeding."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

from neurodl.errors import UsageError


def resolve_device(name: str) -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` into a device, refusing one that is not there."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(
            f"--device '{name}' is not a device name.", "Use auto, cpu, cuda, cuda:N or mps."
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "--device cuda was asked for, but PyTorch sees no CUDA GPU.",
            "Use --device cpu (or auto), or install a CUDA build of PyTorch.",
        )
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise UsageError(
            "--device mps was asked for, but MPS is not available.", "Use --device cpu (or auto)."
        )
    return device


def check_precision(device: torch.device, precision: str) -> None:
    """Refuse ``bf16`` on a CPU: a GPU fast path that on CPUs is slower and was seen to diverge.

    Under CPU autocast the convolutions run in bf16 but softmax and the Dice sums of the
    loss stay in bf16 too (CPU autocast keeps only a few ops in fp32), and a CPU without
    native bf16 (no AVX512-BF16/AMX) runs 3D convolutions through slow fallback kernels:
    3-7x slower than fp32 on the 2-core EPYC these were measured on, and a segment
    benchmark stopped with a NaN loss at epoch 2 (docs/benchmarks.md).
    """
    if precision == "bf16" and device.type == "cpu":
        raise UsageError(
            "--precision bf16 is for GPUs: on a CPU it trains slower than fp32 (3-7x here) and can diverge (NaN loss), since the loss's softmax and Dice sums run in bf16.",
            "Use --precision fp32 (the default) on a CPU, or train on a GPU (--device cuda).",
        )


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[None]:
    """Mixed-precision context for the forward pass (a no-op for fp32 or on CPU with fp16)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cpu" and dtype == torch.float16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int, epoch: int = 0) -> None:
    """Seed Python, NumPy and torch from (seed, epoch).

    Seeding at the start of every epoch (rather than once) makes a resumed run
    draw the same dropout masks and shuffles as an uninterrupted one.
    """
    mixed = (seed * 1_000_003 + epoch) % (2**31 - 1)
    random.seed(mixed)
    np.random.seed(mixed)
    # torch.manual_seed also records a stack trace for lazy device seeding (~0.1 ms):
    # seed the generators directly, it is called every epoch.
    torch.default_generator.manual_seed(mixed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(mixed)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.manual_seed(mixed)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Ask torch for deterministic kernels while the block runs."""
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    cudnn_previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.backends.cudnn.benchmark = cudnn_previous
