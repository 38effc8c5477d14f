"""How good are a GAN's samples: distances to real images, diversity, and whether a classifier sees the condition.

Every number is reported beside the same number for real images against real
images (the floor a perfect generator would reach): the real images are split in
two halves A and B by participant (stratified by condition), as many samples as A
holds are drawn with A's conditions, and

- ``mmd``, ``frechet``: MMD² (Gaussian kernel, unbiased) and the Fréchet distance
  between feature vectors of samples and of B, next to A against B. The features come
  from a network trained by neurodl (a classify run's penultimate layer, or an
  autoencode run's code), so these values compare only within one feature network;
- ``ms_ssim``: the mean MS-SSIM over all pairs of samples, next to all pairs of A
  (higher among samples than among real images: less diverse, mode collapse);
- ``accuracy_<condition>``: the share of samples of a condition that a classify run
  assigns to it, next to its accuracy on the real images of that condition.
"""

from __future__ import annotations

import contextlib
import itertools
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurodl.data.images import preprocess
from neurodl.data.splits import split_by_participant
from neurodl.data.volumes import PairedVolumes
from neurodl.errors import DataError, UsageError
from neurodl.io.manifest import load_manifest
from neurodl.io.rundir import RunDirectory
from neurodl.io.tables import require_columns
from neurodl.tasks._run import check_leakage, check_report_dir
from neurodl.tasks.generate import LoadedGenerator, condition_codes, write_samples

FEATURE_NOTE = (
    "MMD and Fréchet distances are in the feature space of {run}: they compare only with values "
    "computed with the same feature network."
)


def mmd2(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """Unbiased MMD² between the rows of ``x`` and ``y`` with a Gaussian kernel of ``bandwidth``."""

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.exp(-d2 / (2 * bandwidth**2))

    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    m, n = len(x), len(y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )


def frechet(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``x`` and ``y`` (the FID formula)."""
    from scipy import linalg

    eps = 1e-6 * np.eye(x.shape[1])
    cx, cy = np.atleast_2d(np.cov(x, rowvar=False)) + eps, np.atleast_2d(np.cov(y, rowvar=False)) + eps
    root = linalg.sqrtm(cx @ cy)
    root = np.real(root)
    return float(((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(cx + cy - 2 * root))


def mean_pairwise_ms_ssim(images: Sequence[np.ndarray]) -> float:
    """Mean MS-SSIM over every pair of images (scaled to -1..1; scales and window chosen to fit the size)."""
    from monai.metrics.regression import compute_ms_ssim

    stack = torch.from_numpy(np.stack(images)[:, None].astype(np.float32))
    side = min(stack.shape[2:])
    levels = 3 if side >= 16 else 2
    kernel = next((k for k in (7, 5, 3) if (k - 1) * 2 ** (levels - 1) < side), 3)
    weights = (0.0448, 0.2856, 0.3001)[:levels]
    pairs = list(itertools.combinations(range(len(images)), 2))
    first = stack[[i for i, _ in pairs]]
    second = stack[[j for _, j in pairs]]
    scores = compute_ms_ssim(
        first,
        second,
        spatial_dims=stack.ndim - 2,
        data_range=2.0,
        kernel_size=kernel,
        weights=[w / sum(weights) for w in weights],
    )
    return float(torch.nan_to_num(scores).mean())


@contextlib.contextmanager
def feature_network(run_dir: Path, device: str) -> Iterator[tuple[str, Callable[[Path], np.ndarray]]]:
    """``(task, features(path))`` of a classify run (penultimate layer) or an autoencode run (its code)."""
    task = RunDirectory.open(run_dir).task
    if task == "autoencode":
        from neurodl.tasks import autoencode

        encoder = autoencode.load(run_dir, device=device)
        yield (
            task,
            lambda path: autoencode.encode_volume(
                encoder.module,
                preprocess(encoder.preprocessing, [path]).as_tensor(),
                encoder.dims,
                encoder.slices,
            ),
        )
        return
    if task != "classify":
        raise UsageError(
            f"{run_dir}: is a '{task}' run; features come from a classify or autoencode run.",
            "Give --features (or --classifier) a run of `neurodl classify train` or `neurodl autoencode train`.",
        )
    classifier = _classifier(run_dir, device)
    model = classifier.module.model
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    hook = last.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0].detach()))

    def features(path: Path) -> np.ndarray:
        captured.clear()
        x = preprocess(classifier.preprocessing, [path]).as_tensor()[None].to(classifier.device)
        with torch.no_grad():
            model(x)
        return captured[-1][0].float().cpu().numpy()

    try:
        yield task, features
    finally:
        hook.remove()


def _classifier(run_dir: Path, device: str) -> Any:
    from neurodl.tasks import classify

    loaded = classify.load(run_dir, device=device)
    if loaded.target.kind == "regression" or len(loaded.image_columns) != 1:
        raise UsageError(
            f"{run_dir}: is a {'regression' if loaded.target.kind == 'regression' else f'{len(loaded.image_columns)}-channel'} classify run.",
            "Give a classify run trained on one image column to predict a category.",
        )
    return loaded


def predicted_classes(run_dir: Path, paths: Sequence[Path], device: str) -> tuple[list[str], list[str]]:
    """The classify run's predicted class of each image, and its classes."""
    from neurodl.tasks._classification import class_probabilities

    loaded = _classifier(run_dir, device)
    predicted = []
    for path in paths:
        x = preprocess(loaded.preprocessing, [path]).as_tensor()[None].to(loaded.device)
        with torch.no_grad():
            probabilities = class_probabilities(loaded.module.model(x))[0]
        predicted.append(loaded.target.classes[int(np.argmax(probabilities))])
    return predicted, list(loaded.target.classes)


def real_images(loaded: LoadedGenerator, paths: Sequence[Path], where: str) -> list[np.ndarray]:
    """Real images on the generator's grid, scaled to -1..1 (2D models: the central axial slice)."""
    volumes = PairedVolumes(
        [[p] for p in paths],
        list(paths),
        loaded.preprocessing,
        resample=False,
        cache="none",
        describe=lambda i: f"{where} row {i + 1}",
    )
    images = [loaded.scale.normalize(volumes.pair(i)[1])[0].numpy() for i in range(len(paths))]
    return [a[..., a.shape[-1] // 2] for a in images] if loaded.dims == 2 else images


def evaluate(
    loaded: LoadedGenerator,
    manifest_path: Path,
    *,
    features: Path | None = None,
    classifier: Path | None = None,
    seed: int = 0,
    allow_overlap: bool = False,
    report_dir: Path | None = None,
    overwrite: bool = False,
    device: str = "auto",
) -> tuple[dict[str, Any], list[str]]:
    """Score samples against the real images of a manifest, beside real-vs-real (see the module's docstring).

    Returns the metrics (``table``: one row per metric with ``samples`` and ``real``) and warnings.
    With ``report_dir`` the samples (samples.csv, NIfTI) and metrics.json are written there.
    """
    check_report_dir(report_dir, manifest_path, overwrite=overwrite)
    if loaded.dims == 2 and (features or classifier):
        raise UsageError(
            "--features and --classifier score whole volumes, and this model makes 2D slices.",
            "Drop them (MS-SSIM is still reported), or train a 3D model (--dims 3).",
        )
    manifest = load_manifest(manifest_path, [loaded.image_column], None, loaded.participant_column)
    conditions = [""] * len(manifest)
    if loaded.classes:
        require_columns(
            manifest.frame,
            [loaded.condition_column],
            manifest_path,
            fix=f"The model is conditioned on '{loaded.condition_column}': give a manifest with that column.",
        )
        conditions = condition_codes(manifest.frame, loaded.condition_column, manifest_path)
        unknown = sorted(set(conditions) - set(loaded.classes))
        if unknown:
            raise DataError(
                f"{manifest_path}: column '{loaded.condition_column}' holds {', '.join(unknown)}, which the model was not trained on ({', '.join(loaded.classes)}).",
                "Remove those rows, or evaluate a model trained with them.",
            )
    warnings = check_leakage(loaded.run, manifest.participant_ids, manifest_path, allow_overlap=allow_overlap)
    if len(manifest) < 4:
        raise DataError(
            f"{manifest_path}: has {len(manifest)} images; the real-vs-real floor needs at least 4 (two halves of 2).",
            "Evaluate on more held-out images.",
        )
    groups = np.asarray(manifest.participant_ids, dtype=str)
    strata = np.unique(np.asarray(conditions), return_inverse=True)[1]
    half_b, half_a = split_by_participant(groups, strata, 0.5, seed)
    paths = [manifest.image_paths(r)[0] for r in range(len(manifest))]
    counts: dict[int, int] = {}
    for r in half_a:
        index = loaded.classes.index(conditions[r]) if loaded.classes else 0
        counts[index] = counts.get(index, 0) + 1
    with contextlib.ExitStack() as stack:
        folder = (
            report_dir / "samples"
            if report_dir is not None
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="neurodl-samples-")))
        )
        frame = write_samples(loaded, folder, counts, seed)
        sample_paths = [folder / str(p) for p in frame[loaded.image_column]]
        sample_conditions = [str(c) for c in frame[loaded.condition_column]] if loaded.classes else []
        real = real_images(loaded, paths, manifest_path.name)
        samples = [loaded.scale.normalize(torch.from_numpy(_load(p))).numpy() for p in sample_paths]
        table: list[dict[str, Any]] = [
            {
                "metric": "ms_ssim",
                "samples": mean_pairwise_ms_ssim(samples),
                "real": mean_pairwise_ms_ssim([real[r] for r in half_a]),
                "meaning": "mean MS-SSIM among images (higher among samples: less diverse)",
            }
        ]
        network = features or classifier
        note = ""
        if network is not None:
            with feature_network(network, device) as (task, extract):
                vectors_s = np.stack([extract(p) for p in sample_paths])
                vectors_r = np.stack([extract(p) for p in paths])
            table += _distances(vectors_s, vectors_r[half_a], vectors_r[half_b])
            note = FEATURE_NOTE.format(run=f"{network} ({task})")
        if classifier is not None:
            table += _accuracies(
                classifier,
                sample_paths,
                sample_conditions,
                paths,
                conditions,
                loaded.condition_column,
                device,
            )
    metrics: dict[str, Any] = {
        "real_images": len(manifest),
        "half_a": len(half_a),
        "half_b": len(half_b),
        "samples": len(sample_paths),
        "seed": seed,
        "features": str(network) if network is not None else "",
        "note": note,
        "table": table,
    }
    if report_dir is not None:
        RunDirectory(report_dir, "generate").write_json(
            "metrics.json", {"manifest": str(manifest_path), "model": str(loaded.run.path), **metrics}
        )
    return metrics, warnings


def _load(path: Path) -> np.ndarray:
    from neurodl.io.nifti import load_volume

    data = np.asarray(load_volume(path).data, dtype=np.float32)
    return data[..., 0] if data.ndim == 3 and data.shape[-1] == 1 else data


def _distances(samples: np.ndarray, half_a: np.ndarray, half_b: np.ndarray) -> list[dict[str, Any]]:
    """MMD² and Fréchet distance of samples vs B and of A vs B, in features standardised by the real images'."""
    real = np.concatenate([half_a, half_b])
    mean, sd = real.mean(0), real.std(0) + 1e-8
    s, a, b = ((v - mean) / sd for v in (samples, half_a, half_b))
    pooled = np.concatenate([a, b])
    distances = np.sqrt(((pooled[:, None] - pooled[None]) ** 2).sum(-1))
    bandwidth = float(np.median(distances[distances > 0])) if (distances > 0).any() else 1.0
    return [
        {
            "metric": "mmd",
            "samples": mmd2(s, b, bandwidth),
            "real": mmd2(a, b, bandwidth),
            "meaning": "MMD² to the real half B (Gaussian kernel; 0: same distribution)",
        },
        {
            "metric": "frechet",
            "samples": frechet(s, b),
            "real": frechet(a, b),
            "meaning": "Fréchet distance to the real half B (the FID formula)",
        },
    ]


def _accuracies(
    classifier: Path,
    sample_paths: Sequence[Path],
    sample_conditions: Sequence[str],
    paths: Sequence[Path],
    conditions: Sequence[str],
    column: str,
    device: str,
) -> list[dict[str, Any]]:
    """Per condition: the share of samples the classifier assigns to it, and its accuracy on real images."""
    if not sample_conditions:
        raise UsageError(
            "--classifier scores the asked-for condition, and this model is unconditional.",
            "Drop --classifier (give the run as --features for the distances), or train with --condition.",
        )
    on_samples, classes = predicted_classes(classifier, sample_paths, device)
    missing = sorted(set(sample_conditions) - set(classes))
    if missing:
        raise UsageError(
            f"{classifier}: predicts {', '.join(classes)}, not the condition(s) {', '.join(missing)} of the generator's '{column}'.",
            f"Give a classify run trained on the same '{column}' column.",
        )
    on_real, _ = predicted_classes(classifier, paths, device)
    rows = []
    for name in sorted(set(sample_conditions)):
        s = [p == name for p, c in zip(on_samples, sample_conditions, strict=True) if c == name]
        r = [p == name for p, c in zip(on_real, conditions, strict=True) if c == name]
        rows.append(
            {
                "metric": f"accuracy_{name}",
                "samples": float(np.mean(s)),
                "real": float(np.mean(r)) if r else float("nan"),
                "meaning": f"share classified as {name} by {classifier.name} ({len(s)} samples, {len(r)} real)",
            }
        )
    return rows
