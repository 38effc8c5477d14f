"""``fit``: the training loop. Nothing in this file knows which task it trains."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch

from neurodl.config import TrainOptions, lower_is_better
from neurodl.engine import distributed
from neurodl.engine._fit_state import OneNetwork, Optimisation, Selection, clone_state
from neurodl.engine.runtime import (
    autocast,
    check_precision,
    deterministic_algorithms,
    resolve_device,
    seed_everything,
)
from neurodl.errors import Interrupted, TrainingFailed, UsageError
from neurodl.io.state import load_state, save_state

if TYPE_CHECKING:
    from typing_extensions import TypeIs  # typing.TypeIs from Python 3.13


class Validating(Protocol):
    """What the engine needs of a task to validate it: its network, a step and the metrics."""

    @property
    def model(self) -> torch.nn.Module: ...

    def validation_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """Outputs of one validation batch, concatenated by the engine."""
        ...

    def validation_metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        """Metrics from all validation outputs; must include ``loss``."""
        ...


class Task(Validating, Protocol):
    """What a task that trains one network gives the engine (which steps its optimiser).

    ``model`` is replaced by its DDP or compiled wrapper during a ``--distributed`` or
    ``--compile`` fit and restored at the end.
    """

    model: torch.nn.Module
    default_monitor: str

    def training_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """Forward pass and loss of one batch: ``{"loss": ..., ...}``."""
        ...


class AdversarialTask(Protocol):
    """What a task that trains several networks (e.g. a GAN's generator and discriminator) gives the engine.

    ``optimizer_groups()`` -> ``{name: (parameters, lr[, optimiser settings])}``: one optimiser
    per network; ``training_step(batch, step)`` calls ``step(name, loss)`` once per network and
    batch. ``distribute(wrap)`` replaces each network its steps call by ``wrap(network)`` (DDP,
    ``torch.compile``); the engine calls it again with an unwrapping function at the end.
    ``model`` stays the plain module whose state dict is checkpointed, so checkpoints do not
    depend on the wrappers. Validated only when ``fit`` is given validation batches: then it
    also has ``validation_step`` and ``validation_metrics`` (:class:`Validating`).
    """

    @property
    def model(self) -> torch.nn.Module: ...

    @property
    def default_monitor(self) -> str: ...

    def optimizer_groups(self) -> dict[str, tuple[Any, ...]]: ...

    def distribute(self, wrap: Callable[[torch.nn.Module], torch.nn.Module]) -> None: ...

    def training_step(self, batch: Any, step: Callable[[str, torch.Tensor], None]) -> dict[str, torch.Tensor]:
        """Losses of one batch (``"loss"`` first), each network already stepped through ``step``."""
        ...


def _adversarial(task: Task | AdversarialTask) -> TypeIs[AdversarialTask]:
    """Whether ``task`` steps its own networks (it has ``optimizer_groups``)."""
    return hasattr(task, "optimizer_groups")


def _validating(task: Task | AdversarialTask) -> Validating:
    if not hasattr(task, "validation_step"):
        raise TypeError(
            f"{type(task).__name__} has no validation_step, so fit() cannot be given validation batches"
        )
    return task  # type: ignore[return-value]  # checked just above


class Stepper:
    """Takes one optimiser step on a loss: the only place the engine updates weights.

    A task with one network gets one group, ``model``, stepped by the engine on the
    loss its ``training_step(batch)`` returns. A task that trains several networks
    (e.g. a GAN) defines ``optimizer_groups()`` -> ``{name: (parameters, lr)}`` and
    its ``training_step(batch, step)`` calls ``step(name, loss)`` once per network
    and batch. Either way gradient scaling (fp16), clipping and the optimisers stay
    in the engine.
    """

    def __init__(
        self, optimizers: dict[str, torch.optim.Optimizer], scaler: torch.amp.GradScaler, grad_clip: float
    ) -> None:
        self.optimizers = optimizers
        self.scaler = scaler
        self.grad_clip = grad_clip

    def __call__(self, name: str, loss: torch.Tensor) -> None:
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip > 0:
            # Unscale first so the threshold applies to the true gradient norm.
            self.scaler.unscale_(optimizer)
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.scaler.step(optimizer)


class Callback:
    """Hooks called by :func:`fit`; override what you need."""

    def on_fit_start(self, *, epochs: int, steps: int, start_epoch: int) -> None: ...

    def on_step(self, *, epoch: int, step: int, loss: float) -> None: ...

    def on_epoch_end(self, record: dict[str, float]) -> None: ...

    def on_fit_end(self, result: FitResult) -> None: ...


@dataclass
class FitResult:
    """What a fit produced (the model holds the selected weights)."""

    history: list[dict[str, float]] = field(default_factory=list)
    monitor: str = "train_loss"
    best_epoch: int = 0
    best_value: float = math.nan
    stopped_early: bool = False

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    @property
    def best_record(self) -> dict[str, float]:
        return self.history[self.best_epoch - 1] if self.history else {}


def monitor_mode(name: str) -> Literal["min", "max"]:
    """``min`` for losses and errors, ``max`` for scores."""
    return "min" if lower_is_better(name) else "max"


def _to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    if isinstance(batch, torch.Tensor):
        if channels_last and batch.ndim == 5 and batch.is_floating_point():
            return batch.to(device, non_blocking=True, memory_format=torch.channels_last_3d)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device, channels_last) for v in batch)
    return batch


class _DataWait:
    """Time spent waiting for the next batch (loading, augmenting, collating)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def over(self, batches: Iterable[Any]) -> Iterator[Any]:
        start = time.perf_counter()
        iterator = iter(batches)
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                self.seconds += time.perf_counter() - start
                return
            self.seconds += time.perf_counter() - start
            yield batch
            start = time.perf_counter()


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The network inside DDP and ``torch.compile`` wrappers."""
    while True:
        if isinstance(module, torch.nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod  # type: ignore[assignment]
        else:
            return module


def _training_wrapper(
    options: TrainOptions, device: torch.device
) -> Callable[[torch.nn.Module], torch.nn.Module] | None:
    """DDP and/or ``torch.compile`` around a network, as the options ask (None: neither)."""
    if not (options.distributed or options.compile):
        return None

    def wrap(module: torch.nn.Module) -> torch.nn.Module:
        if options.distributed:
            module = distributed.wrap_module(module, device)
        if options.compile:
            module = torch.compile(module)  # type: ignore[assignment]
        return module

    return wrap


def _wrap_task(task: AdversarialTask, wrap: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
    """Train ``task`` (as fit steps it: one-network tasks through :class:`OneNetwork`) through ``wrap``."""
    if hasattr(task, "distribute"):
        task.distribute(wrap)
    else:
        raise UsageError(
            "this task trains several networks and does not support --distributed or --compile.",
            "Drop --distributed and --compile.",
        )


def _shard(batches: Any, *, pad: bool) -> Any:
    if not hasattr(batches, "shard"):
        raise UsageError(
            "this task's batches cannot be split between processes, so it does not support --distributed.",
            "Train it in one process (drop --distributed).",
        )
    return batches.shard(distributed.rank(), distributed.world_size(), pad=pad)


def _batch_size(batch: Any) -> int:
    first = (
        batch[0]
        if isinstance(batch, list | tuple)
        else next(iter(batch.values()))
        if isinstance(batch, dict)
        else batch
    )
    return int(first.shape[0]) if isinstance(first, torch.Tensor) else 1


def _set_epoch(batches: Any, epoch: int) -> None:
    for target in (batches, getattr(batches, "sampler", None)):
        if target is not None and hasattr(target, "set_epoch"):
            target.set_epoch(epoch)


def validate(
    task: Validating,
    batches: Iterable[Any],
    device: torch.device,
    precision: str,
    channels_last: bool = False,
) -> dict[str, float]:
    """Run the task's validation step over ``batches`` and return its metrics.

    In distributed training each process validates its share of ``batches`` and
    the outputs of all processes are joined (in rank order) before the metrics are
    computed, so every process gets the same metrics.
    """
    task.model.eval()
    collected: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad(), autocast(device, precision):
        for batch in batches:
            out = task.validation_step(_to_device(batch, device, channels_last))
            for key, value in out.items():
                collected.setdefault(key, []).append(
                    value.detach()
                    .float()
                    .cpu()
                    .reshape(value.shape[0] if value.ndim else 1, *value.shape[1:])
                )
    if distributed.active():
        joined: dict[str, list[torch.Tensor]] = {}
        for part in distributed.gather(collected):
            for key, values in part.items():
                joined.setdefault(key, []).extend(values)
        collected = joined
    outputs = {k: torch.cat(v) for k, v in collected.items()}
    return task.validation_metrics(outputs)


def _train_epoch(
    task: AdversarialTask,
    model: torch.nn.Module,
    train: Iterable[Any],
    device: torch.device,
    options: TrainOptions,
    optimisation: Optimisation,
    stepper: Stepper,
    callbacks: Sequence[Callback],
    epoch: int,
) -> tuple[dict[str, float], float, float]:
    """One pass over the training batches: the mean of each reported loss (``train_*``), the seconds
    the pass took and the share of them spent waiting for batches."""
    tic = time.perf_counter()
    task.model.train()
    totals: dict[str, float] = {}
    count = 0
    waiting = _DataWait()
    for step, batch in enumerate(waiting.over(train)):
        batch = _to_device(batch, device, options.channels_last)
        with autocast(device, options.precision):
            out = task.training_step(batch, stepper)
        if not all(torch.isfinite(v).all() for v in out.values()):
            bad = next(k for k, v in out.items() if not torch.isfinite(v).all())
            raise TrainingFailed(
                f"the training {bad.replace('_', ' ')} became {out[bad].detach().float().mean().item()} at epoch {epoch + 1}, step {step + 1}: training diverged.",
                "Lower --lr (e.g. by 10x), add --grad-clip 1.0, or check the inputs for extreme values.",
            )
        optimisation.scaler.update()
        n = _batch_size(batch)
        for key, part in out.items():
            totals[key] = totals.get(key, 0.0) + float(part.detach()) * n
        count += n
        for cb in callbacks:
            cb.on_step(epoch=epoch + 1, step=step + 1, loss=float(out["loss"].detach()))
    seconds = time.perf_counter() - tic
    if distributed.active():
        # Every process reports the mean over all processes' batches.
        *sums, total = distributed.sum_across([*totals.values(), count])
        totals, count = dict(zip(totals, sums, strict=True)), int(total)
        distributed.broadcast_buffers(model)
    # train_loss, then any other losses the task reports (e.g. a GAN's train_d_loss).
    means = {f"train_{k}": v / max(count, 1) for k, v in totals.items()}
    return means, seconds, min(1.0, waiting.seconds / seconds) if seconds > 0 else 0.0


def _interrupted(
    done: int, epochs: int, saved_epochs: int, checkpoint: Path | None, hint: str
) -> Interrupted:
    # A Ctrl-C during a checkpoint write keeps the previous checkpoint (the write is atomic).
    saved = (
        f"epochs 1-{saved_epochs} are saved in {checkpoint}"
        if checkpoint is not None and saved_epochs
        else "no epoch was saved"
        if checkpoint is not None
        else "no checkpoint is kept"
    )
    return Interrupted(f"training interrupted after {done} of {epochs} epochs; {saved}.", hint or None)


def _place(
    task: Task | AdversarialTask, train: Any, val: Any, options: TrainOptions
) -> tuple[torch.device, torch.nn.Module, Any, Any]:
    """The device, the plain network on it and the batches (each process's share under --distributed)."""
    device = resolve_device(options.device)
    check_precision(device, options.precision)
    if options.distributed:
        if not distributed.active():
            raise UsageError(
                "--distributed training needs the process group torchrun starts.",
                "Launch with: torchrun --nproc-per-node N -m neurodl ... --distributed.",
            )
        if device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
    # The plain network: its state dict is what checkpoints and weights hold, whatever wraps it.
    model = task.model.to(device)
    if options.channels_last:
        model = _channels_last(model)
    if hasattr(train, "to"):
        train = train.to(device)
    if val is not None and hasattr(val, "to"):
        val = val.to(device)
    if options.distributed:
        train = _shard(train, pad=True)
        val = None if val is None else _shard(val, pad=False)
    return device, model, train, val


def fit(
    task: Task | AdversarialTask,
    train: Iterable[Any],
    val: Iterable[Any] | None,
    options: TrainOptions,
    *,
    checkpoint: Path | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    resume_hint: str = "",
) -> FitResult:
    """Train ``task.model`` on ``train``, selecting weights on ``val`` (if given).

    Every epoch ends with an atomic checkpoint (when ``checkpoint`` is set); with
    ``resume`` a run continues from it and ends with the same weights as an
    uninterrupted run with the same seed. Early stopping watches
    ``options.monitor`` (``auto``: the task's default) on the validation set.

    With ``options.distributed`` (a process group started by
    :func:`neurodl.engine.distributed.start`) every process trains on its share
    of each epoch's batches in DDP; only rank 0 writes checkpoints, which hold
    the plain model's state, so a run resumes with any number of processes.
    Each epoch's record holds ``data_wait``: the share of the training time
    spent waiting for batches.

    Raises:
        TrainingFailed: the loss became NaN or infinite.
        Interrupted: Ctrl-C; the last completed epoch's checkpoint is kept.
    """
    device, model, train, val = _place(task, train, val, options)
    if val is None:
        monitor = "train_loss"  # nothing else to watch
    else:
        monitor = task.default_monitor if options.monitor == "auto" else options.monitor
    mode = monitor_mode(monitor)
    # Every task is trained as groups of networks, each with its optimiser: one (model) for most.
    stepping = task if _adversarial(task) else OneNetwork(task)
    optimisation = Optimisation.build(stepping, options, mode, device)
    stepper = Stepper(optimisation.optimizers, optimisation.scaler, options.grad_clip)
    selection = Selection(FitResult(monitor=monitor), clone_state(model))
    result = selection.result
    start = 0
    if resume and checkpoint is not None and checkpoint.exists():
        state = load_state(checkpoint)
        model.load_state_dict(state["model"])
        optimisation.load_state_dict(state)
        selection.load_state_dict(state)
        start = options.epochs if result.stopped_early else len(result.history)
    saved_epochs = len(result.history)  # epochs held by the checkpoint on disk
    wrap = _training_wrapper(options, device)
    if wrap is not None:
        _wrap_task(stepping, wrap)
    for cb in callbacks:
        cb.on_fit_start(
            epochs=options.epochs, steps=len(train) if isinstance(train, Sized) else 0, start_epoch=start
        )
    try:
        with deterministic_algorithms(options.deterministic):
            for epoch in range(start, options.epochs):
                seed_everything(options.seed, epoch)
                _set_epoch(train, epoch)
                tic = time.perf_counter()
                means, _, data_wait = _train_epoch(
                    stepping, model, train, device, options, optimisation, stepper, callbacks, epoch
                )
                record: dict[str, float] = {"epoch": epoch + 1, **means}
                if val is not None:
                    scores = validate(
                        _validating(task), val, device, options.precision, options.channels_last
                    )
                    record.update({f"val_{k}": float(v) for k, v in scores.items()})
                record.update(lr=optimisation.lr, seconds=time.perf_counter() - tic, data_wait=data_wait)
                if monitor not in record:
                    known = ", ".join(k for k in record if k.startswith("val_"))
                    raise UsageError(
                        f"--monitor '{monitor}' is not a metric of this task.",
                        f"Use one of: {known or 'train_loss'}.",
                    )
                optimisation.schedule(record[monitor])
                selection.update(record, model, mode, options.min_delta)
                if val is not None and options.patience > 0 and selection.bad_epochs >= options.patience:
                    result.stopped_early = True
                if checkpoint is not None and distributed.is_main():
                    state = {
                        "model": model.state_dict(),
                        **optimisation.state_dict(),
                        **selection.state_dict(),
                    }
                    save_state(state, checkpoint)
                saved_epochs = len(result.history)
                for cb in callbacks:
                    cb.on_epoch_end(record)
                if result.stopped_early:
                    break
    except KeyboardInterrupt as exc:
        raise _interrupted(
            len(result.history), options.epochs, saved_epochs, checkpoint, resume_hint
        ) from exc
    except Exception as exc:
        if options.compile and type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
            raise UsageError(
                f"--compile failed: torch.compile could not compile this network ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}).",
                "Drop --compile (it only speeds up training); on CPU torch.compile also needs a C++ compiler.",
            ) from exc
        raise
    finally:
        if wrap is not None and hasattr(stepping, "distribute"):
            # Predictions and saved weights after the fit use the plain network.
            stepping.distribute(_unwrap)
    if val is not None:
        model.load_state_dict(selection.best_state)
    else:
        # Without a validation set there is nothing to select on: keep the last weights.
        result.best_epoch = len(result.history)
        result.best_value = result.history[-1]["train_loss"] if result.history else math.nan
    for cb in callbacks:
        cb.on_fit_end(result)
    return result


def _channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """The 3D channels-last memory layout (faster 3D convolutions on recent GPUs)."""
    try:
        return model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    except RuntimeError as exc:
        raise UsageError(
            f"--channels-last is for 3D networks; this one has parameters it cannot convert ({exc}).",
            "Drop --channels-last.",
        ) from exc
