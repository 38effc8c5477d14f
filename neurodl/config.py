"""Typed, frozen option sets per task, and how they are resolved and saved.

Precedence, lowest first: the dataclass defaults, then ``--config FILE``
(YAML or JSON), then flags given explicitly on the command line. The resolved
options are saved in the run directory's ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from neurodl.errors import UsageError

T = TypeVar("T")

OPTIMIZERS = ("sgd", "adam", "adamw", "adadelta", "adagrad", "rmsprop")
SCHEDULERS = ("none", "plateau", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16")
ACTIVATIONS = ("relu", "tanh", "sigmoid")
# How to run, not what to train: a resumed run takes these from its command line, not from config.json
# (a run started in 4 processes may continue in 1).
RUNTIME_OPTIONS = ("distributed", "track", "track_uri", "experiment")
TRACKERS = ("mlflow", "tensorboard")
# Metric names that go down as a model improves (losses, errors, distances); every other metric goes up.
_LOWER_IS_BETTER = ("loss", "mae", "mse", "rmse", "error", "hausdorff", "hd95", "fid", "mmd")


def lower_is_better(metric: str) -> bool:
    """Losses, errors and distances go down; scores (accuracy, Dice, PSNR, R²...) go up.

    The one rule for early stopping (the engine), picking the best run (``compare``)
    and the best epoch (reports), so they never disagree.
    """
    lowered = metric.lower()
    return any(k in lowered for k in _LOWER_IS_BETTER)


# The panels of a ``train --help``, in the order shown (a flag without one is in the first, "Options").
IMAGES = "Images and preprocessing"
MODEL = "Model"
TRAINING = "Training"
TRACKING = "Tracking"
PANELS = ("", IMAGES, MODEL, TRAINING, TRACKING)


@dataclass(frozen=True)
class Flag:
    """How a field of an option set is typed on the command line: plain data, read by ``neurodl.cli``.

    ``parse`` names how the typed text becomes the value: ``items`` (comma-separated names),
    ``ints``, ``floats``, ``hidden`` (layer sizes, or none), ``batch_size`` (a number, or all);
    empty: the field's own type. ``repeat``: the flag may be given several times. ``after``:
    listed in ``--help`` after that field's flag rather than in field order.
    """

    names: tuple[str, ...]
    help: str
    panel: str = ""
    parse: str = ""
    repeat: bool = False
    metavar: str = ""
    envvar: str = ""
    after: str = ""


# How a task's command shows fields of its nested option sets where that differs from their own
# flag: the Flag attributes that change, or None for no flag (the field can still be set in --config).
FlagChanges = dict[str, dict[str, Any] | None]


def option(default: Any, *names: str, help: str, **shown: Any) -> Any:
    """A field with its default and its flag: ``lr: float = option(1e-3, "--lr", help="Step size.")``."""
    return field(default=default, metadata={"flag": Flag(names, help, **shown)})


@dataclass(frozen=True)
class TrainOptions:
    """Options of the training engine, shared by every task.

    ``batch_size`` 0 means the whole training set in one batch (full-batch
    gradient descent); 1 is stochastic gradient descent. With ``distributed``
    (several processes started by torchrun) it is the batch of each process.
    ``compile`` (``torch.compile``) and ``channels_last`` (3D channels-last
    memory layout) are GPU fast paths, off unless asked for.
    """

    epochs: int = option(200, "--epochs", help="Maximum number of epochs.", panel=TRAINING)
    batch_size: int = option(
        32,
        "--batch-size",
        help="Rows per step; 1 = stochastic, 'all' = full-batch gradient descent.",
        panel=TRAINING,
        parse="batch_size",
    )
    optimizer: str = option(
        "adam", "--optimizer", help="sgd, adam, adamw, adadelta, adagrad or rmsprop.", panel=TRAINING
    )
    lr: float = option(1e-3, "--lr", help="Learning rate (step size of gradient descent).", panel=TRAINING)
    momentum: float = option(0.0, "--momentum", help="Momentum (sgd, rmsprop).", panel=TRAINING)
    weight_decay: float = option(0.0, "--weight-decay", help="L2 penalty on the weights.", panel=TRAINING)
    scheduler: str = option(
        "none", "--scheduler", help="Learning-rate schedule: none, plateau or cosine.", panel=TRAINING
    )
    grad_clip: float = option(
        0.0, "--grad-clip", help="Clip the gradient norm to this value (0: off).", panel=TRAINING
    )
    patience: int = option(
        20,
        "--patience",
        help="Early stopping: epochs without improvement before stopping (0: off; the best validation epoch's weights are kept either way).",
        panel=TRAINING,
    )
    min_delta: float = option(
        0.0,
        "--min-delta",
        help="Early stopping: smallest change that counts as an improvement.",
        panel=TRAINING,
    )
    monitor: str = option(
        "auto",
        "--monitor",
        help="Validation metric for early stopping and model selection (auto: val_loss).",
        panel=TRAINING,
    )
    seed: int = option(
        0, "--seed", help="Random seed (splits, initialisation, shuffling, dropout).", panel=TRAINING
    )
    deterministic: bool = option(
        False, "--deterministic", help="Use deterministic kernels (slower on GPU).", panel=TRAINING
    )
    device: str = option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps.", panel=TRAINING)
    precision: str = option(
        "fp32", "--precision", help="fp32, bf16 or fp16 (mixed precision on GPU).", panel=TRAINING
    )
    distributed: bool = option(
        False,
        "--distributed",
        help="Train in several processes (DDP), launched by torchrun: torchrun --nproc-per-node N -m neurodl ... --distributed. --batch-size is per process.",
        panel=TRAINING,
    )
    compile: bool = option(
        False,
        "--compile",
        help="torch.compile the network (GPU fast path; compiling takes a while first).",
        panel=TRAINING,
    )
    channels_last: bool = option(
        False,
        "--channels-last",
        help="Channels-last 3D memory layout (GPU fast path for 3D convolutions).",
        panel=TRAINING,
    )
    # Experiment tracking (neurodl.tracking): where the run is also logged, not what is trained.
    track: tuple[str, ...] = option(
        (),
        "--track",
        help="Also log the run to mlflow and/or tensorboard (repeat for both); pip install 'neurodl\\[mlflow]' / 'neurodl\\[tensorboard]'.",
        panel=TRACKING,
        parse="items",
        repeat=True,
    )
    track_uri: str = option(
        "",
        "--track-uri",
        help="MLflow tracking URI: a lab's server (http://host:5000) or a store (sqlite:///path/mlflow.db); default: sqlite:///DIR/mlflow.db beside the run directory.",
        panel=TRACKING,
        envvar="MLFLOW_TRACKING_URI",
    )
    experiment: str = option(
        "", "--experiment", help="MLflow experiment name (default: the task).", panel=TRACKING
    )

    def __post_init__(self) -> None:
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        for tracker in self.track:
            _choice("track", tracker, TRACKERS)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("precision", self.precision, PRECISIONS)
        _positive("epochs", self.epochs)
        _positive("lr", self.lr)
        if self.batch_size < 0:
            raise UsageError(f"--batch-size must be a positive integer or 'all', not {self.batch_size}.")
        for name in ("momentum", "weight_decay", "grad_clip", "min_delta"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 0, not {getattr(self, name)}.")
        if self.patience < 0:
            raise UsageError(f"--patience must be >= 0 (0 turns early stopping off), not {self.patience}.")


@dataclass(frozen=True)
class BiomarkersOptions:
    """Options of ``neurodl biomarkers train``."""

    target: str = option("diagnosis", "--target", "-t", help="Column to predict (e.g. diagnosis, severity).")
    features: tuple[str, ...] = option(
        (),
        "--features",
        "-f",
        help="Feature columns, comma-separated or repeated (default: every numeric column except ids and the target).",
        parse="items",
        repeat=True,
    )
    exclude: tuple[str, ...] = option(
        (), "--exclude", help="Columns never used as features.", parse="items", repeat=True
    )
    task: str = option(
        "auto",
        "--task",
        help="auto, classification or regression (auto: strings or few integer levels = classification).",
    )
    hidden: tuple[int, ...] = option(
        (64, 32),
        "--hidden",
        help="Hidden layer sizes, e.g. 64,32; 'none' = logistic (classification) or linear (regression) regression.",
        panel=MODEL,
        parse="hidden",
    )
    activation: str = option("relu", "--activation", help="relu, tanh or sigmoid.", panel=MODEL)
    dropout: float = option(
        0.0, "--dropout", help="Dropout probability after each hidden layer.", panel=MODEL
    )
    impute: str = option(
        "none",
        "--impute",
        help="Fill missing feature values: none (error), median or mean (fitted on training rows).",
    )
    class_weight: str = option(
        "none", "--class-weight", help="none or balanced (weigh rare classes up).", panel=MODEL
    )
    cv: int = option(
        0, "--cv", help="K-fold cross-validation grouped by participant (0: one train/validation split)."
    )
    group: str = option(
        "auto",
        "--group",
        help="Participant column for grouped splits (auto: participant_id when present; none: each row).",
    )
    val_fraction: float = option(
        0.2, "--val-fraction", help="Share of participants held out for validation / early stopping."
    )
    positive: str = option(
        "",
        "--positive",
        help="Positive class of a binary target (default: the one that is not CN/HC/control/0).",
        after="task",
    )
    # Tables are small: a few steps per epoch, so a larger step and more epochs than for images.
    train: TrainOptions = field(default_factory=lambda: TrainOptions(lr=0.01, epochs=300, patience=30))
    # One process on small tensors: no flags for several processes or the GPU fast paths.
    flag_changes: ClassVar[FlagChanges] = {"distributed": None, "compile": None, "channels_last": None}

    def __post_init__(self) -> None:
        _choice("task", self.task, ("auto", "classification", "regression"))
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("impute", self.impute, ("none", "mean", "median"))
        _choice("class-weight", self.class_weight, ("none", "balanced"))
        if not 0 <= self.dropout < 1:
            raise UsageError(f"--dropout must be in [0, 1), not {self.dropout}.")
        if any(h <= 0 for h in self.hidden):
            raise UsageError(
                f"--hidden sizes must be positive, not {','.join(map(str, self.hidden))}.",
                "Use e.g. --hidden 64,32, or --hidden none for linear/logistic regression.",
            )
        if self.cv == 1 or self.cv < 0:
            raise UsageError(f"--cv must be 0 (no cross-validation) or at least 2, not {self.cv}.")
        if not 0 < self.val_fraction < 1:
            raise UsageError(f"--val-fraction must be between 0 and 1, not {self.val_fraction}.")


@dataclass(frozen=True)
class ImageOptions:
    """Which images to read and how to preprocess them; shared by the image tasks.

    Empty ``spacing``/``size`` are chosen from the training images (median
    voxel size; median field of view rounded up to a multiple of 16).
    ``cache``: ``auto`` keeps preprocessed images in RAM while they fit
    ``cache_budget`` (empty: 25 % of the available memory, at most 512 MiB) and on
    disk beyond it, so memory is bounded by the batch, not the cohort; ``memory``
    keeps them all in RAM; ``disk`` keeps them as safetensors files in
    ``cache_dir`` (default: the run's ``cache/``), so another run or a resumed one
    skips decoding; ``none`` decodes every epoch.
    """

    image: tuple[str, ...] = option(
        ("t1",),
        "--image",
        "-i",
        help="Image column(s); several = several input channels (default: t1).",
        panel=IMAGES,
        parse="items",
        repeat=True,
    )
    participant: str = option(
        "participant_id",
        "--participant",
        help="Participant column: sessions of one participant stay on one side of every split.",
        panel=IMAGES,
    )
    spacing: tuple[float, ...] = option(
        (),
        "--spacing",
        help="Voxel size in mm after resampling: one or three numbers (default: the training images' median).",
        panel=IMAGES,
        parse="floats",
    )
    size: tuple[int, ...] = option(
        (),
        "--size",
        help="Array size after crop/pad: one or three integers (default: median field of view, multiple of 16).",
        panel=IMAGES,
        parse="ints",
    )
    normalize: str = option(
        "zscore", "--normalize", help="zscore (brain voxels), minmax or percentile (1-99%).", panel=IMAGES
    )
    crop_foreground: bool = option(
        False, "--crop-foreground", help="Crop to the head's bounding box first.", panel=IMAGES
    )
    augment: str = option(
        "light",
        "--augment",
        help="Training augmentation: none, light (flips, small affine, noise) or strong (+ bias field, contrast).",
        panel=IMAGES,
    )
    cache: str = option(
        "auto",
        "--cache",
        help="auto: decode and preprocess each image once, keep it in RAM while the cohort fits --cache-budget and on disk (--cache-dir) beyond; memory: all in RAM; disk: all as files in --cache-dir, reused by later runs; none: every epoch.",
        panel=IMAGES,
    )
    cache_dir: str = option(
        "",
        "--cache-dir",
        help="Folder for --cache disk, and for --cache auto beyond its budget (default: cache/ in the run directory); share it between runs.",
        panel=IMAGES,
    )
    cache_budget: str = option(
        "",
        "--cache-budget",
        help="RAM --cache auto may fill with preprocessed images: an amount (4GiB, 512MB; 0: all on disk) or a share of the available memory (25%). Default: 25% of the available memory, at most 512 MiB.",
        panel=IMAGES,
    )
    workers: int = option(
        0, "--workers", help="Data-loading processes (0: in the main process).", panel=IMAGES
    )
    bids_filter: tuple[str, ...] = option(
        (),
        "--bids-filter",
        help="With a BIDS dataset root: keep the images whose entity has this value (acq=mprage, ses=01); repeat for several.",
        panel=IMAGES,
        repeat=True,
        metavar="ENTITY=VALUE",
        after="participant",
    )

    def __post_init__(self) -> None:
        from neurodl.io.bids import parse_filters  # light: validates ENTITY=VALUE items

        parse_filters(self.bids_filter)
        _choice("normalize", self.normalize, ("zscore", "minmax", "percentile"))
        _choice("augment", self.augment, ("none", "light", "strong"))
        _choice("cache", self.cache, ("auto", "memory", "disk", "none"))
        if self.cache_dir and self.cache not in ("disk", "auto"):
            raise UsageError(
                f"--cache-dir is where --cache disk (or auto, beyond its budget) keeps preprocessed images, but --cache is '{self.cache}'.",
                "Add --cache disk, or drop --cache-dir.",
            )
        if self.cache_budget:
            from neurodl.data.cache import parse_budget  # torch-free

            if self.cache != "auto":
                raise UsageError(
                    f"--cache-budget is the memory --cache auto may fill, but --cache is '{self.cache}'.",
                    "Drop --cache-budget, or use --cache auto.",
                )
            parse_budget(self.cache_budget, available=0)
        if not self.image:
            raise UsageError("at least one --image column is needed.")
        if len(self.spacing) not in (0, 1, 3) or any(s <= 0 for s in self.spacing):
            raise UsageError(
                f"--spacing must be one or three positive numbers (mm), not {','.join(map(str, self.spacing))}."
            )
        if len(self.size) not in (0, 1, 3) or any(s < 4 for s in self.size):
            raise UsageError(
                f"--size must be one or three integers >= 4, not {','.join(map(str, self.size))}."
            )
        if self.workers < 0:
            raise UsageError(f"--workers must be >= 0, not {self.workers}.")


# Help shared by the image tasks' splits.
_CV = "K-fold cross-validation by participant (0: one train/validation split)."
_VAL_FRACTION = "Share of participants for validation / early stopping."
_TEST_FRACTION = (
    "Share of participants held out entirely, scored at the end and written to test_manifest.tsv."
)


@dataclass(frozen=True)
class ClassifyOptions:
    """Options of ``neurodl classify train``.

    ``task`` ``auto`` follows the biomarkers' rule: a label of strings, or of integers with
    at most 5 levels, is classes; other numbers are a continuous target (image regression,
    trained with ``loss`` on the target standardised on the training rows).
    ``color_by`` names a column whose groups colour the regression plots (e.g. diagnosis).
    """

    label: str = option(
        "diagnosis",
        "--label",
        "-l",
        help="Column to predict: classes (e.g. diagnosis) or a number (e.g. age: image regression, see --task).",
    )
    task: str = option(
        "auto",
        "--task",
        help="auto: strings, or integers with at most 5 levels, are classes; other numbers are regressed. classification or regression to choose.",
    )
    loss: str = option(
        "mse",
        "--loss",
        help="Regression: mse, l1 or huber, on the target standardised on the training rows (classes use cross-entropy).",
        panel=MODEL,
        after="class_weight",
    )
    color_by: str = option(
        "",
        "--color-by",
        help="Regression: colour predicted-vs-true by this column and plot the residuals per group (e.g. diagnosis).",
    )
    model: str = option(
        "cnn",
        "--model",
        "-m",
        help="Network from `neurodl models classify`: cnn, densenet121, resnet18, resnet50.",
        panel=MODEL,
    )
    depth: int = option(4, "--depth", help="cnn: number of conv->ReLU->pool blocks.", panel=MODEL)
    width: int = option(
        16, "--width", help="cnn: filters in the first block (doubling each block).", panel=MODEL
    )
    dropout: float = option(
        0.2, "--dropout", help="Dropout before the last layer (cnn, densenet121).", panel=MODEL
    )
    class_weight: str = option("none", "--class-weight", help="Classes: none or balanced.", panel=MODEL)
    positive: str = option(
        "",
        "--positive",
        help="Positive class of a binary label (default: the one that is not CN/HC/control/0).",
    )
    cv: int = option(0, "--cv", help=_CV)
    val_fraction: float = option(0.2, "--val-fraction", help=_VAL_FRACTION)
    test_fraction: float = option(0.0, "--test-fraction", help=_TEST_FRACTION)
    images: ImageOptions = field(default_factory=ImageOptions)
    # Imaging cohorts are small: small batches (more steps per epoch) and a patient early stop.
    train: TrainOptions = field(
        default_factory=lambda: TrainOptions(lr=1e-3, epochs=80, batch_size=4, patience=20)
    )

    def __post_init__(self) -> None:
        _choice("task", self.task, ("auto", "classification", "regression"))
        _choice("loss", self.loss, ("mse", "l1", "huber"))
        _choice("class-weight", self.class_weight, ("none", "balanced"))
        if not 0 <= self.dropout < 1:
            raise UsageError(f"--dropout must be in [0, 1), not {self.dropout}.")
        if not 1 <= self.depth <= 8 or self.width < 1:
            raise UsageError(f"--depth must be 1-8 and --width >= 1 (got {self.depth}, {self.width}).")
        if self.cv == 1 or self.cv < 0:
            raise UsageError(f"--cv must be 0 (no cross-validation) or at least 2, not {self.cv}.")
        if not 0 < self.val_fraction < 1 or not 0 <= self.test_fraction < 0.9:
            raise UsageError(
                f"--val-fraction must be in (0, 1) and --test-fraction in [0, 0.9) (got {self.val_fraction}, {self.test_fraction})."
            )


@dataclass(frozen=True)
class SegmentOptions:
    """Options of ``neurodl segment train``."""

    mask: str = option("dseg", "--mask", help="Column of label maps (integer NIfTI on the image's grid).")
    labels: str = option(
        "",
        "--labels",
        help="Label names: '1=CSF,2=GM,3=WM' or a JSON/TSV table (default: dseg.tsv beside the manifest).",
    )
    model: str = option(
        "unet",
        "--model",
        "-m",
        help="Network from `neurodl models segment`: unet, segresnet, attention_unet, swin_unetr.",
        panel=MODEL,
    )
    patch: tuple[int, ...] = option(
        (48, 48, 48),
        "--patch",
        help="Training patch (and sliding window) size: one or three integers, e.g. 96 on a GPU.",
        panel=MODEL,
        parse="ints",
    )
    samples_per_image: int = option(
        2,
        "--samples-per-image",
        help="Patches drawn from each image per epoch (half centred on foreground).",
        panel=MODEL,
    )
    loss: str = option("dicece", "--loss", help="dicece (Dice + cross-entropy), dice or ce.", panel=MODEL)
    dropout: float = option(0.0, "--dropout", help="Dropout in the network.", panel=MODEL)
    overlap: float = option(
        0.25, "--overlap", help="Sliding-window overlap for validation and prediction.", panel=MODEL
    )
    cv: int = option(0, "--cv", help=_CV)
    val_fraction: float = option(0.2, "--val-fraction", help=_VAL_FRACTION)
    test_fraction: float = option(0.0, "--test-fraction", help=_TEST_FRACTION)
    images: ImageOptions = field(default_factory=ImageOptions)
    train: TrainOptions = field(
        default_factory=lambda: TrainOptions(lr=2e-3, epochs=60, batch_size=2, patience=15)
    )
    flag_changes: ClassVar[FlagChanges] = {
        "size": None,
        "augment": {"help": "none, light or strong (spatial transforms move the mask too)."},
    }

    def __post_init__(self) -> None:
        _choice("loss", self.loss, ("dice", "dicece", "ce"))
        if len(self.patch) not in (1, 3) or any(p < 8 for p in self.patch):
            raise UsageError(
                f"--patch must be one or three integers >= 8, not {','.join(map(str, self.patch))}."
            )
        if self.samples_per_image < 1:
            raise UsageError(f"--samples-per-image must be >= 1, not {self.samples_per_image}.")
        if not 0 <= self.overlap < 1 or not 0 <= self.dropout < 1:
            raise UsageError(
                f"--overlap and --dropout must be in [0, 1) (got {self.overlap}, {self.dropout})."
            )
        if self.cv == 1 or self.cv < 0:
            raise UsageError(f"--cv must be 0 (no cross-validation) or at least 2, not {self.cv}.")
        if not 0 < self.val_fraction < 1 or not 0 <= self.test_fraction < 0.9:
            raise UsageError(
                f"--val-fraction must be in (0, 1) and --test-fraction in [0, 0.9) (got {self.val_fraction}, {self.test_fraction})."
            )

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return (self.patch[0],) * 3 if len(self.patch) == 1 else (self.patch[0], self.patch[1], self.patch[2])  # type: ignore[return-value]


@dataclass(frozen=True)
class AutoencodeOptions:
    """Options of ``neurodl autoencode train``.

    ``beta`` weighs the VAE's KL divergence (summed over the latent dimensions)
    against the reconstruction error (averaged over voxels).
    """

    model: str = option(
        "ae", "--model", "-m", help="ae (autoencoder) or vae (variational autoencoder).", panel=MODEL
    )
    dims: int = option(
        3, "--dims", help="3: whole volumes; 2: the central axial slices of each volume.", panel=MODEL
    )
    latent_dim: int = option(32, "--latent-dim", help="Size of the code (latent vector).", panel=MODEL)
    width: int = option(
        16, "--width", help="Filters of the first level (doubled at each level).", panel=MODEL
    )
    loss: str = option("mse", "--loss", help="Reconstruction loss: mse or l1.", panel=MODEL)
    beta: float = option(
        0.001,
        "--beta",
        help="VAE: weight of the KL divergence against the reconstruction loss.",
        panel=MODEL,
    )
    slices: int = option(8, "--slices", help="--dims 2: central axial slices per volume.", panel=MODEL)
    color_by: str = option(
        "diagnosis", "--color-by", help="Manifest column colouring latent_space.png (if present)."
    )
    cv: int = option(0, "--cv", help=_CV)
    val_fraction: float = option(0.2, "--val-fraction", help=_VAL_FRACTION)
    test_fraction: float = option(0.0, "--test-fraction", help=_TEST_FRACTION)
    images: ImageOptions = field(default_factory=lambda: ImageOptions(size=(32,), augment="none"))
    train: TrainOptions = field(
        default_factory=lambda: TrainOptions(lr=1e-3, epochs=100, batch_size=4, patience=20)
    )
    flag_changes: ClassVar[FlagChanges] = {
        "size": {
            "help": "Array size after resampling (crop/pad): one or three multiples of 8; '' = the training images' field of view."
        },
        "augment": {"help": "none, light or strong."},
    }

    def __post_init__(self) -> None:
        _choice("loss", self.loss, ("mse", "l1"))
        if self.dims not in (2, 3):
            raise UsageError(f"--dims must be 2 (axial slices) or 3 (whole volumes), not {self.dims}.")
        if self.latent_dim <= 0:
            raise UsageError(
                f"--latent-dim must be a positive integer (the size of the code), not {self.latent_dim}."
            )
        if self.width < 1 or self.slices < 1:
            raise UsageError(f"--width and --slices must be >= 1 (got {self.width}, {self.slices}).")
        if self.beta < 0:
            raise UsageError(f"--beta must be >= 0, not {self.beta}.")
        if self.cv == 1 or self.cv < 0:
            raise UsageError(f"--cv must be 0 (no cross-validation) or at least 2, not {self.cv}.")
        if not 0 < self.val_fraction < 1 or not 0 <= self.test_fraction < 0.9:
            raise UsageError(
                f"--val-fraction must be in (0, 1) and --test-fraction in [0, 0.9) (got {self.val_fraction}, {self.test_fraction})."
            )


GAN_LOSSES = ("lsgan", "vanilla", "hinge")
_LR_D = "Discriminator learning rate (0: the same as --lr)."


@dataclass(frozen=True)
class TranslateOptions:
    """Options of ``neurodl translate train`` (pix2pix: a conditional GAN).

    The source image columns are ``images.image`` (``--source``); ``target`` is the
    column of the image to synthesise. The generator learns
    ``lambda_l1 x L1(G(source), target) + adversarial loss``; the discriminator
    judges (source, image) pairs patch by patch. ``lr_d`` 0 means the generator's
    learning rate. ``patch`` is the training patch and inference window (empty: whole
    slices in 2D, 32 in 3D), ``slices`` the axial slices per volume used for training
    (2D; 0: every slice holding head).
    """

    target: str = option(
        "t2", "--target", "-t", help="Column of the images to synthesise.", panel=IMAGES, after="image"
    )
    model: str = option("unet", "--model", "-m", help="Generator: unet or attention_unet.", panel=MODEL)
    discriminator: str = option(
        "patchgan", "--discriminator", help="Discriminator: patchgan or patchgan_small.", panel=MODEL
    )
    dims: int = option(
        2,
        "--dims",
        help="2: axial slices (fast, the default); 3: 3D patches (sliding windows at prediction).",
        panel=MODEL,
    )
    gan_loss: str = option(
        "lsgan", "--gan-loss", help="Adversarial loss: lsgan, vanilla or hinge.", panel=MODEL
    )
    lambda_l1: float = option(
        100.0,
        "--lambda-l1",
        help="Weight of the L1 loss against the adversarial loss (pix2pix: 100; 0: pure GAN).",
        panel=MODEL,
    )
    lr_d: float = option(0.0, "--lr-d", help=_LR_D, panel=MODEL)
    width: int = option(
        32, "--width", help="Filters of the first level of both networks (doubled per level).", panel=MODEL
    )
    patch: tuple[int, ...] = option(
        (),
        "--patch",
        help="Training patch / inference window: one or three multiples of 16 (default: 2D whole slices, 3D 32).",
        panel=MODEL,
        parse="ints",
    )
    slices: int = option(
        0,
        "--slices",
        help="2D: central axial slices per volume for training (0: all with head).",
        panel=MODEL,
    )
    resample_target: bool = option(
        False,
        "--resample-target",
        help="Resample targets on another grid onto their source (trilinear) instead of refusing them.",
        panel=IMAGES,
        after="target",
    )
    val_fraction: float = option(
        0.2, "--val-fraction", help="Share of participants for validation / model selection."
    )
    test_fraction: float = option(0.0, "--test-fraction", help=_TEST_FRACTION)
    images: ImageOptions = field(default_factory=lambda: ImageOptions(augment="none"))
    # pix2pix's 2e-4 suits ~100k steps of batch 1; with a few thousand steps 1e-3 learns far faster
    # (measured on the sample data: generator L1 0.43 vs 1.03 after 150 steps) and stays stable.
    train: TrainOptions = field(
        default_factory=lambda: TrainOptions(lr=1e-3, epochs=60, batch_size=8, patience=15)
    )
    flag_changes: ClassVar[FlagChanges] = {
        "image": {
            "names": ("--source", "-s"),
            "help": "Source image column(s); several = several input channels (default: t1).",
        },
        "size": {
            "help": "Minimum array size after resampling (padded up to it, never cropped); default: the median field of view."
        },
        "normalize": {
            "help": "Source intensities: zscore, minmax or percentile (the target keeps its units)."
        },
        "augment": None,
    }

    def __post_init__(self) -> None:
        _choice("gan_loss", self.gan_loss, GAN_LOSSES)
        if self.dims not in (2, 3):
            raise UsageError(f"--dims must be 2 (slice by slice) or 3 (3D patches), not {self.dims}.")
        if self.lambda_l1 < 0 or self.lr_d < 0:
            raise UsageError(f"--lambda-l1 and --lr-d must be >= 0 (got {self.lambda_l1}, {self.lr_d}).")
        if self.width < 1 or self.slices < 0:
            raise UsageError(f"--width must be >= 1 and --slices >= 0 (got {self.width}, {self.slices}).")
        if self.patch and (len(self.patch) not in (1, 3) or any(p < 32 or p % 16 for p in self.patch)):
            raise UsageError(
                f"--patch must be one or three multiples of 16, at least 32, not {','.join(map(str, self.patch))}.",
                "The U-Net generator halves the patch four times: use e.g. --patch 32 or --patch 64.",
            )
        if not self.target:
            raise UsageError("--target must name the column of the images to synthesise (e.g. --target t2).")
        if not 0 < self.val_fraction < 1 or not 0 <= self.test_fraction < 0.9:
            raise UsageError(
                f"--val-fraction must be in (0, 1) and --test-fraction in [0, 0.9) (got {self.val_fraction}, {self.test_fraction})."
            )


@dataclass(frozen=True)
class GenerateOptions:
    """Options of ``neurodl generate train`` (a GAN that makes new images from noise).

    ``condition`` is the label column the generator is conditioned on (empty: an
    unconditional GAN); ``dims`` 3 trains on whole volumes resized to ``images.size``,
    2 on the ``slices`` central axial slices of each. ``gan_loss`` vanilla (the default)
    is the minimax loss with the generator's non-saturating form. ``lr_d`` 0 means ``train.lr``.
    """

    condition: str = option(
        "",
        "--condition",
        "-c",
        help="Label column to condition on (one generator for every value, e.g. diagnosis); empty: unconditional.",
        panel=IMAGES,
        after="image",
    )
    model: str = option("dcgan", "--model", "-m", help="Generator: dcgan.", panel=MODEL)
    discriminator: str = option(
        "projection", "--discriminator", help="Discriminator: projection.", panel=MODEL
    )
    dims: int = option(
        3, "--dims", help="3: whole volumes (the default); 2: central axial slices.", panel=MODEL
    )
    gan_loss: str = option(
        "vanilla",
        "--gan-loss",
        help="Adversarial loss: vanilla (the minimax loss, the default), hinge or lsgan.",
        panel=MODEL,
    )
    latent_dim: int = option(64, "--latent-dim", help="Length of the noise vector.", panel=MODEL)
    width: int = option(16, "--width", help="Filters of the finest level of both networks.", panel=MODEL)
    lr_d: float = option(0.0, "--lr-d", help=_LR_D, panel=MODEL)
    slices: int = option(8, "--slices", help="2D: central axial slices per volume to learn.", panel=MODEL)
    # A run whose config.json lacks these keys (made before they existed) keeps the old behaviour (0).
    aux_weight: float = option(
        5.0,
        "--aux-weight",
        help="Conditional: weight of the auxiliary-classifier loss (AC-GAN: the discriminator also names the condition of real images, and the generator is rewarded when it names the asked one in its samples); 0: projection only.",
        panel=MODEL,
    )
    minibatch_std: int = option(
        1,
        "--minibatch-std",
        help="1: the discriminator sees how much each batch of images varies (real and synthetic apart), against samples that all look alike; 0: off.",
        panel=MODEL,
    )
    mode_seeking: float = option(
        0.1,
        "--mode-seeking",
        help="Weight of the mode-seeking term: the generator is penalised when two noise vectors give alike images of one condition (against mode collapse); 0: off.",
        panel=MODEL,
    )
    class_moments: float = option(
        100.0,
        "--class-moments",
        help="Conditional: weight of the class-moment term: the generator is penalised by the squared distance between the mean of its samples of each condition and the mean real image of that condition in the batch (on a 4x coarser grid); 0: off.",
        panel=MODEL,
    )
    diff_augment: int = option(
        1,
        "--diff-augment",
        help="1: the discriminator sees every image (real and synthetic) randomly flipped left-right and shifted (differentiable augmentation), so that on few images its condition head does not memorise them; 0: off.",
        panel=MODEL,
    )
    test_fraction: float = option(
        0.0,
        "--test-fraction",
        help="Share of participants held out (test_manifest.tsv), the real images `generate evaluate` compares with.",
    )
    images: ImageOptions = field(default_factory=lambda: ImageOptions(size=(32,), augment="none"))
    # DCGAN's 2e-4 with no early stopping: a GAN has no validation loss to select on; the last epoch is kept.
    train: TrainOptions = field(
        default_factory=lambda: TrainOptions(lr=2e-4, epochs=100, batch_size=8, patience=0)
    )
    # One image column, and no flags for early stopping, schedules, momentum, the GPU fast paths or
    # tracking (generate train has never had them; --config can still set them).
    flag_changes: ClassVar[FlagChanges] = {
        "image": {"help": "Column of the images to learn.", "repeat": False},
        "size": {
            "help": "Grid the images are resized to (one or three multiples of 8); heads are downsampled to fit, not cut."
        },
        **dict.fromkeys(("normalize", "augment", "cache_budget")),
        **dict.fromkeys(
            ("momentum", "scheduler", "patience", "min_delta", "monitor", "compile", "channels_last")
        ),
        **dict.fromkeys(("track", "track_uri", "experiment")),
    }

    def __post_init__(self) -> None:
        _choice("gan_loss", self.gan_loss, GAN_LOSSES)
        if self.dims not in (2, 3):
            raise UsageError(f"--dims must be 2 (axial slices) or 3 (whole volumes), not {self.dims}.")
        if not 1 <= self.latent_dim <= 4096 or not 1 <= self.width <= 256:
            raise UsageError(
                f"--latent-dim must be 1-4096 and --width 1-256 (got {self.latent_dim}, {self.width})."
            )
        if self.lr_d < 0 or self.slices < 1:
            raise UsageError(f"--lr-d must be >= 0 and --slices >= 1 (got {self.lr_d}, {self.slices}).")
        weights = (self.aux_weight, self.mode_seeking, self.class_moments)
        if (
            not all(0 <= w <= 100 for w in weights)
            or self.minibatch_std not in (0, 1)
            or self.diff_augment not in (0, 1)
        ):
            raise UsageError(
                f"--aux-weight, --mode-seeking and --class-moments must be in [0, 100], --minibatch-std and --diff-augment 0 or 1 (got {self.aux_weight}, {self.mode_seeking}, {self.class_moments}, {self.minibatch_std}, {self.diff_augment})."
            )
        if not 0 <= self.test_fraction < 0.9:
            raise UsageError(f"--test-fraction must be in [0, 0.9), not {self.test_fraction}.")
        sides = self.images.size[: self.dims] if len(self.images.size) == 3 else self.images.size
        if any(s % 8 for s in sides):
            raise UsageError(
                f"--size {','.join(map(str, self.images.size))} does not suit the generator: it doubles a coarse grid three times, so each side must be a multiple of 8.",
                "Use e.g. --size 32.",
            )


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"--{name.replace('_', '-')} '{value}' is not one of: {', '.join(choices)}.")


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise UsageError(f"--{name.replace('_', '-')} must be > 0, not {value}.")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON options file into a dict (keys may use - or _)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: config file does not exist.")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml  # only when a YAML config is given

            data = yaml.safe_load(text)
    except Exception as exc:  # yaml and json raise many types; all mean "unparsable"
        raise UsageError(
            f"{path}: cannot be parsed ({exc}).", "Write the options as a YAML or JSON mapping."
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: must hold a mapping of option names to values.")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _coerce(value: Any, kind: Any, name: str, source: str) -> Any:
    """Check and convert one option value to its declared type (from a config file or a flag)."""
    text = str(kind)

    def bad(expected: str) -> UsageError:
        return UsageError(f"{source}: option '{name}' must be {expected}, not {value!r}.")

    try:
        if text.startswith("tuple"):
            items = value if isinstance(value, list | tuple) else ([] if value in (None, "") else [value])
            element = float if "float" in text else int if "int" in text else str
            return tuple(element(v) for v in items)
        if text == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "yes", "1", "false", "no", "0"):
                return str(value).lower() in ("true", "yes", "1")
            raise bad("true or false")
        if text == "float":
            if isinstance(value, bool):
                raise bad("a number")
            return float(value)
        if text == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise bad("an integer")
            return int(value)
        if text == "str":
            return str(value)
    except (TypeError, ValueError) as exc:
        expected = {"float": "a number", "int": "an integer"}.get(
            text,
            f"a list of {'numbers' if 'float' in text or 'int' in text else 'names'}"
            if text.startswith("tuple")
            else text,
        )
        raise bad(expected) from exc
    return value


def _nested_defaults(cls: type) -> dict[str, Any]:
    """Default instances of the nested option sets of ``cls`` (e.g. its ``train`` options)."""
    defaults = {}
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            if dataclasses.is_dataclass(value):
                defaults[f.name] = value
    return defaults


def build(cls: type[T], values: dict[str, Any], *, source: str = "options") -> T:
    """Build a frozen option set from a flat dict, refusing unknown names.

    Keys of nested option sets (``train`` in a task's options) may be given
    flat: ``{"lr": 0.1}`` sets ``train.lr``. Nested sets start from the task's
    own defaults (a task may default to another learning rate than the engine).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    nested = _nested_defaults(cls)
    own: dict[str, Any] = {}
    sub: dict[str, dict[str, Any]] = {name: {} for name in nested}
    sub_fields = {name: {g.name: g for g in dataclasses.fields(base)} for name, base in nested.items()}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key in nested and isinstance(value, dict):
            sub[key].update({k.replace("-", "_"): v for k, v in value.items()})
        elif key in fields and key not in nested:
            own[key] = _coerce(value, fields[key].type, key, source)
        else:
            owner = next((name for name, names in sub_fields.items() if key in names), None)
            if owner is None:
                known = sorted(
                    [k for k in fields if k not in nested]
                    + [k for names in sub_fields.values() for k in names]
                )
                raise UsageError(f"{source}: unknown option '{key}'.", f"Known options: {', '.join(known)}.")
            sub[owner][key] = value
    for name, base in nested.items():
        unknown = sorted(set(sub[name]) - set(sub_fields[name]))
        if unknown:
            raise UsageError(
                f"{source}: unknown option '{unknown[0]}' in '{name}'.",
                f"Known options: {', '.join(sorted(sub_fields[name]))}.",
            )
        own[name] = dataclasses.replace(
            base, **{k: _coerce(v, sub_fields[name][k].type, k, source) for k, v in sub[name].items()}
        )
    return cls(**own)


def to_dict(options: Any) -> dict[str, Any]:
    """Options as a JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(options)))


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Rebuild saved options (from a run's ``config.json``)."""
    return build(cls, values, source="config.json")
