"""Segmentation's parts: label tables, the module (model + Dice loss) for the engine, Dice and label volumes."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from neurodl.errors import DataError, ImageError, UsageError
from neurodl.io.nifti import load_volume
from neurodl.io.tables import read_table


@dataclass(frozen=True)
class LabelTable:
    """Label values (background 0 first) and their names."""

    values: tuple[int, ...]
    names: tuple[str, ...]

    @property
    def foreground(self) -> list[str]:
        return list(self.names[1:])

    def column(self, name: str) -> str:
        """Column name of a label's volume: ``CSF`` -> ``csf_volume_ml``."""
        return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") + "_volume_ml"


def parse_labels(spec: str, manifest_dir: Path) -> dict[int, str]:
    """Label names from ``"1=CSF,2=GM"``, a JSON/TSV lookup table, or the BIDS ``dseg.tsv`` beside the manifest."""
    if not spec:
        default = manifest_dir / "dseg.tsv"
        return parse_labels(str(default), manifest_dir) if default.is_file() else {}
    path = Path(spec)
    if path.suffix.lower() in (".json", ".tsv", ".csv", ".txt") or path.is_file():
        if not path.is_file():
            raise UsageError(f"{path}: label table does not exist.")
        if path.suffix.lower() == ".json":
            payload = json.loads(path.read_text(encoding="utf-8"))
            return {int(k): str(v) for k, v in payload.items()}
        frame = read_table(path)
        index = next((c for c in frame.columns if c.lower() in ("index", "value", "label")), None)
        name = next((c for c in frame.columns if c.lower() in ("name", "abbreviation", "label_name")), None)
        if index is None or name is None:
            raise UsageError(
                f"{path}: a label table needs 'index' and 'name' columns (BIDS dseg.tsv); it has {', '.join(frame.columns)}."
            )
        return {int(i): str(n) for i, n in zip(frame[index], frame[name], strict=True)}
    table: dict[int, str] = {}
    for part in spec.split(","):
        key, _, name = part.partition("=")
        try:
            table[int(key.strip())] = name.strip() or f"label_{key.strip()}"
        except ValueError as exc:
            raise UsageError(
                f"--labels '{spec}' is not a list like 1=CSF,2=GM,3=WM nor a label table file."
            ) from exc
    return table


def label_table(named: dict[int, str], observed: set[int]) -> LabelTable:
    """The labels of the masks (background 0 always), named from ``named`` or ``label_N``."""
    values = sorted({0, *observed})
    return LabelTable(
        tuple(values), tuple("background" if v == 0 else named.get(v, f"label_{v}") for v in values)
    )


class SegmentModule:
    """Model + loss + Dice of segmentation, for the engine."""

    default_monitor = "val_dice"

    def __init__(
        self, model: torch.nn.Module, labels: LabelTable, *, loss: str, patch: Sequence[int], overlap: float
    ) -> None:
        from monai.losses import DiceCELoss, DiceLoss

        self.model = model
        self.labels = labels
        self.patch = tuple(patch)
        self.overlap = overlap
        self.loss_name = loss
        self.dice_loss = (
            DiceCELoss(to_onehot_y=True, softmax=True)
            if loss == "dicece"
            else DiceLoss(to_onehot_y=True, softmax=True)
        )

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.loss_name == "ce":
            return F.cross_entropy(logits, target[:, 0].long())
        return self.dice_loss(logits, target)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        if x.ndim == 6:  # (batch, patches per image, C, X, Y, Z)
            x, y = x.flatten(0, 1), y.flatten(0, 1)
        return {"loss": self.loss(self.model(x), y)}

    def infer(self, x: torch.Tensor, *, tta: bool = False) -> torch.Tensor:
        """Softmax probabilities of whole volumes by sliding-window inference (optionally flip-averaged)."""
        from monai.inferers import sliding_window_inference

        def run(volume: torch.Tensor) -> torch.Tensor:
            return torch.softmax(
                sliding_window_inference(  # type: ignore[arg-type]  # one tensor for one predictor output
                    volume,
                    self.patch,
                    sw_batch_size=4,
                    predictor=self.model,
                    overlap=self.overlap,
                    mode="gaussian",
                ),
                dim=1,
            )

        probabilities = run(x)
        if tta:
            for axis in (2, 3, 4):
                probabilities = probabilities + run(x.flip(axis)).flip(axis)
            probabilities = probabilities / 4
        return probabilities

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        probabilities = self.infer(x)
        loss = F.nll_loss(torch.log(probabilities.clamp_min(1e-8)), y[:, 0].long())
        return {
            "loss": loss[None],
            "dice": dice_scores(probabilities.argmax(dim=1, keepdim=True), y, len(self.labels.values)),
        }

    def validation_metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        dice = outputs["dice"].numpy()
        metrics = {
            "loss": float(outputs["loss"].mean()),
            "dice": float(np.nanmean(dice)) if np.isfinite(dice).any() else 0.0,
        }
        for k, name in enumerate(self.labels.foreground):
            column = dice[:, k]
            metrics[f"dice_{name}"] = float(np.nanmean(column)) if np.isfinite(column).any() else float("nan")
        return metrics


def dice_scores(prediction: torch.Tensor, truth: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(B, K-1) Dice of each foreground class (MONAI); NaN where the class is absent from both."""
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    return (
        compute_dice(
            one_hot(prediction.long(), n_classes),
            one_hot(truth.long(), n_classes),
            include_background=False,
            ignore_empty=True,
        )
        .float()
        .cpu()
    )


def observed_labels(masks: Sequence[Path]) -> set[int]:
    """Every value of the label maps; a map of non-integers or of more than 256 values is refused."""
    observed: set[int] = set()
    for mask in masks:
        data = load_volume(mask, dtype=None).data
        if data.dtype.kind == "f" and not np.all(data == np.round(data)):
            raise ImageError(
                mask,
                "holds non-integer values; a label map must hold whole numbers.",
                "Give the integer label image (e.g. *_dseg.nii.gz), not probabilities.",
            )
        observed |= {int(v) for v in np.unique(data)}
    if len(observed) > 256:
        raise DataError(
            f"the masks hold {len(observed)} distinct values; that is not a label map.",
            "Check the --mask column.",
        )
    return observed


def mask_dtype(labels: LabelTable) -> type:
    """The smallest integer type a written mask of these labels needs."""
    return np.uint8 if max(labels.values) < 256 and min(labels.values) >= 0 else np.int16


# mL to 3 decimals (1 mm^3): finer than any voxel, and no float noise such as 0.3359999999999999.
VOLUME_DECIMALS = 3


def label_volumes(values: np.ndarray, affine: np.ndarray, labels: LabelTable) -> dict[str, float]:
    """Volume in mL of each foreground label: voxel count x voxel volume, to 3 decimals."""
    # The voxel volume to 1e-6 mm^3, so header float noise cannot tip the rounding below.
    voxel_ml = round(abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))), 6) / 1000.0
    counts = (
        np.bincount(values.ravel(), minlength=max(labels.values) + 1) if values.dtype.kind == "u" else None
    )
    return {
        labels.column(name): round(
            float(counts[value] if counts is not None else np.count_nonzero(values == value)) * voxel_ml,
            VOLUME_DECIMALS,
        )
        for value, name in zip(labels.values[1:], labels.names[1:], strict=True)
    }


def millimetres(spacing: tuple[float, ...]) -> str:
    """A voxel size as people read it: ``1x1x1.2 mm``."""
    return "x".join(f"{s:g}" for s in spacing) + " mm"


def mean_of_present(values: np.ndarray) -> float:
    """Mean of the known (not NaN) values; NaN (shown n/a), without numpy's warning, when there are none."""
    known = values[~np.isnan(values)]
    return float(known.mean()) if known.size else math.nan
