"""Property-based: whatever a table or a NIfTI header holds, neurodl loads it or raises a NeurodlError."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neurodl.errors import NeurodlError
from neurodl.io.manifest import load_manifest
from neurodl.io.nifti import load_volume
from neurodl.io.tables import read_table

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- tables -----------------------------------------------------------------------------------

cells = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        ["", "n/a", "NaN", "001", "1e400", "-0", "sub-01", "a.nii.gz", "../x.nii", '"', "\r", "é"]
    ),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.integers().map(str),
)


@st.composite
def tables(draw: st.DrawFn) -> tuple[str, str]:
    """A delimited text table (header and rows, ragged or not) and its file suffix."""
    delimiter = draw(st.sampled_from([",", "\t", ";", "|", " "]))
    width = draw(st.integers(1, 5))
    header = draw(
        st.lists(
            st.one_of(st.text(max_size=8), st.sampled_from(["participant_id", "t1", "diagnosis"])),
            min_size=width,
            max_size=width,
        )
    )
    rows = draw(st.lists(st.lists(cells, min_size=0, max_size=width + 1), max_size=6))
    lines = [delimiter.join(header)] + [delimiter.join(row) for row in rows]
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    return newline.join(lines) + draw(st.sampled_from(["", newline])), draw(
        st.sampled_from([".csv", ".tsv", ".txt"])
    )


@SETTINGS
@given(table=tables(), image=st.sampled_from([None, "t1"]), label=st.sampled_from([None, "diagnosis"]))
def test_any_table_reads_or_raises_a_neurodl_error(
    table: tuple[str, str], image: str | None, label: str | None
):
    text, suffix = table
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"manifest{suffix}"
        path.write_text(text, encoding="utf-8")
        for read in (
            lambda: read_table(path),
            lambda: load_manifest(path, [image] if image else None, label, require_files=False),
            lambda: load_manifest(path, [image] if image else None, label),
        ):
            try:
                read()
            except NeurodlError as exc:
                assert path.name in str(exc) or "column" in str(exc)


@SETTINGS
@given(raw=st.binary(max_size=600))
def test_any_bytes_read_as_a_table_or_raise_a_neurodl_error(raw: bytes):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "manifest.tsv"
        path.write_bytes(raw)
        try:
            read_table(path)
        except NeurodlError as exc:
            assert path.name in str(exc)


# -- NIfTI headers ------------------------------------------------------------------------------

odd_floats = st.one_of(
    st.floats(-1e6, 1e6),
    st.sampled_from([0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e38, 1e-38]),
)
dims = st.lists(st.integers(-2, 40), min_size=8, max_size=8).map(
    lambda d: [max(min(d[0], 7), -1)] + d[1:]
) | st.sampled_from(
    [
        [3, 4, 4, 4, 1, 1, 1, 1],
        [4, 4, 4, 4, 3, 1, 1, 1],
        [2, 4, 4, 1, 1, 1, 1, 1],
        [3, 32767, 32767, 32767, 1, 1, 1, 1],
    ]
)
# Every NIfTI-1 datatype code, and some that are none.
datatypes = st.sampled_from(
    [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 3, 99, 4000]
)


@SETTINGS
@given(
    dim=dims,
    pixdim=st.lists(odd_floats, min_size=8, max_size=8),
    datatype=datatypes,
    bitpix=st.sampled_from([0, 8, 16, 32, 64, 7]),
    slope=odd_floats,
    inter=odd_floats,
    affine=st.lists(odd_floats, min_size=12, max_size=12),
    codes=st.tuples(st.integers(-1, 5), st.integers(-1, 5)),
    offset=st.sampled_from([0.0, 352.0, 348.0, 10_000.0, -1.0]),
    data_bytes=st.integers(0, 2000),
    compressed=st.booleans(),
)
def test_any_nifti_header_loads_or_raises_a_neurodl_error(
    dim, pixdim, datatype, bitpix, slope, inter, affine, codes, offset, data_bytes, compressed
):
    header = nib.Nifti1Header()
    block = header.structarr
    block["dim"] = dim
    block["pixdim"] = pixdim
    block["datatype"] = datatype
    block["bitpix"] = bitpix
    block["scl_slope"] = slope
    block["scl_inter"] = inter
    block["srow_x"], block["srow_y"], block["srow_z"] = affine[0:4], affine[4:8], affine[8:12]
    block["qform_code"], block["sform_code"] = codes
    block["vox_offset"] = offset
    raw = header.binaryblock + b"\x00" * 4 + np.random.default_rng(0).bytes(data_bytes)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("image.nii.gz" if compressed else "image.nii")
        path.write_bytes(gzip.compress(raw) if compressed else raw)
        try:
            volume = load_volume(path)
        except NeurodlError as exc:
            assert path.name in str(exc)
            return
        assert volume.data.ndim == 3
        assert np.all(np.isfinite(volume.affine))
