"""`neurodl generate` (GAN from noise) and `autoencode sample`: the two-optimiser step, conditioning,
reproducible samples in the training grid and units, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from neurodl.data.images import ImagePreprocessing, preprocess
from neurodl.data.phantom import generate_cohort
from neurodl.engine.loop import Stepper
from neurodl.models import create_model, list_models
from neurodl.tasks._noise_gan import NoiseGAN
from neurodl.tasks.generate_metrics import frechet, mean_pairwise_ms_ssim, mmd2

# 24 mm phantoms resized to 16^3 at 1.5 mm; width-4 networks train in seconds on one thread.
TINY = [
    "--size",
    "16",
    "--width",
    "4",
    "--latent-dim",
    "8",
    "--batch-size",
    "4",
    "--device",
    "cpu",
    "--quiet",
]


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

    run = tmp_path_factory.mktemp("runs") / "gan"
    code = main(
        ["generate", "train", str(cohort), "--condition", "diagnosis", "--epochs", "2", "--out", str(run)]
        + ["--test-fraction", "0.4", *TINY]
    )
    assert code == 0
    return run


def _tiny_module(
    gan_loss: str = "hinge",
    dims: int = 2,
    *,
    aux_weight: float = 0.0,
    minibatch_std: bool = False,
    mode_seeking: float = 0.0,
    diff_augment: bool = False,
    class_moments: float = 0.0,
    average: float = 0.0,
) -> NoiseGAN:
    torch.manual_seed(0)
    return NoiseGAN(
        create_model(
            "generate", "dcgan", spatial_dims=dims, size=[16] * dims, latent_dim=8, classes=2, width=4
        ),
        create_model(
            "gan_discriminator",
            "projection",
            spatial_dims=dims,
            classes=2,
            width=4,
            auxiliary=aux_weight > 0,
            minibatch_std=minibatch_std,
        ),
        gan_loss=gan_loss,
        lr=1e-3,
        lr_d=1e-3,
        latent_dim=8,
        aux_weight=aux_weight,
        mode_seeking=mode_seeking,
        diff_augment=diff_augment,
        class_moments=class_moments,
        average=average,
    )


def _stepper(module: NoiseGAN) -> Stepper:
    optimizers = {
        n: torch.optim.Adam(p, lr=lr, betas=(0.5, 0.999))
        for n, (p, lr, _) in module.optimizer_groups().items()
    }
    return Stepper(optimizers, torch.amp.GradScaler("cpu", enabled=False), grad_clip=0.0)


def _weights(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("dims", [2, 3])
def test_every_registered_generator_and_discriminator_runs_forward_and_backward(dims: int):
    z, labels = torch.randn(3, 8), torch.tensor([0, 1, 1])
    for g_entry in list_models("generate"):
        generator = create_model(
            "generate", g_entry.name, spatial_dims=dims, size=[16] * dims, latent_dim=8, classes=2, width=4
        )
        fake = generator(z, labels)
        assert fake.shape == (3, 1, *[16] * dims) and fake.abs().max() <= 1
        for d_entry in list_models("gan_discriminator"):
            discriminator = create_model(
                "gan_discriminator", d_entry.name, spatial_dims=dims, classes=2, width=4
            )
            logits = discriminator(fake, labels)
            assert logits.shape == (3, 1)
            logits.mean().backward(retain_graph=True)
            assert all(p.grad is not None for p in discriminator.parameters())


@pytest.mark.parametrize(
    ("gan_loss", "aux_weight", "minibatch_std", "mode_seeking", "diff_augment", "class_moments"),
    [
        ("vanilla", 0.0, False, 0.0, False, 0.0),
        ("hinge", 0.0, False, 0.0, False, 0.0),
        ("vanilla", 1.0, True, 1.0, True, 0.0),
        ("hinge", 0.5, False, 0.0, False, 0.0),
        ("hinge", 0.0, True, 2.0, False, 0.0),
        ("hinge", 5.0, True, 0.2, True, 50.0),
        ("vanilla", 0.0, False, 0.0, True, 0.0),
        ("vanilla", 0.0, False, 0.0, False, 10.0),
    ],
)
def test_the_discriminator_step_changes_only_d_and_the_generator_step_only_g(
    gan_loss: str,
    aux_weight: float,
    minibatch_std: bool,
    mode_seeking: float,
    diff_augment: bool,
    class_moments: float,
):
    module = _tiny_module(
        gan_loss,
        aux_weight=aux_weight,
        minibatch_std=minibatch_std,
        mode_seeking=mode_seeking,
        diff_augment=diff_augment,
        class_moments=class_moments,
    )
    stepper, weights = _stepper(module), _weights
    snapshots = []

    def step(name: str, loss: torch.Tensor) -> None:
        stepper(name, loss)
        snapshots.append((name, weights(module.generator), weights(module.discriminator)))

    g0, d0 = weights(module.generator), weights(module.discriminator)
    out = module.training_step((torch.rand(4, 1, 16, 16) * 2 - 1, torch.tensor([0, 1, 0, 1])), step)
    assert [s[0] for s in snapshots] == ["discriminator", "generator"]
    (_, g1, d1), (_, g2, d2) = snapshots

    def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    assert same(g0, g1) and not same(d0, d1), "the D step must move D only"
    assert same(d1, d2) and not same(g1, g2), "the G step must move G only"
    extra = {"d_aux", "g_aux", "d_class_real", "d_class_fake"} if aux_weight else set()
    extra |= {"g_spread"} if mode_seeking else set()
    extra |= {"g_moments"} if class_moments else set()
    assert set(out) == {"loss", "d_loss", "d_real", "d_fake"} | extra
    assert all(p.requires_grad for p in module.discriminator.parameters())


def test_samples_come_from_a_moving_average_of_the_generator_that_no_optimiser_steps():
    module = _tiny_module(average=0.9)
    assert module.sampler is module.generator, "before start_average: the generator itself"
    module.start_average()
    stepped = {id(p) for parameters, *_ in module.optimizer_groups().values() for p in parameters}
    assert not any(id(p) in stepped for p in module.sampler.parameters())
    assert any(k.startswith("average.") for k in module.model.state_dict()), "in the checkpoint"
    kept = _weights(module.sampler)
    module.training_step((torch.rand(4, 1, 16, 16) * 2 - 1, torch.tensor([0, 1, 0, 1])), _stepper(module))
    moved = _weights(module.generator)
    for before, now, after in zip(kept, moved, _weights(module.sampler), strict=True):
        assert torch.allclose(after, 0.9 * before + 0.1 * now, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(kept, moved, strict=True))
    plain = _tiny_module()  # --ema 0: the generator's last weights
    plain.start_average()
    assert plain.sampler is plain.generator


@pytest.mark.parametrize("dims", [2, 3])
def test_diff_augment_flips_and_shifts_each_image_and_lets_gradients_through(dims: int):
    from neurodl.tasks._noise_gan import diff_augment

    torch.manual_seed(0)
    images = torch.randn(16, 1, *[16] * dims, requires_grad=True)
    out = diff_augment(images)
    assert out.shape == images.shape
    # Each image is a flipped and/or shifted copy of its own: the same values, rearranged.
    for a, b in zip(images.detach(), out.detach(), strict=True):
        assert torch.equal(a.flatten().sort().values, b.flatten().sort().values)
    assert not torch.equal(out, images), "16 images: some are flipped or shifted"
    out.sum().backward()
    assert images.grad is not None and torch.allclose(images.grad, torch.ones_like(images))
    module = _tiny_module(dims=dims)
    assert module._augment(images) is images, "off by default: the images as they are"


def test_the_class_moment_distance_compares_each_class_with_its_own_real_images():
    from neurodl.tasks._noise_gan import class_mean_distance

    torch.manual_seed(0)
    real = torch.randn(4, 1, 16, 16, 16)
    labels = torch.tensor([0, 1, 0, 1])
    assert float(class_mean_distance(real, real, labels)) == 0.0
    # Swapping the images of the two classes keeps the batch mean but not the class means.
    swapped = real[[1, 0, 3, 2]].clone().requires_grad_(True)
    distance = class_mean_distance(swapped, real, labels)
    assert float(distance.detach()) > 0
    distance.backward()
    assert swapped.grad is not None and swapped.grad.abs().sum() > 0
    assert float(class_mean_distance(real[:, :, 0], real[:, :, 0], labels)) == 0.0  # 2D


def test_the_auxiliary_loss_alone_moves_the_classifier_head_in_the_d_step_and_g_in_the_g_step():
    """The D step's loss reaches the classifier head (not G); the G step's reaches G (not the frozen head)."""
    module = _tiny_module("hinge", aux_weight=1.0)
    real, labels = torch.rand(4, 1, 16, 16) * 2 - 1, torch.tensor([0, 1, 0, 1])
    grads: dict[str, dict[str, torch.Tensor | None]] = {}

    def step(name: str, loss: torch.Tensor) -> None:
        for p in (*module.generator.parameters(), *module.discriminator.parameters()):
            p.grad = None
        loss.backward()
        grads[name] = {
            "head": module.discriminator.classifier.weight.grad,  # type: ignore[union-attr]
            "g": next(module.generator.parameters()).grad,
        }

    module.training_step((real, labels), step)
    assert grads["discriminator"]["head"] is not None and grads["discriminator"]["g"] is None
    assert grads["generator"]["head"] is None and grads["generator"]["g"] is not None


@pytest.mark.parametrize("dims", [2, 3])
def test_the_auxiliary_head_gives_one_logit_per_class_and_minibatch_std_keeps_groups_apart(dims: int):
    torch.manual_seed(0)
    d = create_model(
        "gan_discriminator",
        "projection",
        spatial_dims=dims,
        classes=3,
        width=4,
        auxiliary=True,
        minibatch_std=True,
    )
    x, labels = torch.randn(6, 1, *[16] * dims), torch.tensor([0, 1, 2, 0, 1, 2])
    logits, classes = d(x, labels, groups=2, return_classes=True)
    assert logits.shape == (6, 1) and classes.shape == (6, 3)
    assert d(x, labels).shape == (6, 1)
    with pytest.raises(ValueError, match="equal groups"):
        d(x, labels, groups=4)
    from neurodl.models.generators import minibatch_std

    same = torch.zeros(3, 2, 4, 4)
    varied = torch.randn(3, 2, 4, 4)
    channel = minibatch_std(torch.cat([same, varied]), groups=2)
    assert channel.shape == (6, 1, 4, 4)
    assert float(channel[:3].max()) < 1e-3 < float(channel[3:].min()), "each group's spread on its own"
    plain = create_model("gan_discriminator", "projection", spatial_dims=dims, classes=3, width=4)
    assert plain.classifier is None and not plain.minibatch_std
    with pytest.raises(ValueError, match="no auxiliary classifier"):
        plain(x, labels, return_classes=True)


def test_the_condition_changes_the_generated_image_and_the_discriminator_score():
    module = _tiny_module()
    module.generator.eval()
    z = torch.randn(2, 8)
    with torch.no_grad():
        ad = module.generator(z, torch.tensor([0, 0]))
        cn = module.generator(z, torch.tensor([1, 1]))
        assert (ad - cn).abs().mean() > 1e-4
        logits = module.discriminator(torch.cat([ad, ad]), torch.tensor([0, 0, 1, 1]))
    assert not torch.allclose(logits[:2], logits[2:])


def test_train_writes_previews_splits_and_the_intensity_mapping(trained: Path, cohort: Path):
    prep = json.loads((trained / "preprocessing.json").read_text())
    assert prep["classes"] == ["AD", "CN"] and prep["condition_column"] == "diagnosis"
    assert prep["images"]["size"] == [16, 16, 16]
    assert sorted(p.name for p in (trained / "previews").iterdir()) == ["epoch-001.png", "epoch-002.png"]
    history = pd.read_csv(trained / "history.csv")
    assert {"train_loss", "train_d_loss", "train_d_real", "train_d_fake"} <= set(history.columns)
    held_out = pd.read_csv(trained / "test_manifest.tsv", sep="\t")
    splits = json.loads((trained / "splits.json").read_text())
    assert not set(held_out["participant_id"]) & set(splits["training_participants"])
    assert set(load_file(str(trained / "discriminator.safetensors")))  # kept for inspection


def test_samples_are_in_the_training_grid_units_and_reproducible(
    run_cli, trained: Path, cohort: Path, tmp_path
):
    prep = json.loads((trained / "preprocessing.json").read_text())
    first = run_cli("generate", "sample", "--model", trained, "--n", "3", "--seed", "3", "-o", tmp_path / "a")
    assert first.exit_code == 0, first.output
    assert "6 samples (AD: 3, CN: 3)" in first.stderr
    table = pd.read_csv(tmp_path / "a" / "samples.csv")
    assert list(table.columns) == ["participant_id", "diagnosis", "t1"]
    assert (tmp_path / "a" / "samples.png").stat().st_size > 0
    image = nib.load(tmp_path / "a" / "sample-AD001.nii.gz")
    assert image.shape == (16, 16, 16)
    # The grid of a real training image after the run's preprocessing, with its real-world origin.
    real = preprocess(
        ImagePreprocessing.from_dict(prep["images"]), [cohort.parent / "sub-001/anat/sub-001_T1w.nii.gz"]
    )
    assert np.allclose(image.affine, np.asarray(real.affine), atol=1e-4)
    assert not np.allclose(image.affine, np.eye(4))
    data = np.asarray(image.dataobj)
    scale = prep["target_scale"]
    assert np.isfinite(data).all() and scale["minimum"] <= data.min() and data.max() <= scale["maximum"]
    assert data.max() > scale["low"]  # in the images' units, not -1..1

    again = run_cli("generate", "sample", "--model", trained, "--n", "3", "--seed", "3", "-o", tmp_path / "b")
    only_ad = run_cli(
        "generate",
        "sample",
        "--model",
        trained,
        "--n",
        "2",
        "--seed",
        "3",
        "--condition",
        "AD",
        "-o",
        tmp_path / "c",
    )
    other = run_cli("generate", "sample", "--model", trained, "--n", "3", "--seed", "4", "-o", tmp_path / "d")
    assert again.exit_code == only_ad.exit_code == other.exit_code == 0

    def voxels(folder: str, name: str = "sample-AD001.nii.gz") -> np.ndarray:
        return np.asarray(nib.load(tmp_path / folder / name).dataobj)

    assert np.array_equal(voxels("a"), voxels("b"))
    assert np.array_equal(voxels("a"), voxels("c")), (
        "one condition's samples do not depend on the others drawn"
    )
    assert sorted(pd.read_csv(tmp_path / "c" / "samples.csv")["diagnosis"]) == ["AD", "AD"]
    assert not np.array_equal(voxels("a"), voxels("d"))
    refused = run_cli("generate", "sample", "--model", trained, "--n", "3", "-o", tmp_path / "a")
    assert refused.exit_code == 2 and "--overwrite" in refused.stderr


def test_bad_inputs_exit_2_with_the_fix(run_cli, trained: Path, cohort: Path, tmp_path: Path):
    unknown = run_cli("generate", "sample", "--model", trained, "--condition", "MCI", "-o", tmp_path / "x")
    assert unknown.exit_code == 2
    assert "'MCI' is not a condition of this model" in unknown.stderr and "AD, CN" in unknown.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    config = json.loads((trained / "config.json").read_text())
    (foreign / "config.json").write_text(json.dumps({**config, "task": "classify"}))
    wrong = run_cli("generate", "sample", "--model", foreign, "-o", tmp_path / "y")
    assert wrong.exit_code == 2 and "is a 'classify' run, not a 'generate' run" in wrong.stderr
    column = run_cli("generate", "train", cohort, "--condition", "diagnosos", *TINY, "--out", tmp_path / "z")
    assert column.exit_code == 2 and "diagnosos" in column.stderr
    size = run_cli("generate", "train", cohort, "--size", "20", "--out", tmp_path / "w", "--quiet")
    assert size.exit_code == 2 and "multiple of 8" in size.stderr
    features = run_cli("generate", "evaluate", "--model", trained, cohort, "--features", trained)
    assert features.exit_code == 2


def test_evaluate_reports_each_metric_beside_the_real_vs_real_floor(
    run_cli, trained: Path, cohort: Path, tmp_path
):
    result = run_cli(
        "generate", "evaluate", "--model", trained, cohort, "--allow-overlap", "-o", tmp_path / "ev", "--json"
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["half_a"] + metrics["half_b"] == metrics["real_images"] == 10
    assert metrics["samples"] == metrics["half_a"]
    (row,) = metrics["table"]
    assert row["metric"] == "ms_ssim" and 0 < row["real"] <= 1 and 0 < row["samples"] <= 1
    scored = pd.read_csv(tmp_path / "ev" / "samples" / "samples.csv")
    assert len(scored) == metrics["samples"]
    leak = run_cli("generate", "evaluate", "--model", trained, cohort)
    assert leak.exit_code == 2 and "--allow-overlap" in leak.stderr


def test_distances_are_zero_for_one_distribution_and_grow_with_a_shift():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 3)), rng.normal(size=(200, 3))
    shifted = b + 2.0
    assert abs(mmd2(a, b, 1.0)) < 0.02 < mmd2(a, shifted, 1.0)
    assert frechet(a, b) < 0.2 < 10 < frechet(a, shifted)
    same = [np.zeros((16, 16)) + 0.5] * 3
    varied = [rng.uniform(-1, 1, size=(16, 16)) for _ in range(3)]
    assert mean_pairwise_ms_ssim(same) > 0.99 > mean_pairwise_ms_ssim(varied)


def test_the_new_options_round_trip_and_a_run_without_them_keeps_the_old_networks(trained: Path):
    from neurodl.config import GenerateOptions, from_dict, to_dict
    from neurodl.tasks.generate import build_discriminator, model_spec

    options = GenerateOptions(
        aux_weight=0.25, minibatch_std=0, mode_seeking=0.5, diff_augment=1, class_moments=3.0, ema=0.5
    )
    saved = json.loads(json.dumps(to_dict(options)))
    again = from_dict(GenerateOptions, saved)
    keys = ("aux_weight", "minibatch_std", "mode_seeking", "diff_augment", "class_moments", "ema")
    assert tuple(getattr(again, k) for k in keys) == (0.25, 0, 0.5, 1, 3.0, 0.5)
    config = json.loads((trained / "config.json").read_text())["options"]
    defaults = GenerateOptions()
    assert tuple(config[k] for k in keys) == tuple(getattr(defaults, k) for k in keys)  # recorded
    spec = json.loads((trained / "preprocessing.json").read_text())["model"]
    assert spec["auxiliary"] is True and spec["minibatch_std"] is True
    trained_d = load_file(str(trained / "discriminator.safetensors"))
    build_discriminator(spec).load_state_dict(trained_d)  # strict: the recorded layout
    # A config.json from before the options: no head, no minibatch-std channel (the old weights' layout).
    old = {k: v for k, v in saved.items() if k not in keys}
    old_spec = model_spec(from_dict(GenerateOptions, old), [16, 16, 16], 2, old)
    assert old_spec["auxiliary"] is False and old_spec["minibatch_std"] is False
    old_d = build_discriminator(old_spec)
    assert not any(k.startswith("classifier") for k in old_d.state_dict())
    assert set(old_d.state_dict()) == set(trained_d) - {"classifier.weight", "classifier.bias"}
    assert model_spec(options, [16, 16, 16], 0)["auxiliary"] is False  # unconditional: no classes to name


@pytest.mark.slow
@pytest.mark.parametrize("old_format", [False, True])
def test_resume_after_ctrl_c_ends_where_an_uninterrupted_run_ends(
    run_cli, cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old_format: bool
) -> None:
    """Also for a run made before --aux-weight, --minibatch-std, --mode-seeking, --diff-augment, --class-moments
    and --ema (config.json lacks them). The new format's model.safetensors is the moving average: it resumes too."""
    from neurodl.tasks import generate

    args = (*TINY, "--condition", "diagnosis", "--epochs", "3", "--seed", "2", "--deterministic")
    if old_format:
        args += ("--aux-weight", "0", "--minibatch-std", "0", "--mode-seeking", "0", "--diff-augment", "0")
        args += ("--class-moments", "0", "--ema", "0")
    whole, interrupted = tmp_path / "whole", tmp_path / "interrupted"
    assert run_cli("generate", "train", cohort, *args, "--out", whole).exit_code == 0

    original = generate.EpochPreviews.on_epoch_end

    def ctrl_c_after_epoch_2(self, record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt
        original(self, record)

    monkeypatch.setattr(generate.EpochPreviews, "on_epoch_end", ctrl_c_after_epoch_2)
    stopped = run_cli("generate", "train", cohort, *args, "--out", interrupted)
    assert stopped.exit_code == 130 and "neurodl generate train --resume" in stopped.stderr
    monkeypatch.setattr(generate.EpochPreviews, "on_epoch_end", original)
    if old_format:
        config = json.loads((interrupted / "config.json").read_text())
        for key in ("aux_weight", "minibatch_std", "mode_seeking", "diff_augment", "class_moments", "ema"):
            del config["options"][key]
        (interrupted / "config.json").write_text(json.dumps(config))
    resumed = run_cli("generate", "train", "--resume", "--out", interrupted, "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert list(pd.read_csv(interrupted / "history.csv")["epoch"]) == [1, 2, 3]
    for name in ("model.safetensors", "discriminator.safetensors"):
        weights = [load_file(str(run / name)) for run in (whole, interrupted)]
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), name


def test_ddp_in_a_group_of_one_trains_the_gan_exactly_like_one_process(tmp_path: Path):
    import torch.distributed as dist

    from neurodl.config import TrainOptions
    from neurodl.engine import TensorBatches, fit

    images = torch.rand(8, 1, 16, 16) * 2 - 1
    labels = torch.tensor([0, 1] * 4)
    options = TrainOptions(epochs=2, batch_size=4, patience=0, device="cpu", seed=1)
    plain = _tiny_module()
    fit(plain, TensorBatches(images, labels, batch_size=4, shuffle=True, seed=1), None, options)  # type: ignore[arg-type]
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = _tiny_module()
        fit(
            wrapped,  # type: ignore[arg-type]
            TensorBatches(images, labels, batch_size=4, shuffle=True, seed=1),
            None,
            TrainOptions(epochs=2, batch_size=4, patience=0, device="cpu", seed=1, distributed=True),
        )
    finally:
        dist.destroy_process_group()
    assert wrapped._train_generator is wrapped.generator  # unwrapped after the fit
    for (name, a), b in zip(
        plain.model.state_dict().items(), wrapped.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_evaluate_with_a_classifier_reports_distances_and_accuracy_per_condition(
    run_cli, trained: Path, cohort: Path, tmp_path: Path
):
    cnn = tmp_path / "cnn"
    tiny_cnn = (
        "--size",
        "16",
        "--spacing",
        "1.5",
        "--width",
        "4",
        "--depth",
        "2",
        "--epochs",
        "2",
        "--quiet",
    )
    assert (
        run_cli("classify", "train", cohort, "--label", "diagnosis", *tiny_cnn, "--out", cnn).exit_code == 0
    )
    result = run_cli(
        "generate", "evaluate", "--model", trained, cohort, "--allow-overlap", "--classifier", cnn, "--json"
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    rows = {row["metric"]: row for row in metrics["table"]}
    assert set(rows) == {"ms_ssim", "mmd", "frechet", "accuracy_AD", "accuracy_CN"}
    assert all(np.isfinite(row[k]) for row in rows.values() for k in ("samples", "real"))
    assert rows["frechet"]["samples"] >= 0 and rows["frechet"]["real"] >= 0
    assert "compare only with values computed with the same feature network" in metrics["note"]
    foreign = run_cli(
        "generate", "evaluate", "--model", trained, cohort, "--allow-overlap", "--features", trained
    )
    assert foreign.exit_code == 2 and "features come from a classify or autoencode run" in foreign.stderr


@pytest.mark.slow
def test_a_conditional_gan_learns_what_each_condition_looks_like():
    """Two conditions of discs (radius 3 or 6): after 300 steps each condition's samples have its size."""
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")

    def discs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, 2, (n,))
        radius = torch.where(labels == 0, 3.0, 6.0) + torch.rand(n)
        centre = 7.5 + torch.randn(2, n) * 0.7
        distance = (
            (xx[None] - centre[0, :, None, None]) ** 2 + (yy[None] - centre[1, :, None, None]) ** 2
        ).sqrt()
        return torch.where(distance < radius[:, None, None], 1.0, -1.0)[:, None], labels

    torch.manual_seed(0)
    module = NoiseGAN(
        create_model("generate", "dcgan", spatial_dims=2, size=[16, 16], latent_dim=16, classes=2, width=8),
        create_model("gan_discriminator", "projection", spatial_dims=2, classes=2, width=8),
        gan_loss="hinge",
        lr=5e-4,
        lr_d=5e-4,
        latent_dim=16,
    )
    optimizers = {
        n: torch.optim.Adam(p, lr=lr, betas=(0.5, 0.999))
        for n, (p, lr, _) in module.optimizer_groups().items()
    }
    stepper = Stepper(optimizers, torch.amp.GradScaler("cpu", enabled=False), grad_clip=0.0)
    for _ in range(300):
        module.training_step(discs(16), stepper)
    module.generator.eval()
    with torch.no_grad():
        made = module.generator(torch.randn(200, 16), torch.tensor([0] * 100 + [1] * 100))
    area = (made > 0).float().flatten(1).sum(1)
    small, large = float(area[:100].mean()), float(area[100:].mean())
    assert 20 < small < 70 and 100 < large < 170, (small, large)  # real discs: ~38 and ~133 voxels
