"""`neurodl report` and the report `train` writes: one self-contained HTML page per run."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import matplotlib.image
import pytest

PNG = b"\x89PNG\r\n\x1a\n"
SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "participants.tsv"
DX = ["--target", "diagnosis", "--features", "csf_volume_ml,brain_metabolism", "--quiet"]


def images_of(text: str) -> list[bytes]:
    """The decoded images of a report, checking that it needs no other file, no network and no script."""
    assert 'src="http' not in text and "<link" not in text.lower() and "<script" not in text.lower()
    assert "url(" not in text  # no stylesheet fetches either
    sources = re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", text)
    assert len(sources) == text.count("<img")
    images = []
    for source in sources:
        assert source.startswith("data:image/png;base64,"), source[:60]
        data = base64.b64decode(source.split(",", 1)[1], validate=True)
        assert data.startswith(PNG)
        pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
        assert pixels.shape[0] > 10 and pixels.shape[1] > 10
        images.append(data)
    return images


def sections(text: str) -> list[str]:
    return re.findall(r"<h2>([^<]+)</h2>", text)


def test_train_writes_a_self_contained_report(run_cli, tmp_path):
    run = tmp_path / "dx"
    result = run_cli("biomarkers", "train", SAMPLE, *DX[:-1], "--epochs", "3", "--out", run)
    assert result.exit_code == 0, result.output
    assert f"Report: {run / 'report.html'}" in result.stderr
    text = (run / "report.html").read_text(encoding="utf-8")
    assert sections(text) == [
        "Metrics",
        "Learning curves",
        "Figures",
        "Data",
        "Configuration",
        "Environment",
        "Files",
    ]
    # learning curves, ROC curve and confusion matrix of the validation split
    assert len(images_of(text)) == 3
    assert "biomarkers run: dx" in text and "predicts <b>diagnosis</b>" in text
    metrics = json.loads((run / "metrics.json").read_text())["validation"]
    assert f"{metrics['balanced_accuracy']:.3f}" in text
    assert "Confusion matrix (validation)" in text and "predicted AD" in text
    assert "ROC curve (validation split)" in text
    # data: participants per split and per class, from splits.json and the table
    assert re.search(r"<td>validation</td><td class=\"num\">8</td><td class=\"num\">8</td>", text)
    assert "diagnosis = CN" in text and "diagnosis = AD" in text
    # configuration and environment
    assert "<th>lr</th><td>0.01</td>" in text and "<th>torch</th>" in text
    # the device the run trained on, not only the one asked for (auto)
    assert json.loads((run / "config.json").read_text())["environment"]["device"] == "cpu"
    assert "<th>device</th><td>cpu</td>" in text
    assert "Training did not finish" not in text


def test_quiet_training_still_writes_the_report(run_cli, tmp_path):
    run = tmp_path / "dx"
    result = run_cli("biomarkers", "train", SAMPLE, *DX, "--epochs", "2", "--out", run)
    assert result.exit_code == 0, result.output
    assert "Report:" not in result.output
    assert (run / "report.html").is_file()


def test_cross_validated_run_shows_the_spread_over_folds(run_cli, severity_cv_run, tmp_path):
    out = tmp_path / "elsewhere" / "cv.html"
    result = run_cli("report", severity_cv_run, "--out", out)
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    assert "Cross-validation: 3 folds" in text
    for column in ("fold 1", "fold 2", "fold 3", "mean ± sd", "out-of-fold"):
        assert f"<th>{column}</th>" in text
    summary = json.loads((severity_cv_run / "metrics.json").read_text())["mean_std"]["rmse"]
    assert f"{summary['mean']:.3f} ± {summary['std']:.3f}" in text
    assert "fold 3 (held out)" in text and "severity (mean ± sd)" in text
    assert "Predicted vs true (out-of-fold predictions)" in text
    images_of(text)


def test_image_run_report(run_cli, ae_run):
    result = run_cli("report", ae_run)
    assert result.exit_code == 0, result.output
    text = (ae_run / "report.html").read_text(encoding="utf-8")
    assert "autoencode run: ae" in text
    assert "Held-out test (2 participants, 2 images)" in text
    for metric in ("psnr", "ssim", "mse"):
        assert f"<td>{metric}</td>" in text
    assert "Latent space (first two principal components)" in text
    assert "Previews" in sections(text) and "First input image of the manifest" in text
    assert "<th>images</th>" in text  # images per split, counted in the manifest
    # learning curves, latent space, input preview
    assert len(images_of(text)) == 3


def test_later_figures_in_sub_folders_are_included(run_cli, dx_runs, tmp_path):
    run = tmp_path / "dx"
    shutil.copytree(dx_runs[0], run)
    (run / "test").mkdir()
    shutil.copy(run / "learning_curves.png", run / "test" / "extra.png")
    assert run_cli("report", run, "--quiet").exit_code == 0
    text = (run / "report.html").read_text(encoding="utf-8")
    assert "test/extra.png" in text and len(images_of(text)) == 4


def test_interrupted_run_reports_what_exists(run_cli, dx_runs, tmp_path):
    """A run stopped during training holds only config.json and its checkpoints."""
    run = tmp_path / "stopped"
    run.mkdir()
    shutil.copy(dx_runs[0] / "config.json", run)
    shutil.copytree(dx_runs[0] / "checkpoints", run / "checkpoints")
    result = run_cli("report", run)
    assert result.exit_code == 0, result.output
    text = (run / "report.html").read_text(encoding="utf-8")
    assert "Training did not finish" in text and "3 epochs are saved in its checkpoints" in text
    assert f"--resume --out {run}" in text
    assert "Metrics" not in sections(text) and "Learning curves" in sections(text)
    assert "drawn from checkpoints" in text
    assert len(images_of(text)) == 1


def test_run_of_an_unknown_task_shows_its_metrics_and_figures(run_cli, dx_runs, tmp_path):
    """A task added later (its own metrics and PNGs) is reported without changes here."""
    run = tmp_path / "future"
    shutil.copytree(dx_runs[0], run)
    config = json.loads((run / "config.json").read_text())
    config["task"] = "translate"
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.json").write_text(
        json.dumps({"validation": {"fid": 12.5, "psnr_gain": 3.25}, "per_modality": {"t2_ssim": 0.75}})
    )
    shutil.copy(run / "learning_curves.png", run / "sample_translations.png")
    result = run_cli("report", run)
    assert result.exit_code == 0, result.output
    text = (run / "report.html").read_text(encoding="utf-8")
    assert "translate run: future" in text
    assert "<td>fid</td>" in text and "12.500" in text and "<td>t2_ssim</td>" in text
    assert "sample translations — sample_translations.png" in text


@pytest.mark.parametrize("kind", ["missing", "empty folder", "file", "damaged config"])
def test_not_a_run_directory_exits_2(run_cli, tmp_path, kind):
    path = tmp_path / "run"
    if kind == "empty folder":
        path.mkdir()
    elif kind == "file":
        path.write_text("x")
    elif kind == "damaged config":
        path.mkdir()
        (path / "config.json").write_text("{not json")
    result = run_cli("report", path)
    assert result.exit_code == 2
    assert "Error:" in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.output
    assert not (path / "report.html").exists()


def test_many_previews_are_thinned_keeping_the_first_and_last(run_cli, dx_runs, tmp_path):
    run = tmp_path / "dx"
    shutil.copytree(dx_runs[0], run)
    (run / "previews").mkdir()
    for epoch in range(1, 31):
        shutil.copy(run / "learning_curves.png", run / "previews" / f"epoch-{epoch:03d}.png")
    assert run_cli("report", run, "--quiet").exit_code == 0
    text = (run / "report.html").read_text(encoding="utf-8")
    shown = sorted(set(re.findall(r"previews/epoch-(\d+)\.png", text)))
    assert len(shown) == 12 and shown[0] == "001" and shown[-1] == "030"
    assert "18 more PNG files in sub-folders are not shown" in text
