"""`neurodl translate` (pix2pix): networks, the two-optimiser GAN step, intensity units, geometry, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from neurodl.config import TrainOptions
from neurodl.data.phantom import generate_cohort
from neurodl.engine import TensorBatches, fit
from neurodl.engine.loop import Stepper
from neurodl.models import create_model, list_models
from neurodl.tasks.translate import Pix2Pix, TargetScale
from neurodl_testing import las_anisotropic_affine, make_nifti

# 24 mm phantoms at 1.5 mm: 16^3 volumes padded to 32x32 slices; a width-4 U-Net trains in seconds on one thread.
TINY = ["--spacing", "1.5", "--width", "4", "--batch-size", "16", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    generate_cohort(root, n=10, size=24, seed=5)
    return root / "participants.tsv"


@pytest.fixture(scope="module")
def trained(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from neurodl.cli.main import main

    run = tmp_path_factory.mktemp("runs") / "t1-to-t2"
    code = main(
        ["translate", "train", str(cohort), "--source", "t1", "--target", "t2", "--out", str(run)]
        + ["--epochs", "3", "--test-fraction", "0.2", "--lr", "0.002"]
        + TINY
    )
    assert code == 0
    return run


def _tiny_module(dims: int = 2, gan_loss: str = "lsgan") -> Pix2Pix:
    torch.manual_seed(0)
    return Pix2Pix(
        create_model("translate", "unet", spatial_dims=dims, in_channels=1, out_channels=1, width=4),
        create_model("discriminator", "patchgan", spatial_dims=dims, in_channels=2, width=4),
        gan_loss=gan_loss,
        lambda_l1=100.0,
        lr=1e-3,
        lr_d=1e-3,
        scale=TargetScale(0.0, 100.0, 0.0, 120.0),
        dims=dims,
        roi=[32] * dims,
    )


@pytest.mark.parametrize("dims", [2, 3])
def test_every_registered_generator_discriminator_pair_runs_forward_and_backward(dims: int):
    generators = [e.name for e in list_models("translate")]
    discriminators = [e.name for e in list_models("discriminator")]
    assert {"unet", "attention_unet"} <= set(generators) and "patchgan" in discriminators
    x = torch.randn(2, 1, *([32] * dims))
    for g_name in generators:
        generator = create_model(
            "translate", g_name, spatial_dims=dims, in_channels=1, out_channels=1, width=4
        )
        fake = generator(x)
        assert fake.shape == x.shape, g_name
        for d_name in discriminators:
            discriminator = create_model("discriminator", d_name, spatial_dims=dims, in_channels=2, width=4)
            logits = discriminator(torch.cat([x, fake], dim=1))
            assert logits.shape[:2] == (2, 1) and logits.ndim == dims + 2, d_name
            logits.mean().backward(retain_graph=True)
            assert all(p.grad is not None for p in discriminator.parameters() if p.requires_grad)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in generator.parameters())


@pytest.mark.parametrize("gan_loss", ["lsgan", "vanilla", "hinge"])
def test_the_discriminator_step_changes_only_d_and_the_generator_step_only_g(gan_loss: str):
    module = _tiny_module(gan_loss=gan_loss)
    groups = module.optimizer_groups()
    optimizers = {name: torch.optim.Adam(params, lr=lr) for name, (params, lr) in groups.items()}
    stepper = Stepper(optimizers, torch.amp.GradScaler("cpu", enabled=False), grad_clip=0.0)

    def weights(net: torch.nn.Module) -> list[torch.Tensor]:
        return [p.detach().clone() for p in net.parameters()]

    snapshots: list[tuple[str, list[torch.Tensor], list[torch.Tensor]]] = []

    def step(name: str, loss: torch.Tensor) -> None:
        stepper(name, loss)
        snapshots.append((name, weights(module.generator), weights(module.discriminator)))

    g0, d0 = weights(module.generator), weights(module.discriminator)
    source, target = torch.randn(4, 1, 32, 32), torch.rand(4, 1, 32, 32) * 2 - 1
    out = module.training_step((source, target), step)
    assert [s[0] for s in snapshots] == ["discriminator", "generator"]
    (_, g1, d1), (_, g2, d2) = snapshots

    def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    assert same(g0, g1) and not same(d0, d1), "the D step must move D only"
    assert same(d1, d2) and not same(g1, g2), "the G step must move G only"
    assert set(out) == {"loss", "g_total", "g_adversarial", "d_loss"}
    assert torch.isclose(out["g_total"], out["g_adversarial"] + 100.0 * out["loss"])  # loss: the L1
    assert all(p.requires_grad for p in module.discriminator.parameters())


def test_gan_training_resumes_to_the_same_weights_as_an_uninterrupted_run(tmp_path: Path):
    torch.manual_seed(1)
    source = torch.randn(12, 1, 32, 32)
    target = torch.tanh(-source)
    batches = TensorBatches(source, target, batch_size=4, shuffle=True, seed=3)
    options = TrainOptions(epochs=3, lr=1e-3, patience=0)

    full = _tiny_module()
    fit(full, batches, None, options, checkpoint=tmp_path / "full.safetensors")

    part = _tiny_module()
    fit(
        part,
        batches,
        None,
        TrainOptions(epochs=2, lr=1e-3, patience=0),
        checkpoint=tmp_path / "part.safetensors",
    )
    resumed = _tiny_module()
    result = fit(resumed, batches, None, options, checkpoint=tmp_path / "part.safetensors", resume=True)
    assert result.epochs_run == 3
    for (name, a), b in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert {"train_d_loss", "train_g_total", "train_g_adversarial"} <= set(result.history[-1])


def test_target_scale_maps_the_training_range_to_the_generator_range_and_back():
    rng = np.random.default_rng(0)
    targets = [torch.from_numpy(rng.normal(800, 300, size=(1, 8, 8, 8)).astype(np.float32)) for _ in range(3)]
    scale = TargetScale.fit(targets)
    values = torch.cat([t.flatten() for t in targets])
    normalised = scale.normalize(values)
    # The 0.5 / 99.5 percentiles land on -1 / 1: the generator works in a fixed range.
    assert (
        abs(float(normalised.quantile(0.005)) + 1) < 0.02
        and abs(float(normalised.quantile(0.995)) - 1) < 0.02
    )
    assert torch.allclose(scale.denormalize(normalised), values, atol=1e-3)
    # Outside the range seen in training: clipped, never invented.
    assert float(scale.denormalize(torch.tensor([50.0]))) == pytest.approx(scale.maximum)
    assert TargetScale.from_dict(scale.to_dict()) == scale
    with pytest.raises(ValueError):
        TargetScale.from_dict({"low": 5, "high": 1, "minimum": 0, "maximum": 9})


def test_train_writes_a_run_with_previews_metrics_and_the_target_scale(trained: Path):
    for name in (
        "model.safetensors",
        "discriminator.safetensors",
        "preprocessing.json",
        "history.csv",
        "metrics.json",
        "test_manifest.tsv",
    ):
        assert (trained / name).is_file(), name
    assert sorted(p.name for p in (trained / "previews").iterdir()) == [
        "epoch-001.png",
        "epoch-002.png",
        "epoch-003.png",
    ]
    prep = json.loads((trained / "preprocessing.json").read_text())
    assert prep["target_column"] == "t2" and prep["image_columns"] == ["t1"]
    assert prep["model"]["dims"] == 2 and prep["window"] == [32, 32]  # 16^3 images: padded to the minimum
    scale = prep["target_scale"]
    assert scale["minimum"] <= scale["low"] < scale["high"] <= scale["maximum"]
    history = pd.read_csv(trained / "history.csv")
    assert {"train_loss", "train_d_loss", "train_g_total", "val_mae", "val_psnr"} <= set(history.columns)
    test = json.loads((trained / "metrics.json").read_text())["test"]
    assert {"mae", "psnr", "ssim", "baseline_mae", "baseline_psnr", "baseline_ssim"} <= set(test)


def test_predict_writes_the_synthetic_image_in_the_inputs_grid_and_the_targets_units(
    trained: Path, cohort: Path, tmp_path: Path, run_cli
):
    # A LAS, anisotropic (1 x 1.5 x 3 mm) input: the output must keep its shape and affine exactly.
    t1 = nib.load(cohort.parent / "sub-001" / "anat" / "sub-001_T1w.nii.gz")
    data = np.asarray(t1.dataobj, dtype=np.float32)[:, :, ::2]
    source = make_nifti(tmp_path / "in" / "odd_T1w.nii.gz", data, affine=las_anisotropic_affine())
    result = run_cli("translate", "predict", "--model", trained, source, "-o", tmp_path / "out", "--preview")
    assert result.exit_code == 0, result.output
    out = nib.load(tmp_path / "out" / "odd_T1w_to-t2.nii.gz")
    assert out.shape == data.shape
    np.testing.assert_allclose(out.affine, las_anisotropic_affine(), atol=1e-5)
    assert nib.aff2axcodes(out.affine) == ("L", "A", "S")
    assert (tmp_path / "out" / "odd_T1w_to-t2.png").is_file()
    # Denormalised: in the target's units, inside the range the run saw in training targets.
    scale = json.loads((trained / "preprocessing.json").read_text())["target_scale"]
    values = np.asarray(out.dataobj)
    assert scale["minimum"] - 1e-3 <= values.min() and values.max() <= scale["maximum"] + 1e-3
    assert values.max() > scale["low"] + 0.25 * (scale["high"] - scale["low"])  # not stuck in [-1, 1]

    again = run_cli("translate", "predict", "--model", trained, source, "-o", tmp_path / "out")
    assert again.exit_code == 0 and "1 existing kept" in again.output


def test_evaluate_scores_against_the_real_target_and_the_rescaled_source_baseline(
    trained: Path, tmp_path: Path, run_cli
):
    result = run_cli(
        "translate",
        "evaluate",
        "--model",
        trained,
        trained / "test_manifest.tsv",
        "--mask",
        "dseg",
        "-o",
        tmp_path / "eval",
        "--json",
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["images"] == 2 and metrics["mask"] == "dseg"
    per_image = pd.read_csv(tmp_path / "eval" / "per_image.csv")
    assert len(per_image) == 2
    for column in ("mae", "psnr", "ssim", "baseline_mae", "baseline_psnr", "baseline_ssim"):
        assert np.isfinite(per_image[column]).all(), column


def test_training_participants_are_refused_by_evaluate_unless_allowed(trained: Path, cohort: Path, run_cli):
    result = run_cli("translate", "evaluate", "--model", trained, cohort)
    assert result.exit_code == 2 and "--allow-overlap" in result.output


def _pair_manifest(
    tmp_path: Path, target_affine: np.ndarray, target_shape=(16, 16, 16), source_shape=(16, 16, 16)
) -> Path:
    rows = []
    for k in range(4):
        src = make_nifti(tmp_path / f"s{k}_T1w.nii.gz", shape=source_shape, seed=k)
        tgt = make_nifti(tmp_path / f"s{k}_T2w.nii.gz", shape=target_shape, affine=target_affine, seed=10 + k)
        rows.append({"participant_id": f"sub-{k}", "t1": src.name, "t2": tgt.name})
    path = tmp_path / "pairs.tsv"
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


def _one_epoch(manifest: Path) -> list:
    """``translate train`` of t1 -> t2 on ``manifest``: one epoch of the smallest networks."""
    return [
        "translate",
        "train",
        manifest,
        "--source",
        "t1",
        "--target",
        "t2",
        "--epochs",
        "1",
        "--width",
        "4",
    ]


@pytest.mark.slow
def test_a_target_on_another_grid_is_refused_unless_resample_target(tmp_path: Path, run_cli):
    shifted = np.diag([2.0, 2.0, 2.0, 1.0])
    manifest = _pair_manifest(tmp_path, shifted, target_shape=(8, 8, 8))
    args = [*_one_epoch(manifest), "--quiet"]
    refused = run_cli(*args, "--out", tmp_path / "run")
    assert refused.exit_code == 2
    assert "s0_T2w.nii.gz" in refused.output and "--resample-target" in refused.output
    assert "Traceback" not in refused.output
    accepted = run_cli(*args, "--out", tmp_path / "run2", "--resample-target")
    assert accepted.exit_code == 0, accepted.output


def test_a_missing_target_column_names_it_and_the_available_ones(tmp_path: Path, run_cli):
    manifest = _pair_manifest(tmp_path, np.eye(4))
    result = run_cli(
        "translate", "train", manifest, "--source", "t1", "--target", "flair", "--out", tmp_path / "run"
    )
    assert result.exit_code == 2
    assert "'flair'" in result.output and "t2" in result.output


def test_a_model_directory_of_another_task_is_refused(trained: Path, tmp_path: Path, run_cli):
    config = json.loads((trained / "config.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**config, "task": "segment"}))
    result = run_cli(
        "translate", "predict", "--model", other, trained / "test_manifest.tsv", "-o", tmp_path / "o"
    )
    assert result.exit_code == 2 and "segment" in result.output


@pytest.mark.slow
def test_3d_patches_train_and_translate_whole_volumes_by_sliding_windows(
    cohort: Path, tmp_path: Path, run_cli
):
    run = tmp_path / "run3d"
    trained = run_cli(
        "translate", "train", cohort, "--dims", "3", "--patch", "32", "--epochs", "1", "--out", run, *TINY
    )
    assert trained.exit_code == 0, trained.output
    prep = json.loads((run / "preprocessing.json").read_text())
    assert prep["model"]["dims"] == 3 and prep["window"] == [32, 32, 32]
    source = cohort.parent / "sub-002" / "anat" / "sub-002_T1w.nii.gz"
    result = run_cli("translate", "predict", "--model", run, source, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    out = nib.load(tmp_path / "out" / "sub-002_T1w_to-t2.nii.gz")
    original = nib.load(source)
    assert out.shape == original.shape
    np.testing.assert_allclose(out.affine, original.affine, atol=1e-5)


@pytest.mark.slow
def test_two_processes_train_one_gan_run_through_ddp_wrappers(cohort: Path, tmp_path: Path):
    from neurodl_testing.engine import torchrun

    out = tmp_path / "runs" / "ddp"
    done = torchrun(
        "-m", "neurodl", "translate", "train", cohort, "--epochs", "2", "--out", out, "--distributed", "--json",
        *TINY, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # only rank 0 printed
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["ddp"]
    validation = json.loads((out / "metrics.json").read_text())["validation"]
    assert summary["metrics"]["mae"] == pytest.approx(validation["mae"])
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1, 2] and {"train_d_loss", "val_mae"} <= set(history.columns)
    # The checkpointed networks are the plain ones: a single process loads the weights.
    assert (out / "model.safetensors").is_file()


def test_wide_fields_of_view_are_planned_down_to_whole_volume_side_without_cropping(tmp_path: Path, run_cli):
    wide = (160, 16, 16)  # 160 mm along R at 1 mm: more than 128 voxels a side
    manifest = _pair_manifest(tmp_path, np.eye(4), target_shape=wide, source_shape=wide)
    args = _one_epoch(manifest)
    result = run_cli(*args, "--quiet", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    images = json.loads((tmp_path / "run" / "preprocessing.json").read_text())["images"]
    assert images["spacing"][0] == pytest.approx(1.25)  # 160 mm in 128 voxels
    assert images["size"][0] == 128 and images["spacing"][1:] == [1.0, 1.0]
    assert not images["crop_foreground"]
