"""The option sets of the tasks that fit one network: biomarkers, classify, segment, autoencode."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from neurodl.config._checks import check_choice, check_cv, check_fractions
from neurodl.config._flags import MODEL, FlagChanges, option
from neurodl.config.training import ACTIVATIONS, ImageOptions, TrainOptions
from neurodl.errors import UsageError


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
        check_choice("task", self.task, ("auto", "classification", "regression"))
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("impute", self.impute, ("none", "mean", "median"))
        check_choice("class-weight", self.class_weight, ("none", "balanced"))
        if not 0 <= self.dropout < 1:
            raise UsageError(f"--dropout must be in [0, 1), not {self.dropout}.")
        if any(h <= 0 for h in self.hidden):
            raise UsageError(
                f"--hidden sizes must be positive, not {','.join(map(str, self.hidden))}.",
                "Use e.g. --hidden 64,32, or --hidden none for linear/logistic regression.",
            )
        check_cv(self.cv)
        if not 0 < self.val_fraction < 1:
            raise UsageError(f"--val-fraction must be between 0 and 1, not {self.val_fraction}.")


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
        check_choice("task", self.task, ("auto", "classification", "regression"))
        check_choice("loss", self.loss, ("mse", "l1", "huber"))
        check_choice("class-weight", self.class_weight, ("none", "balanced"))
        if not 0 <= self.dropout < 1:
            raise UsageError(f"--dropout must be in [0, 1), not {self.dropout}.")
        if not 1 <= self.depth <= 8 or self.width < 1:
            raise UsageError(f"--depth must be 1-8 and --width >= 1 (got {self.depth}, {self.width}).")
        check_cv(self.cv)
        check_fractions(self.val_fraction, self.test_fraction)


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
        check_choice("loss", self.loss, ("dice", "dicece", "ce"))
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
        check_cv(self.cv)
        check_fractions(self.val_fraction, self.test_fraction)

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
        check_choice("loss", self.loss, ("mse", "l1"))
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
        check_cv(self.cv)
        check_fractions(self.val_fraction, self.test_fraction)
