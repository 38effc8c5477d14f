"""The options every task shares: the training engine's (:class:`TrainOptions`) and the images' (:class:`ImageOptions`).

Also the rules about them other layers follow: :func:`lower_is_better` and :data:`RUNTIME_OPTIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass

from neurodl.config._checks import check_choice, check_positive
from neurodl.config._flags import IMAGES, TRACKING, TRAINING, option
from neurodl.errors import UsageError

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
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        for tracker in self.track:
            check_choice("track", tracker, TRACKERS)
        check_choice("scheduler", self.scheduler, SCHEDULERS)
        check_choice("precision", self.precision, PRECISIONS)
        check_positive("epochs", self.epochs)
        check_positive("lr", self.lr)
        if self.batch_size < 0:
            raise UsageError(f"--batch-size must be a positive integer or 'all', not {self.batch_size}.")
        for name in ("momentum", "weight_decay", "grad_clip", "min_delta"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 0, not {getattr(self, name)}.")
        if self.patience < 0:
            raise UsageError(f"--patience must be >= 0 (0 turns early stopping off), not {self.patience}.")


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
        check_choice("normalize", self.normalize, ("zscore", "minmax", "percentile"))
        check_choice("augment", self.augment, ("none", "light", "strong"))
        check_choice("cache", self.cache, ("auto", "memory", "disk", "none"))
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
