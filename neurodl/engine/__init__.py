"""The one training loop of neurodl, shared by every task.

A task supplies the model, the loss (in ``training_step``) and its validation
metrics; the engine owns optimisers, batching, precision, early stopping,
checkpoints, resume and progress. Nothing here knows about a concrete task.
"""

from neurodl.engine.batches import TensorBatches
from neurodl.engine.loop import AdversarialTask, Callback, FitResult, Task, fit
from neurodl.engine.optim import build_optimizer, build_scheduler
from neurodl.engine.runtime import resolve_device, seed_everything

__all__ = [
    "AdversarialTask",
    "Callback",
    "FitResult",
    "Task",
    "TensorBatches",
    "build_optimizer",
    "build_scheduler",
    "fit",
    "resolve_device",
    "seed_everything",
]
