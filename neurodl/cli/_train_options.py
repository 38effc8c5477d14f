"""Engine options shared by every ``train`` command, defined once."""

from __future__ import annotations

from typing import Annotated

import typer

_P = "Training"

Epochs = Annotated[int, typer.Option("--epochs", help="Maximum number of epochs.", rich_help_panel=_P)]
BatchSize = Annotated[
    str,
    typer.Option(
        "--batch-size",
        help="Rows per step; 1 = stochastic, 'all' = full-batch gradient descent.",
        rich_help_panel=_P,
    ),
]
Optimizer = Annotated[
    str,
    typer.Option("--optimizer", help="sgd, adam, adamw, adadelta, adagrad or rmsprop.", rich_help_panel=_P),
]
LearningRate = Annotated[
    float, typer.Option("--lr", help="Learning rate (step size of gradient descent).", rich_help_panel=_P)
]
Momentum = Annotated[float, typer.Option("--momentum", help="Momentum (sgd, rmsprop).", rich_help_panel=_P)]
WeightDecay = Annotated[
    float, typer.Option("--weight-decay", help="L2 penalty on the weights.", rich_help_panel=_P)
]
Scheduler = Annotated[
    str,
    typer.Option("--scheduler", help="Learning-rate schedule: none, plateau or cosine.", rich_help_panel=_P),
]
GradClip = Annotated[
    float,
    typer.Option("--grad-clip", help="Clip the gradient norm to this value (0: off).", rich_help_panel=_P),
]
Patience = Annotated[
    int,
    typer.Option(
        "--patience",
        help="Early stopping: epochs without improvement before stopping (0: off; the best validation epoch's weights are kept either way).",
        rich_help_panel=_P,
    ),
]
MinDelta = Annotated[
    float,
    typer.Option(
        "--min-delta",
        help="Early stopping: smallest change that counts as an improvement.",
        rich_help_panel=_P,
    ),
]
Monitor = Annotated[
    str,
    typer.Option(
        "--monitor",
        help="Validation metric for early stopping and model selection (auto: val_loss).",
        rich_help_panel=_P,
    ),
]
Seed = Annotated[
    int,
    typer.Option(
        "--seed", help="Random seed (splits, initialisation, shuffling, dropout).", rich_help_panel=_P
    ),
]
Deterministic = Annotated[
    bool,
    typer.Option("--deterministic", help="Use deterministic kernels (slower on GPU).", rich_help_panel=_P),
]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel=_P)]
Precision = Annotated[
    str, typer.Option("--precision", help="fp32, bf16 or fp16 (mixed precision on GPU).", rich_help_panel=_P)
]
Distributed = Annotated[
    bool,
    typer.Option(
        "--distributed",
        help="Train in several processes (DDP), launched by torchrun: torchrun --nproc-per-node N -m neurodl ... --distributed. --batch-size is per process.",
        rich_help_panel=_P,
    ),
]
Compile = Annotated[
    bool,
    typer.Option(
        "--compile",
        help="torch.compile the network (GPU fast path; compiling takes a while first).",
        rich_help_panel=_P,
    ),
]
ChannelsLast = Annotated[
    bool,
    typer.Option(
        "--channels-last",
        help="Channels-last 3D memory layout (GPU fast path for 3D convolutions).",
        rich_help_panel=_P,
    ),
]

_I = "Images and preprocessing"

Cache = Annotated[
    str,
    typer.Option(
        "--cache",
        help="auto: decode and preprocess each image once, keep it in RAM while the cohort fits --cache-budget and on disk (--cache-dir) beyond; memory: all in RAM; disk: all as files in --cache-dir, reused by later runs; none: every epoch.",
        rich_help_panel=_I,
    ),
]
CacheDir = Annotated[
    str,
    typer.Option(
        "--cache-dir",
        help="Folder for --cache disk, and for --cache auto beyond its budget (default: cache/ in the run directory); share it between runs.",
        rich_help_panel=_I,
    ),
]
CacheBudget = Annotated[
    str,
    typer.Option(
        "--cache-budget",
        help="RAM --cache auto may fill with preprocessed images: an amount (4GiB, 512MB; 0: all on disk) or a share of the available memory (25%). Default: 25% of the available memory, at most 512 MiB.",
        rich_help_panel=_I,
    ),
]
Participant = Annotated[
    str,
    typer.Option(
        "--participant",
        help="Participant column: sessions of one participant stay on one side of every split.",
        rich_help_panel=_I,
    ),
]
Spacing = Annotated[
    str,
    typer.Option(
        "--spacing",
        help="Voxel size in mm after resampling: one or three numbers (default: the training images' median).",
        rich_help_panel=_I,
    ),
]
Normalize = Annotated[
    str,
    typer.Option(
        "--normalize", help="zscore (brain voxels), minmax or percentile (1-99%).", rich_help_panel=_I
    ),
]
CropForeground = Annotated[
    bool,
    typer.Option("--crop-foreground", help="Crop to the head's bounding box first.", rich_help_panel=_I),
]
BidsFilter = Annotated[
    list[str] | None,
    typer.Option(
        "--bids-filter",
        help="With a BIDS dataset root: keep the images whose entity has this value (acq=mprage, ses=01); repeat for several.",
        metavar="ENTITY=VALUE",
        rich_help_panel=_I,
    ),
]
Workers = Annotated[
    int,
    typer.Option("--workers", help="Data-loading processes (0: in the main process).", rich_help_panel=_I),
]

_T = "Tracking"

Track = Annotated[
    list[str] | None,
    typer.Option(
        "--track",
        help="Also log the run to mlflow and/or tensorboard (repeat for both); pip install 'neurodl\\[mlflow]' / 'neurodl\\[tensorboard]'.",
        rich_help_panel=_T,
    ),
]
TrackUri = Annotated[
    str,
    typer.Option(
        "--track-uri",
        envvar="MLFLOW_TRACKING_URI",
        help="MLflow tracking URI: a lab's server (http://host:5000) or a store (sqlite:///path/mlflow.db); default: sqlite:///DIR/mlflow.db beside the run directory.",
        rich_help_panel=_T,
    ),
]
Experiment = Annotated[
    str,
    typer.Option("--experiment", help="MLflow experiment name (default: the task).", rich_help_panel=_T),
]
