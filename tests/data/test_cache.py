"""``--cache disk``: preprocessed volumes as safetensors files, reused while their sources are unchanged;
``--cache auto``: RAM within a budget, disk beyond it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from neurodl.data import volumes as volume_module
from neurodl.data.images import ImagePreprocessing, plan_preprocessing
from neurodl.data.phantom import generate_cohort
from neurodl.data.volumes import LabelledVolumeDataset, VolumeDataset
from neurodl.io.manifest import load_manifest


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    generate_cohort(root, n=3, size=24, seed=1)
    return root / "participants.tsv"


def _dataset(cohort: Path, cache_dir: Path, *, labelled: bool = False):
    manifest = load_manifest(cohort, ["t1"], "dseg" if labelled else None, "participant_id")
    items = [manifest.image_paths(i) for i in range(len(manifest))]
    preprocessing = plan_preprocessing(
        [i[0] for i in items],
        spacing=(1.5,),
        size=(16,),
        normalize="zscore",
        crop_foreground=False,
        channels=1,
        resize=not labelled,
        label_values=(0, 1, 2, 3) if labelled else (),
    )
    if labelled:
        masks = [Path(m) for m in manifest.label_files]
        return LabelledVolumeDataset(items, masks, preprocessing, cache="disk", cache_dir=cache_dir), items
    return VolumeDataset(items, np.zeros(len(items)), preprocessing, cache="disk", cache_dir=cache_dir), items


def _no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("decoded although the volume is cached")

    monkeypatch.setattr(volume_module, "preprocess", refuse)
    monkeypatch.setattr(volume_module, "run_pipeline", refuse)
    monkeypatch.setattr(ImagePreprocessing, "transforms_with_label", refuse)


def test_a_second_dataset_reads_the_cache_instead_of_decoding(cohort, tmp_path, monkeypatch):
    first, _ = _dataset(cohort, tmp_path / "cache")
    first.warm()
    files = sorted((tmp_path / "cache").glob("*.safetensors"))
    assert len(files) == 3
    expected = [first.volume(i) for i in range(3)]
    _no_decoding(monkeypatch)
    second, _ = _dataset(cohort, tmp_path / "cache")
    for i in range(3):
        assert torch.equal(second.volume(i), expected[i])


def test_a_changed_source_file_is_decoded_again(cohort, tmp_path):
    dataset, items = _dataset(cohort, tmp_path / "cache")
    dataset.warm()
    stat = items[0][0].stat()
    os.utime(items[0][0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    again, _ = _dataset(cohort, tmp_path / "cache")
    again.warm()
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 4


def test_an_unreadable_entry_is_rebuilt(cohort, tmp_path):
    dataset, _ = _dataset(cohort, tmp_path / "cache")
    reference = dataset.volume(1)
    files = sorted((tmp_path / "cache").glob("*.safetensors"))
    assert len(files) == 1  # the volume just read was cached: there is something to damage
    files[0].write_bytes(b"damaged")
    assert torch.equal(_dataset(cohort, tmp_path / "cache")[0].volume(1), reference)
    assert files[0].read_bytes() != b"damaged"  # rebuilt in place, not read as garbage or left broken


def test_images_and_label_maps_are_cached_together(cohort, tmp_path, monkeypatch):
    dataset, _ = _dataset(cohort, tmp_path / "cache", labelled=True)
    image, label = dataset.pair(0)
    _no_decoding(monkeypatch)
    cached_image, cached_label = _dataset(cohort, tmp_path / "cache", labelled=True)[0].pair(0)
    assert torch.equal(cached_image, image) and torch.equal(cached_label, label)


def test_cache_dir_without_disk_cache_exits_2(run_cli, cohort, tmp_path):
    result = run_cli(
        "classify",
        "train",
        cohort,
        "--out",
        tmp_path / "run",
        "--cache",
        "memory",
        "--cache-dir",
        tmp_path / "c",
    )
    assert result.exit_code == 2 and "--cache disk" in result.stderr


def _auto_dataset(cohort: Path, cache_dir: Path, budget: int | str) -> VolumeDataset:
    dataset, items = _dataset(cohort, cache_dir)
    return VolumeDataset(
        items,
        np.zeros(len(items)),
        dataset.preprocessing,
        cache="auto",
        cache_dir=cache_dir,
        cache_budget=budget,
    )


def test_auto_cache_keeps_what_fits_the_budget_in_memory_and_the_rest_on_disk(cohort, tmp_path, monkeypatch):
    one_volume = 16**3 * 4
    dataset = _auto_dataset(cohort, tmp_path / "cache", budget=2 * one_volume)
    dataset.warm()
    assert len(dataset.store.memory) == 2 and dataset.store.in_memory <= 2 * one_volume
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1
    expected = [dataset.volume(i).clone() for i in range(3)]
    _no_decoding(monkeypatch)
    for i in range(3):  # every volume is read back, none decoded again
        assert torch.equal(dataset.volume(i), expected[i])


def test_auto_cache_within_its_budget_writes_nothing_to_disk(cohort, tmp_path):
    dataset = _auto_dataset(cohort, tmp_path / "cache", budget="1GiB")
    dataset.warm()
    assert len(dataset.store.memory) == 3
    assert not (tmp_path / "cache").exists()


def test_a_budget_that_is_not_an_amount_exits_2(run_cli, cohort, tmp_path):
    result = run_cli("classify", "train", cohort, "--out", tmp_path / "run", "--cache-budget", "lots")
    assert result.exit_code == 2
    assert "--cache-budget 'lots'" in result.stderr and "4GiB" in result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4GiB", 4 * 2**30), ("512MB", 512 * 10**6), ("0", 0), ("25%", 250), ("1.5k", 1500)],
)
def test_cache_budgets_are_amounts_or_shares_of_the_available_memory(text, expected):
    from neurodl.data.cache import parse_budget

    assert parse_budget(text, available=1000) == expected


def test_the_default_budget_is_a_share_of_the_available_memory_with_a_ceiling():
    from neurodl.data.cache import parse_budget

    assert parse_budget("", available=1000) == 250
    assert parse_budget("", available=64 * 2**30) == 512 * 2**20


@pytest.mark.slow
def test_classify_train_with_a_tiny_cache_budget_spills_to_disk_and_trains(run_cli, cohort, tmp_path):
    tiny = [
        "--model",
        "cnn",
        "--depth",
        "1",
        "--width",
        "2",
        "--size",
        "16",
        "--spacing",
        "1.5",
        "--epochs",
        "2",
    ]
    result = run_cli("classify", "train", cohort, "--out", tmp_path / "run", "--cache-budget", "20KB", *tiny)
    assert result.exit_code == 0, result.output
    # 16^3 float32 volumes are 16 KiB: one stays in RAM, the other two go to the run's cache/.
    assert len(list((tmp_path / "run" / "cache").glob("*.safetensors"))) == 2
    assert "on disk" in result.stderr


@pytest.mark.slow
def test_classify_train_with_a_disk_cache_fills_it_once(run_cli, cohort, tmp_path):
    tiny = [
        "--model",
        "cnn",
        "--depth",
        "1",
        "--width",
        "2",
        "--size",
        "16",
        "--spacing",
        "1.5",
        "--epochs",
        "1",
    ]
    first = run_cli("classify", "train", cohort, "--out", tmp_path / "a", "--cache", "disk", "--quiet", *tiny)
    assert first.exit_code == 0, first.output
    cached = sorted((tmp_path / "a" / "cache").glob("*.safetensors"))
    assert len(cached) == 3
    shared = ["--cache", "disk", "--cache-dir", tmp_path / "a" / "cache", "--quiet", *tiny]
    second = run_cli("classify", "train", cohort, "--out", tmp_path / "b", *shared)
    assert second.exit_code == 0, second.output
    assert sorted((tmp_path / "a" / "cache").glob("*.safetensors")) == cached
    assert not (tmp_path / "b" / "cache").exists()
