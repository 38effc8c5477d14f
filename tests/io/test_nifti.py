"""NIfTI I/O: volumes keep their grid, bad files fail with a message naming them."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nibabel import cifti2

from neurodl.errors import ImageError
from neurodl.io.nifti import (
    Volume,
    find_nifti_files,
    from_ras,
    is_nifti_path,
    load_volume,
    orientation_code,
    read_image,
    save_volume,
    summarize_image,
    to_ras,
    voxel_size,
)
from neurodl_testing import las_anisotropic_affine, make_nifti


def _affine(codes: str, spacing=(1.0, 1.5, 3.0), origin=(40.0, -60.0, -20.0)) -> np.ndarray:
    """An axis-aligned affine with the given orientation code (e.g. "LPS"), anisotropic."""
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    axes = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    for column, code in enumerate(codes):
        row, sign = axes[code]
        affine[row, column] = sign * spacing[column]
    affine[:3, 3] = origin
    return affine


def _data(dtype: type, shape=(8, 10, 12), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(100, 20, size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


def test_las_helper_is_las_and_anisotropic():
    assert orientation_code(las_anisotropic_affine()) == "LAS"
    assert voxel_size(las_anisotropic_affine()) == (1.0, 1.5, 3.0)


@pytest.mark.parametrize("codes", ["RAS", "LAS", "LPS", "PSR"])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_round_trip_keeps_affine_orientation_dtype_and_values(tmp_path, codes, dtype):
    affine = _affine(codes)
    data = _data(dtype)
    source = make_nifti(tmp_path / "in.nii.gz", data, affine=affine)

    volume = load_volume(source, dtype=None)
    out = save_volume(volume.data, tmp_path / "out.nii.gz", like=volume)
    back = load_volume(out, dtype=None)

    assert volume.orientation == back.orientation == codes
    assert back.spacing == pytest.approx((1.0, 1.5, 3.0))
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    assert back.header.get_data_dtype() == np.dtype(dtype)
    assert back.data.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back.data, data)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8])
def test_float_data_saved_as_integer_is_not_rescaled(tmp_path, dtype):
    # A label map computed in float must come back as the same integers, with no scl_slope.
    source = make_nifti(tmp_path / "in.nii.gz", _data(np.float32), affine=las_anisotropic_affine())
    like = load_volume(source)
    labels = np.random.default_rng(1).integers(0, 4, size=like.shape).astype(np.float32)

    out = save_volume(labels, tmp_path / "mask.nii.gz", like=like, dtype=dtype)

    image = nib.load(str(out))
    assert image.get_data_dtype() == np.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(image.dataobj), labels.astype(dtype))
    assert image.dataobj.slope == 1.0 and image.dataobj.inter == 0.0


def test_save_refuses_values_that_do_not_fit_the_dtype(tmp_path):
    like = load_volume(make_nifti(tmp_path / "in.nii.gz", shape=(4, 4, 4)))
    with pytest.raises(ImageError, match="do not fit in uint8"):
        save_volume(np.full((4, 4, 4), 300.0), tmp_path / "out.nii.gz", like=like, dtype=np.uint8)
    assert not (tmp_path / "out.nii.gz").exists()


def test_int64_is_stored_as_int32_when_it_fits(tmp_path):
    like = load_volume(make_nifti(tmp_path / "in.nii.gz", shape=(4, 4, 4)))
    out = save_volume(np.arange(64, dtype=np.int64).reshape(4, 4, 4), tmp_path / "o.nii", like=like)
    assert nib.load(str(out)).get_data_dtype() == np.int32


@pytest.mark.parametrize("codes", ["LAS", "LPS", "PSR", "RAS"])
def test_to_ras_and_back(tmp_path, codes):
    data = np.arange(8 * 10 * 12, dtype=np.int16).reshape(8, 10, 12)
    volume = load_volume(make_nifti(tmp_path / "in.nii", data, affine=_affine(codes)), dtype=None)

    ras = to_ras(volume)

    assert ras.orientation == "RAS"
    # The same voxel value sits at the same place in the world in both arrays.
    ijk = np.array([3, 7, 2])
    world = volume.affine @ np.append(ijk, 1)
    ras_ijk = np.rint(np.linalg.solve(ras.affine, world)[:3]).astype(int)
    assert ras.data[tuple(ras_ijk)] == volume.data[tuple(ijk)]
    np.testing.assert_array_equal(from_ras(ras.data, like=volume), volume.data)


def test_volume_saved_after_to_ras_overlays_the_input(tmp_path):
    volume = load_volume(make_nifti(tmp_path / "in.nii.gz", affine=las_anisotropic_affine()))
    ras = to_ras(volume)

    out = save_volume(ras.data, tmp_path / "ras.nii.gz", like=ras)

    back = load_volume(out)
    assert back.orientation == "RAS"
    np.testing.assert_allclose(back.affine, ras.affine, atol=1e-5)
    np.testing.assert_array_equal(back.data, ras.data)


@pytest.mark.parametrize(("qcode", "scode"), [(0, 2), (1, 0), (2, 4), (0, 0)])
def test_outputs_keep_the_inputs_qform_and_sform_codes(tmp_path, qcode, scode):
    """docs/data.md: outputs carry the codes of their input (a qform code 0 stays 0)."""
    image = nib.Nifti1Image(_data(np.int16), las_anisotropic_affine())
    image.set_qform(las_anisotropic_affine(), qcode)
    image.set_sform(las_anisotropic_affine(), scode)
    source = tmp_path / "in.nii.gz"
    nib.save(image, str(source))
    volume = load_volume(source, dtype=None)

    direct = nib.load(str(save_volume(volume.data, tmp_path / "out.nii.gz", like=volume)))
    ras = to_ras(volume)
    via_ras = nib.load(str(save_volume(ras.data, tmp_path / "ras.nii.gz", like=ras)))

    assert (int(direct.header["qform_code"]), int(direct.header["sform_code"])) == (qcode, scode)
    np.testing.assert_allclose(direct.affine, volume.affine, atol=1e-5)
    if (qcode, scode) != (0, 0):
        assert (int(via_ras.header["qform_code"]), int(via_ras.header["sform_code"])) == (qcode, scode)
    np.testing.assert_allclose(via_ras.affine, ras.affine, atol=1e-5)


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    target = make_nifti(tmp_path / "out.nii.gz", shape=(6, 6, 6))
    before = target.read_bytes()
    like = load_volume(target)

    def half_written_then_disk_full(image, filename):
        Path(filename).write_bytes(b"partial nifti bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nib, "save", half_written_then_disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_volume(np.zeros((6, 6, 6), np.float32), target, like=like)

    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


def test_save_refuses_a_name_that_is_not_nifti(tmp_path):
    like = load_volume(make_nifti(tmp_path / "in.nii.gz", shape=(4, 4, 4)))
    with pytest.raises(ImageError, match="out.png"):
        save_volume(like.data, tmp_path / "out.png", like=like)


# --- bad inputs: each is an ImageError naming the file -------------------------------------


def _truncated_gz(tmp_path: Path) -> Path:
    good = make_nifti(tmp_path / "good.nii.gz", shape=(16, 16, 16))
    raw = good.read_bytes()
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _truncated_nii(tmp_path: Path) -> Path:
    good = make_nifti(tmp_path / "good.nii", shape=(16, 16, 16))
    raw = good.read_bytes()
    path = tmp_path / "cut.nii"
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _text_named_nii(tmp_path: Path) -> Path:
    path = tmp_path / "notes.nii"
    path.write_text("subject,age\nsub-01,71\n" * 30)
    return path


def _gzip_of_text(tmp_path: Path) -> Path:
    path = tmp_path / "notes.nii.gz"
    path.write_bytes(gzip.compress(b"not an image at all\n" * 40))
    return path


def _four_d(tmp_path: Path) -> Path:
    return make_nifti(tmp_path / "bold.nii.gz", shape=(8, 8, 8, 5))


def _two_d(tmp_path: Path) -> Path:
    return make_nifti(tmp_path / "slice.nii.gz", shape=(8, 8))


def _cifti_real(tmp_path: Path) -> Path:
    brain = cifti2.BrainModelAxis.from_mask(np.ones((2, 2, 2), bool), affine=np.eye(4))
    header = cifti2.Cifti2Header.from_axes((cifti2.ScalarAxis(["thickness"]), brain))
    image = cifti2.Cifti2Image(np.zeros((1, 8), np.float32), header)
    image.nifti_header.set_intent("NIFTI_INTENT_CONNECTIVITY_DENSE_SCALARS")
    path = tmp_path / "sub-01.dscalar.nii"
    image.to_filename(path)
    return path


def _cifti_intent_only(tmp_path: Path) -> Path:
    image = nib.Nifti2Image(np.zeros((1, 1, 1, 1, 1, 10), np.float32), np.eye(4))
    image.header.set_intent(3006)  # dense scalars, without the CIFTI extension
    path = tmp_path / "bare.dscalar.nii"
    nib.save(image, str(path))
    return path


def _cifti_intent_nifti1(tmp_path: Path) -> Path:
    image = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    image.header["intent_code"] = 3002  # dense time series
    path = tmp_path / "n1.dtseries.nii"
    nib.save(image, str(path))
    return path


def _huge_header(tmp_path: Path) -> Path:
    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 2000))
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    path = tmp_path / "huge.nii"
    path.write_bytes(header.binaryblock + b"\x00" * 4)
    assert path.stat().st_size == 352
    return path


def _large_header_small_gz(tmp_path: Path) -> Path:
    # 1000^3 float32 = 4 GB declared (below the voxel limit), a few bytes of data.
    header = nib.Nifti1Header()
    header.set_data_shape((1000, 1000, 1000))
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    path = tmp_path / "large.nii.gz"
    path.write_bytes(gzip.compress(header.binaryblock + b"\x00" * 4 + b"\x00" * 64))
    return path


def _rgb(tmp_path: Path) -> Path:
    # Found by the header property test: RGB24 voxels failed inside numpy (an internal error).
    colours = np.zeros((4, 4, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    path = tmp_path / "overlay.nii.gz"
    nib.save(nib.Nifti1Image(colours, np.eye(4)), str(path))
    return path


def _complex(tmp_path: Path) -> Path:
    path = tmp_path / "phase.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.complex64), np.eye(4)), str(path))
    return path


BAD_FILES = {
    "missing": (lambda tmp: tmp / "nope.nii.gz", "does not exist"),
    "directory": (lambda tmp: (tmp / "dir.nii").mkdir() or tmp / "dir.nii", "directory"),
    "zero_bytes": (lambda tmp: (tmp / "empty.nii.gz").touch() or tmp / "empty.nii.gz", "empty"),
    "truncated_gz": (_truncated_gz, "truncated|corrupt"),
    "truncated_nii": (_truncated_nii, "truncated"),
    "text_named_nii": (_text_named_nii, "cannot be read as NIfTI"),
    "gzip_of_text": (_gzip_of_text, "cannot be read as NIfTI"),
    "not_nifti_name": (
        lambda tmp: make_nifti(tmp / "a.nii.gz").rename(tmp / "a.img") or tmp / "a.img",
        "not a NIfTI",
    ),
    "four_d": (_four_d, r"axis 4 has 5 volumes"),
    "two_d": (_two_d, "2D"),
    "cifti": (_cifti_real, "CIFTI"),
    "cifti_intent_nifti2": (_cifti_intent_only, "CIFTI"),
    "cifti_intent_nifti1": (_cifti_intent_nifti1, "CIFTI"),
    "huge_header": (_huge_header, "voxels"),
    "large_header_small_gz": (_large_header_small_gz, "truncated|corrupt"),
    "rgb": (_rgb, "colour voxels"),
    "complex": (_complex, "complex voxels"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_input_raises_image_error_naming_the_file(tmp_path, case):
    make, message = BAD_FILES[case]
    path = make(tmp_path)

    with pytest.raises(ImageError, match=message) as caught:
        load_volume(path)

    assert caught.value.path == path
    assert str(path) in str(caught.value)
    assert caught.value.fix


def test_huge_header_is_refused_before_reading_voxels(tmp_path, monkeypatch):
    path = _huge_header(tmp_path)
    monkeypatch.setattr(nib.Nifti1Image, "get_fdata", lambda *a, **k: pytest.fail("tried to read voxels"))
    with pytest.raises(ImageError, match="voxels"):
        read_image(path)


def test_nan_voxels_refused_when_finite_required(tmp_path):
    data = np.ones((6, 6, 6), np.float32)
    data[1, 2, 3] = np.nan
    path = make_nifti(tmp_path / "nan.nii.gz", data)
    assert np.isnan(load_volume(path).data).sum() == 1
    with pytest.raises(ImageError, match="1 NaN/Inf"):
        load_volume(path, require_finite=True)


def test_single_volume_4d_is_squeezed_to_3d(tmp_path):
    path = make_nifti(tmp_path / "one.nii.gz", shape=(6, 7, 8, 1))
    assert load_volume(path).shape == (6, 7, 8)
    assert load_volume(path, require_3d=False).shape == (6, 7, 8, 1)


def test_is_nifti_path():
    assert is_nifti_path("a.nii") and is_nifti_path("A.NII.GZ")
    assert not is_nifti_path("a.nii.bak") and not is_nifti_path("a.gz")


def test_summarize_image_reports_header_and_intensities(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    data[0, 0, 0] = np.nan
    data[0, 0, 1] = np.inf
    path = make_nifti(tmp_path / "x.nii.gz", data, affine=las_anisotropic_affine())

    summary = summarize_image(path)

    assert summary.shape == (4, 5, 6)
    assert summary.voxel_size == pytest.approx((1.0, 1.5, 3.0))
    assert summary.orientation == "LAS"
    assert summary.dtype == "float32"
    assert (summary.n_nan, summary.n_inf) == (1, 1)
    assert summary.minimum == 2.0 and summary.maximum == 119.0
    assert summary.mean == pytest.approx(np.mean(np.arange(2, 120)))


def test_find_nifti_files_is_recursive_and_skips_hidden(tmp_path):
    make_nifti(tmp_path / "sub-01" / "anat" / "sub-01_T1w.nii.gz", shape=(4, 4, 4))
    make_nifti(tmp_path / "b.nii", shape=(4, 4, 4))
    (tmp_path / "._b.nii").write_bytes(b"resource fork")
    (tmp_path / "notes.txt").write_text("x")
    found = find_nifti_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "b.nii",
        "sub-01/anat/sub-01_T1w.nii.gz",
    ]


# --- property: any small grid and dtype round-trips exactly -----------------------------------

_PERMUTATIONS = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]


@st.composite
def _volumes(draw):
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=3, max_size=3)))
    dtype = np.dtype(draw(st.sampled_from([np.uint8, np.int16, np.int32, np.float32])))
    perm = draw(st.sampled_from(_PERMUTATIONS))
    signs = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=3, max_size=3))
    spacing = draw(st.lists(st.floats(0.25, 4.0, width=32), min_size=3, max_size=3))
    origin = draw(st.lists(st.floats(-200, 200, width=32), min_size=3, max_size=3))
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for column, row in enumerate(perm):
        affine[row, column] = signs[column] * spacing[column]
    affine[:3, 3] = origin
    seed = draw(st.integers(0, 2**16))
    return _data(dtype.type, shape=shape, seed=seed), affine


@settings(max_examples=40, deadline=None)
@given(_volumes(), st.sampled_from([".nii", ".nii.gz"]))
def test_property_random_volumes_round_trip_exactly(volume, suffix):
    data, affine = volume
    like = Volume(data=data, affine=affine, header=nib.Nifti1Header())
    with tempfile.TemporaryDirectory() as tmp:
        out = save_volume(data, Path(tmp) / f"v{suffix}", like=like)
        back = load_volume(out, dtype=None)
    assert back.data.dtype == data.dtype
    np.testing.assert_array_equal(back.data, data)
    np.testing.assert_allclose(back.affine, affine, atol=1e-4)
    assert back.orientation == orientation_code(affine)
