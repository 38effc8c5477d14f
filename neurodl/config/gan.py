"""The option sets of the adversarial tasks (two networks): translate (pix2pix) and generate (a GAN from noise)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from neurodl.config._checks import check_choice, check_fractions
from neurodl.config._flags import IMAGES, MODEL, FlagChanges, option
from neurodl.config.tasks import _TEST_FRACTION
from neurodl.config.training import ImageOptions, TrainOptions
from neurodl.errors import UsageError

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
        check_choice("gan_loss", self.gan_loss, GAN_LOSSES)
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
        check_fractions(self.val_fraction, self.test_fraction)


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
    ema: float = option(
        0.99,
        "--ema",
        help="Sample from an exponential moving average of the generator's weights with this decay per step (0.99: about the last 100 steps), which smooths the noise of the last steps out of its images; 0: its last weights.",
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
        check_choice("gan_loss", self.gan_loss, GAN_LOSSES)
        if self.dims not in (2, 3):
            raise UsageError(f"--dims must be 2 (axial slices) or 3 (whole volumes), not {self.dims}.")
        if not 1 <= self.latent_dim <= 4096 or not 1 <= self.width <= 256:
            raise UsageError(
                f"--latent-dim must be 1-4096 and --width 1-256 (got {self.latent_dim}, {self.width})."
            )
        if self.lr_d < 0 or self.slices < 1:
            raise UsageError(f"--lr-d must be >= 0 and --slices >= 1 (got {self.lr_d}, {self.slices}).")
        weights = (self.aux_weight, self.mode_seeking, self.class_moments)
        if not 0 <= self.ema < 1:
            raise UsageError(
                f"--ema must be in [0, 1) (got {self.ema}).",
                "Give e.g. --ema 0.99, or 0 for the last weights.",
            )
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
