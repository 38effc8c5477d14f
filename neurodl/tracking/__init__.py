"""Experiment tracking: a training run also logged to MLflow and/or TensorBoard (``--track``).

The run directory stays the record of a run; a tracker is a copy for the tools
a lab already runs. :func:`tracked` wraps a ``train`` call; every fit it starts
reports per-epoch metrics through engine callbacks
(:mod:`neurodl.engine.observers`), and at the end the run's final metrics and
small files are logged. A tracker that fails (a server down) is dropped with
one warning; the training run itself never fails because of it.

Nothing here is imported by ``neurodl --help``: the tracking libraries are
optional extras (``pip install 'neurodl[mlflow]'`` / ``'neurodl[tensorboard]'``),
imported when a run asks for them.
"""

from neurodl.tracking.extras import require_extra
from neurodl.tracking.session import TrackingSession, tracked

__all__ = ["TrackingSession", "require_extra", "tracked"]
