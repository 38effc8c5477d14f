"""Batch prediction on full-size 1 mm heads: ``neurodl segment predict`` vs the plain MONAI pipeline.

Both segment the same N heads (197 x 233 x 189 voxels of 1 mm, the MNI head's
grid; half stored RAS, half LAS) with the same network (the run's UNet and
weights), spacing (the run's, 1.5 mm), 96^3 windows, overlap 0.25 and Gaussian
blending, each as a whole process (start-up, model load, every image read,
preprocessed, inferred, inverted and written), timed in alternating order
(A B, B A, ...) so drifting load on a shared machine hits both alike:

* **MONAI reference** -- what a user writes from MONAI's tutorials:
  ``LoadImaged(ensure_channel_first) -> Orientationd("RAS") -> Spacingd(1.5,
  bilinear) -> NormalizeIntensityd(nonzero, channel_wise)`` over a
  ``monai.data.Dataset`` + ``DataLoader(batch_size=1, num_workers=0)``,
  ``sliding_window_inference(96^3, sw_batch_size=4, overlap=0.25,
  mode="gaussian")``, then ``Activationsd(softmax) -> Invertd(nearest_interp=False)
  -> AsDiscreted(argmax) -> SaveImaged(uint8, resample=False)``.
* **neurodl** -- ``neurodl segment predict --model RUN HEADS... -o OUT --device cpu
  --overwrite --quiet --workers W`` for each W asked (default 0 and 2).
* **unpipelined** (once, for the masks only) -- neurodl's previous per-image path
  (``segment.segment_image``: MONAI's inverse of every class's probabilities, then
  the argmax): the masks neurodl's batch predict must reproduce (>= 99.9 % of voxels).

``classify predict`` is timed the same way against a MONAI loop (LoadImaged ->
Orientationd -> Spacingd -> ResizeWithPadOrCropd -> NormalizeIntensityd -> network
-> softmax) when ``--classify-run`` names a classify run.

    flock /tmp/neurodl-heavy.lock python benchmarks/predict.py --heads /tmp/heads --run RUN
    python benchmarks/predict.py --quick    # smoke test: 2 small heads, one repeat

The segment run is trained first when ``--run`` does not exist (sample_data,
``--spacing 1.5 --patch 96``, a few epochs). Results go to
``benchmarks/results/predict.json`` and are summarised in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAD_SHAPE = (197, 233, 189)


def make_heads(folder: Path, n: int, shape: tuple[int, int, int]) -> list[Path]:
    """N phantom heads on a 1 mm grid of ``shape`` (the phantom padded/cropped into it), half LAS."""
    import nibabel as nib
    import numpy as np

    from neurodl.data.phantom import make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"head{i + 1:02d}_T1w.nii.gz"
        paths.append(path)
        if path.exists():
            continue
        orientation = "RAS" if i % 2 == 0 else "LAS"
        phantom = make_phantom(
            np.random.default_rng(100 + i),
            size=min(shape) + 3,
            diagnosis="CN" if i % 2 else "AD",
            orientation=orientation,
        )
        data = np.zeros(shape, dtype=np.int16)
        src = np.asarray(phantom.t1)
        # Centre the phantom in the head grid (cropping where it is larger).
        s_slices, d_slices, offset = [], [], []
        for axis in range(3):
            size_s, size_d = src.shape[axis], shape[axis]
            start_s = max(0, (size_s - size_d) // 2)
            start_d = max(0, (size_d - size_s) // 2)
            length = min(size_s, size_d)
            s_slices.append(slice(start_s, start_s + length))
            d_slices.append(slice(start_d, start_d + length))
            offset.append(start_d - start_s)
        data[tuple(d_slices)] = np.clip(np.rint(src[tuple(s_slices)]), 0, 32767).astype(np.int16)
        shift = np.eye(4)
        shift[:3, 3] = [-o for o in offset]
        affine = phantom.affine @ shift
        nib.save(nib.Nifti1Image(data, affine), str(path))
    return paths


def train_segment_run(run: Path, epochs: int) -> None:
    command = [
        sys.executable,
        "-m",
        "neurodl",
        "segment",
        "train",
        str(ROOT / "sample_data/participants.tsv"),
    ]
    command += [
        "--image",
        "t1",
        "--mask",
        "dseg",
        "--spacing",
        "1.5",
        "--patch",
        "96",
        "--epochs",
        str(epochs),
    ]
    command += ["--samples-per-image", "1", "--batch-size", "2", "--augment", "none", "--out", str(run)]
    command += ["--overwrite", "--quiet"]
    subprocess.run(command, check=True)


def timed(command: list[str]) -> dict[str, float]:
    """Run a whole process; its wall time and peak memory."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    stderr = child.stderr.read() if child.stderr else ""
    if status != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({status}):\n{stderr}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime}


# ---------------------------------------------------------------- the MONAI reference (child process)


def monai_segment(run: Path, heads: list[Path], out: Path) -> None:
    import numpy as np
    import torch
    from monai.data import DataLoader, Dataset, decollate_batch
    from monai.inferers import sliding_window_inference
    from monai.transforms import (
        Activationsd,
        AsDiscreted,
        Compose,
        Invertd,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        SaveImaged,
        Spacingd,
    )
    from safetensors.torch import load_file

    from neurodl.tasks.segment import build_model

    prep = json.loads((run / "preprocessing.json").read_text())
    model = build_model(prep["model"])
    model.load_state_dict(load_file(str(run / "model.safetensors")))
    model.eval()
    spacing = prep["images"]["spacing"]
    pre = Compose(
        [
            LoadImaged(keys="image", ensure_channel_first=True),
            Orientationd(keys="image", axcodes="RAS"),
            Spacingd(keys="image", pixdim=spacing, mode="bilinear"),
            NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
        ]
    )
    post = Compose(
        [
            Activationsd(keys="pred", softmax=True),
            Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
            AsDiscreted(keys="pred", argmax=True),
            SaveImaged(
                keys="pred",
                output_dir=str(out),
                output_postfix="seg",
                output_dtype=np.uint8,
                resample=False,
                separate_folder=False,
                print_log=False,
            ),
        ]
    )
    loader = DataLoader(
        Dataset([{"image": str(h)} for h in heads], transform=pre), batch_size=1, num_workers=0
    )
    with torch.no_grad():
        for batch in loader:
            batch["pred"] = sliding_window_inference(
                batch["image"], prep["patch"], 4, model, overlap=float(prep["overlap"]), mode="gaussian"
            )
            for item in decollate_batch(batch):
                post(item)


def monai_classify(run: Path, heads: list[Path]) -> None:
    import torch
    from monai.data import DataLoader, Dataset
    from monai.transforms import (
        Compose,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        ResizeWithPadOrCropd,
        Spacingd,
    )
    from safetensors.torch import load_file

    from neurodl.tasks.classify import build_model

    prep = json.loads((run / "preprocessing.json").read_text())
    model = build_model(prep["model"])
    model.load_state_dict(load_file(str(run / "model.safetensors")))
    model.eval()
    images = prep["images"]
    pre = Compose(
        [
            LoadImaged(keys="image", ensure_channel_first=True),
            Orientationd(keys="image", axcodes="RAS"),
            Spacingd(keys="image", pixdim=images["spacing"], mode="bilinear"),
            ResizeWithPadOrCropd(keys="image", spatial_size=images["size"]),
            NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
        ]
    )
    loader = DataLoader(
        Dataset([{"image": str(h)} for h in heads], transform=pre), batch_size=1, num_workers=0
    )
    rows = []
    with torch.no_grad():
        for batch in loader:
            rows.append(torch.softmax(model(batch["image"]), dim=1).tolist())


def unpipelined(run: Path, heads: list[Path], out: Path, *, float64: bool = False) -> None:
    """neurodl's per-image path before the pipeline: MONAI's inverse of every class, then the argmax.

    With ``float64``, also the preprocessing before it (MONAI's float64 ``Spacingd`` and
    ``NormalizeIntensityd``), to show what the float32 preprocessing changed.
    """
    import numpy as np

    if float64:
        from monai.transforms import NormalizeIntensityd, Spacingd

        import neurodl.data.images as images

        images.Spacingd = lambda **kw: Spacingd(**{**kw, "dtype": np.float64})  # type: ignore[assignment,misc]
        images.NormalizeNonzerod = lambda key: NormalizeIntensityd(keys=key, nonzero=True, channel_wise=True)  # type: ignore[assignment,misc]

    from neurodl.data.inputs import resolve_inputs
    from neurodl.io.nifti import save_volume
    from neurodl.tasks import segment

    loaded = segment.load(run, device="cpu")
    for image in resolve_inputs(heads, image_columns=loaded.image_columns)[0]:
        values, _, original = segment.segment_image(loaded, image)
        save_volume(values.astype(np.uint8), out / f"{image.name}_dseg.nii.gz", like=original)


# ---------------------------------------------------------------- the benchmark


def agreement(ours: Path, theirs: Path) -> float:
    import nibabel as nib
    import numpy as np

    a, b = np.asarray(nib.load(str(ours)).dataobj), np.asarray(nib.load(str(theirs)).dataobj)
    if a.shape != b.shape:
        return 0.0
    return float(np.mean(a == b))


def label_fractions(masks: list[Path]) -> dict[str, list[float]]:
    """Share of the voxels of each label, per mask: a network that says "background" everywhere
    would make any inverse look exact."""
    import nibabel as nib
    import numpy as np

    shares = {}
    for mask in masks:
        values = np.asarray(nib.load(str(mask)).dataobj)
        shares[mask.name] = [
            round(float(f), 4) for f in np.bincount(values.ravel(), minlength=4) / values.size
        ]
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--heads", type=Path, default=Path("/tmp/neurodl-bench-heads"))
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--run", type=Path, default=Path("/tmp/neurodl-bench-segment-run"))
    parser.add_argument("--train-epochs", type=int, default=3)
    parser.add_argument("--classify-run", type=Path, default=None)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/neurodl-bench-predict"))
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/predict.json")
    parser.add_argument("--quick", action="store_true", help="2 small heads (96^3), one repeat.")
    parser.add_argument(
        "--no-float64", action="store_true", help="Skip the masks of the float64-preprocessing path."
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # the MONAI reference / unpipelined path, in its own process
        kind, run, out, *heads = args.child
        paths = [Path(h) for h in heads]
        if kind == "monai-segment":
            monai_segment(Path(run), paths, Path(out))
        elif kind == "monai-classify":
            monai_classify(Path(run), paths)
        else:
            unpipelined(Path(run), paths, Path(out), float64=kind == "unpipelined-float64")
        return

    shape = (96, 112, 96) if args.quick else HEAD_SHAPE
    n = 2 if args.quick else args.n
    repeats = 1 if args.quick else args.repeats
    heads = make_heads(args.heads / "x".join(map(str, shape)), n, shape)
    if not (args.run / "model.safetensors").exists():
        train_segment_run(args.run, 1 if args.quick else args.train_epochs)
    me = [sys.executable, str(Path(__file__).resolve())]
    neurodl = [sys.executable, "-m", "neurodl"]

    def segment_command(name: str) -> list[str]:
        out = args.out / name
        if name == "monai":
            return [*me, "--child", "monai-segment", str(args.run), str(out), *map(str, heads)]
        workers = name.split("-w")[1]
        return [*neurodl, "segment", "predict", "--model", str(args.run), *map(str, heads), "-o", str(out)]  + [
            "--device", "cpu", "--overwrite", "--quiet", "--workers", workers,
        ]  # fmt: skip

    pipelines = ["monai", *[f"neurodl-w{w}" for w in args.workers]]
    timings: dict[str, list[dict[str, float]]] = {p: [] for p in pipelines}
    for repeat in range(repeats):
        order = pipelines if repeat % 2 == 0 else pipelines[::-1]
        for name in order:
            result = timed(segment_command(name))
            timings[name].append(result)
            print(f"segment {name:12s} repeat {repeat + 1}: {result['wall_s']:.1f} s", file=sys.stderr)

    references = {}
    for kind in ("unpipelined",) if args.no_float64 else ("unpipelined", "unpipelined-float64"):
        references[kind] = args.out / kind
        subprocess.run(
            [*me, "--child", kind, str(args.run), str(references[kind]), *map(str, heads)], check=True
        )
    masks: dict[str, dict[str, float]] = {}
    masks64: dict[str, dict[str, float]] = {}
    for name in pipelines:
        per_image, per_image64 = {}, {}
        for head in heads:
            stem = head.name[: -len(".nii.gz")]
            ours = args.out / name / (f"{stem}_seg.nii.gz" if name == "monai" else f"{stem}_dseg.nii.gz")
            per_image[stem] = agreement(ours, references["unpipelined"] / f"{stem}_dseg.nii.gz")
            if "unpipelined-float64" in references:
                per_image64[stem] = agreement(ours, references["unpipelined-float64"] / f"{stem}_dseg.nii.gz")
        masks[name], masks64[name] = per_image, per_image64

    def summary(name: str) -> dict[str, float]:
        walls = [t["wall_s"] for t in timings[name]]
        wall = statistics.median(walls)
        return {
            "wall_s_median": wall,
            "wall_s": walls,
            "per_image_s": wall / n,
            "images_per_s": n / wall,
            "peak_rss_mb": max(t["peak_rss_mb"] for t in timings[name]),
            "cpu_s_median": statistics.median(t["cpu_s"] for t in timings[name]),
            "mask_agreement_with_unpipelined_min": min(masks[name].values()),
            "mask_agreement_with_unpipelined_float64_min": min(masks64[name].values(), default=float("nan")),
            "mask_agreement_with_unpipelined": masks[name],
        }

    results: dict[str, object] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load1_at_start": os.getloadavg()[0],
            "python": platform.python_version(),
        },
        "heads": {"n": n, "shape": shape, "spacing_mm": 1.0},
        "run": str(args.run),
        "segment": {name: summary(name) for name in pipelines},
    }
    results["unpipelined_label_fractions"] = label_fractions(
        sorted(references["unpipelined"].glob("*.nii.gz"))
    )
    segment_results: dict[str, dict[str, float]] = results["segment"]  # type: ignore[assignment]
    for name in pipelines[1:]:
        segment_results[name]["ratio_to_monai"] = (
            segment_results[name]["wall_s_median"] / segment_results["monai"]["wall_s_median"]
        )

    if args.classify_run is not None:
        classify_timings: dict[str, list[dict[str, float]]] = {"monai": [], "neurodl": []}
        commands = {
            "monai": [*me, "--child", "monai-classify", str(args.classify_run), "-", *map(str, heads)],
            "neurodl": [*neurodl, "classify", "predict", "--model", str(args.classify_run), *map(str, heads)]
            + ["--device", "cpu", "--quiet", "-o", str(args.out / "classify.csv"), "--overwrite"],
        }
        for repeat in range(repeats):
            for name in ["monai", "neurodl"] if repeat % 2 == 0 else ["neurodl", "monai"]:
                classify_timings[name].append(timed(commands[name]))
        results["classify"] = {
            name: {
                "wall_s_median": statistics.median(t["wall_s"] for t in values),
                "per_image_s": statistics.median(t["wall_s"] for t in values) / n,
                "images_per_s": n / statistics.median(t["wall_s"] for t in values),
            }
            for name, values in classify_timings.items()
        }

    print(json.dumps(results, indent=2))
    if not args.quick:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
