"""Typed, frozen option sets per task, and how they are resolved and saved.

Precedence, lowest first: the dataclass defaults, then ``--config FILE``
(YAML or JSON), then flags given explicitly on the command line. The resolved
options are saved in the run directory's ``config.json``.

The package: :mod:`~neurodl.config._flags` (``option()``, :class:`Flag`, the ``--help``
panels), :mod:`~neurodl.config.training` (the engine's and the images' options, shared by
every task, and :func:`lower_is_better`), :mod:`~neurodl.config.tasks` (the one-network
tasks' options), :mod:`~neurodl.config.gan` (the adversarial tasks') and
:mod:`~neurodl.config.merge` (``--config`` files, flat dicts and ``config.json``). Every
name is importable from ``neurodl.config`` itself. Nothing here imports torch, MONAI or pandas.
"""

from neurodl.config._flags import (
    IMAGES,
    MODEL,
    PANELS,
    TRACKING,
    TRAINING,
    Flag,
    FlagChanges,
    option,
)
from neurodl.config.gan import GAN_LOSSES, GenerateOptions, TranslateOptions
from neurodl.config.merge import build, from_dict, load_config_file, to_dict
from neurodl.config.tasks import (
    AutoencodeOptions,
    BiomarkersOptions,
    ClassifyOptions,
    SegmentOptions,
)
from neurodl.config.training import (
    ACTIVATIONS,
    OPTIMIZERS,
    PRECISIONS,
    RUNTIME_OPTIONS,
    SCHEDULERS,
    TRACKERS,
    ImageOptions,
    TrainOptions,
    lower_is_better,
)

__all__ = [
    "ACTIVATIONS",
    "GAN_LOSSES",
    "IMAGES",
    "MODEL",
    "OPTIMIZERS",
    "PANELS",
    "PRECISIONS",
    "RUNTIME_OPTIONS",
    "SCHEDULERS",
    "TRACKERS",
    "TRACKING",
    "TRAINING",
    "AutoencodeOptions",
    "BiomarkersOptions",
    "ClassifyOptions",
    "Flag",
    "FlagChanges",
    "GenerateOptions",
    "ImageOptions",
    "SegmentOptions",
    "TrainOptions",
    "TranslateOptions",
    "build",
    "from_dict",
    "load_config_file",
    "lower_is_better",
    "option",
    "to_dict",
]
