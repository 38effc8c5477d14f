"""What a reader of a report sees: whole epochs, every label's Dice, a legend for label maps, resolved sizes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np

from neurodl.io.nifti import load_volume
from neurodl.report.html import write_report
from neurodl.report.plots import learning_curves
from neurodl.report.slices import orthogonal_slices

SEGMENT_HISTORY = [
    {"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_dice": 0.2 * e, "val_dice_CSF": 0.1 * e,
     "val_dice_GM": 0.2 * e, "val_dice_WM": 0.3 * e}
    for e in (1, 2, 3)
]  # fmt: skip


def test_learning_curves_have_whole_epochs_and_every_labels_dice() -> None:
    figure = learning_curves(SEGMENT_HISTORY)
    figure.canvas.draw()
    for ax in figure.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    shown = {text.get_text() for text in figure.axes[1].get_legend().get_texts()}
    assert {"dice", "dice_CSF", "dice_GM", "dice_WM"} <= shown
    plt.close(figure)


def test_a_label_map_preview_has_a_legend_naming_the_labels(tmp_path: Path) -> None:
    data = np.zeros((12, 12, 12), dtype=np.float32)
    data[2:10, 2:10, 2:10] = 100
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "t1.nii.gz"))
    labels = np.zeros((12, 12, 12), dtype=np.int16)
    labels[3:6, 3:9, 3:9], labels[6:9, 3:9, 3:9] = 1, 3
    figure = orthogonal_slices(
        load_volume(tmp_path / "t1.nii.gz"), labels, labels=True, label_names={1: "CSF", 2: "GM", 3: "WM"}
    )
    names = [t.get_text() for legend in figure.legends for t in legend.get_texts()]
    assert names == ["CSF", "WM"]  # the labels present, in the overlay's colours
    plt.close(figure)


def test_configuration_shows_the_spacing_and_size_the_run_chose(ae_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(ae_run, run)
    config = json.loads((run / "config.json").read_text())
    config["options"]["images"]["spacing"] = []
    config["options"]["images"]["size"] = []
    (run / "config.json").write_text(json.dumps(config))
    chosen = json.loads((run / "preprocessing.json").read_text())["images"]

    text = write_report(run).read_text()

    spacing = "x".join(f"{float(v):g}" for v in chosen["spacing"])
    size = "x".join(f"{float(v):g}" for v in chosen["size"])
    assert f"{spacing} mm (from the training images)" in text
    assert f"{size} (from the training images)" in text
