"""What predict-like commands accept: shards of files, folders and manifests, and the participant rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from neurodl.data.inputs import parse_shard, resolve_inputs, take_shard
from neurodl.errors import UsageError
from neurodl_testing import make_nifti

N = 9


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    """Nine small NIfTI files; four named the BIDS way, five not."""
    names = [f"sub-{i:02d}_T1w.nii.gz" for i in range(1, 5)] + [f"scan{i}.nii" for i in range(5, 10)]
    return [make_nifti(tmp_path / "in" / name, shape=(4, 4, 4), seed=i) for i, name in enumerate(names)]


@pytest.fixture
def manifest(tmp_path: Path, files: list[Path]) -> Path:
    path = tmp_path / "in" / "manifest.tsv"
    rows = ["participant_id\tt1"] + [f"p{i}\t{f.name}" for i, f in enumerate(sorted(files))]
    path.write_text("\n".join(rows) + "\n")
    return path


def _shards(inputs: list[Path], n: int) -> list[list[Path]]:
    return [
        [image.paths[0] for image in resolve_inputs(inputs, image_columns=["t1"], shard=f"{i}/{n}")[0]]
        for i in range(1, n + 1)
    ]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 9, 12])
@pytest.mark.parametrize("kind", ["files", "folder", "manifest"])
def test_shards_partition_the_inputs_exactly(kind: str, n: int, files: list[Path], manifest: Path):
    inputs = {"files": files, "folder": [files[0].parent], "manifest": [manifest]}[kind]
    everything = [image.paths[0] for image in resolve_inputs(inputs, image_columns=["t1"])[0]]
    assert len(everything) == N
    shards = _shards(inputs, n)
    assert sorted(p for shard in shards for p in shard) == sorted(everything)  # each input exactly once
    assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced
    # Shard i holds every n-th input from the i-th, in input order.
    assert shards == [everything[i::n] for i in range(n)]


def test_files_folder_and_manifest_are_sharded_the_same_way(files: list[Path], manifest: Path):
    by_files = _shards(sorted(files), 3)
    assert _shards([files[0].parent], 3) == by_files
    resolved = [[p.resolve() for p in shard] for shard in by_files]
    assert [[p.resolve() for p in shard] for shard in _shards([manifest], 3)] == resolved


@pytest.mark.parametrize("text", ["0/3", "4/3", "-1/3", "1/0", "3", "a/b", "", "1/3/5"])
def test_a_bad_shard_is_refused(text: str, files: list[Path]):
    with pytest.raises(UsageError, match="--shard"):
        resolve_inputs(files, image_columns=["t1"], shard=text)


def test_parse_shard_counts_from_one():
    assert parse_shard("1/1") == (1, 1)
    assert parse_shard(" 3 / 10 ") == (3, 10)
    assert take_shard([], "2/2") == []


def test_participant_is_the_bids_subject_else_the_file_stem(files: list[Path], manifest: Path):
    images, _ = resolve_inputs(files, image_columns=["t1"])
    assert [image.participant for image in images] == [
        "sub-01",
        "sub-02",
        "sub-03",
        "sub-04",
        "scan5",
        "scan6",
        "scan7",
        "scan8",
        "scan9",
    ]
    from_manifest, _ = resolve_inputs([manifest], image_columns=["t1"])
    assert [image.participant for image in from_manifest] == [f"p{i}" for i in range(N)]
