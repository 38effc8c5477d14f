"""NIfTI volumes that always travel with their affine.

``load_volume`` validates a file and returns its voxels, affine and header;
``save_volume`` writes voxels in the grid of a reference volume (``like=``), so
an output overlays its input in any viewer. Orientation helpers move voxel
arrays to RAS and back without resampling.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)
from nibabel.spatialimages import HeaderDataError

from neurodl.errors import ImageError
from neurodl.io.atomic import atomic_output

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# CIFTI-2 intents (3000-3099) hold surface/grayordinate data, not a voxel grid.
_CIFTI_INTENTS = range(3000, 3100)
_MAX_VOXELS = 2**31
# Deflate expands data at most 1032-fold: a .gz smaller than 1/1032 of the declared size is cut off.
_MAX_DEFLATE_RATIO = 1032


@dataclass(frozen=True)
class Volume:
    """A 3D (or channel-last 4D) array with the affine and header it came with.

    Attributes:
        data: voxel values, indexed (i, j, k[, channel]).
        affine: 4x4 voxel-to-world (scanner RAS+, mm) matrix.
        header: the NIfTI header of the source file (or of the reference image).
        path: the file it was read from, if any.
    """

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis."""
        return voxel_size(self.affine)

    @property
    def orientation(self) -> str:
        """Orientation code such as ``RAS`` or ``LAS``."""
        return orientation_code(self.affine)


def is_nifti_path(path: str | Path) -> bool:
    """True if the name ends in ``.nii`` or ``.nii.gz`` (case-insensitive)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def orientation_code(affine: np.ndarray) -> str:
    """Three-letter orientation code of an affine (``RAS``, ``LAS``, ``LPS``...)."""
    return "".join(str(c) for c in nib.aff2axcodes(affine))


def voxel_size(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each array axis of an affine."""
    sizes = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    return (float(sizes[0]), float(sizes[1]), float(sizes[2]))


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ImageError(
            path,
            "file does not exist.",
            "Check the path (relative paths in a manifest are relative to the manifest's folder).",
        )
    if path.is_dir():
        raise ImageError(
            path,
            "is a directory, not a NIfTI file.",
            "Give a .nii or .nii.gz file, or use a command that accepts folders.",
        )
    if not is_nifti_path(path):
        raise ImageError(
            path,
            "is not a NIfTI file (expected a .nii or .nii.gz name).",
            "Convert it to NIfTI first (e.g. dcm2niix for DICOM).",
        )
    if path.stat().st_size == 0:
        raise ImageError(
            path,
            "is empty (0 bytes).",
            "Re-export or re-copy the file; it was probably cut off while being written.",
        )


def _declared_bytes(header: nib.Nifti1Header) -> int:
    shape = header.get_data_shape()
    n = int(np.prod(shape, dtype=np.float64)) if shape else 0
    return n * header.get_data_dtype().itemsize


def _check_size(path: Path, header: nib.Nifti1Header) -> None:
    """Refuse truncated files and absurd declared sizes before allocating anything."""
    shape = header.get_data_shape()
    if not shape or any(int(s) < 1 for s in shape):
        raise ImageError(
            path,
            f"header declares shape {tuple(int(s) for s in shape)}; every axis needs at least one voxel.",
            "The header is probably corrupt; inspect it with `fslhd` or `nib-ls` and re-export it.",
        )
    n_voxels = float(np.prod(shape, dtype=np.float64))
    if n_voxels > _MAX_VOXELS:
        raise ImageError(
            path,
            f"header declares {tuple(shape)} = {n_voxels:.3g} voxels, more than neurodl will load.",
            "The header is probably corrupt; inspect it with `fslhd` or `nib-ls` and re-export it.",
        )
    expected = int(header.get_data_offset()) + _declared_bytes(header)
    if str(path).lower().endswith(".gz"):
        compressed = path.stat().st_size
        if expected > compressed * _MAX_DEFLATE_RATIO:
            # Also catches images over 4 GB, which the gzip trailer below cannot.
            raise ImageError(
                path,
                f"is truncated or corrupt: the header declares {expected} bytes, "
                f"more than its {compressed} compressed bytes can hold.",
                "Re-copy or re-export the file.",
            )
        # The gzip trailer stores the uncompressed size modulo 2**32: a cheap truncation check.
        # A file cut short ends in arbitrary bytes, so this catches most, not all, truncations;
        # the rest fail when the voxels are read.
        if path.stat().st_size < 4:
            stored = 0
        else:
            with open(path, "rb") as handle:
                handle.seek(-4, 2)
                stored = struct.unpack("<I", handle.read(4))[0]
        if expected < 2**32 and stored < expected:
            raise ImageError(
                path,
                f"is truncated or corrupt: the header declares {expected} bytes, "
                f"the compressed data holds {stored}.",
                "Re-copy or re-export the file.",
            )
    elif path.stat().st_size < expected:
        raise ImageError(
            path,
            f"is truncated: the header declares {expected} bytes, the file has {path.stat().st_size}.",
            "Re-copy or re-export the file.",
        )


def read_image(path: str | Path) -> nib.Nifti1Image:
    """Open a NIfTI file lazily (header read, voxels not yet) with every check that is cheap.

    Raises:
        ImageError: missing, empty, not NIfTI, CIFTI, truncated or absurd header.
    """
    path = Path(path)
    _check_file(path)
    try:
        # A NaN or overflowing qform/sform is refused below with a message; numpy's warnings are noise.
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            image = nib.load(str(path))
    except (
        nib.filebasedimages.ImageFileError,
        gzip.BadGzipFile,
        EOFError,
        OSError,
        ValueError,
        struct.error,
        HeaderDataError,
    ) as exc:
        # nibabel hands a NIfTI-2 header with a CIFTI intent to its CIFTI reader, which fails
        # when the CIFTI extension is missing; say what the file is, not how the reader failed.
        if "cifti" in str(exc).lower():
            raise _cifti_error(path) from exc
        raise ImageError(
            path,
            f"cannot be read as NIfTI ({exc}).",
            "Check that it is a valid .nii/.nii.gz (open it in a viewer); re-export it if not.",
        ) from exc
    if "cifti" in type(image).__name__.lower():
        raise _cifti_error(path)
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise ImageError(path, f"is a {type(image).__name__}, not a NIfTI volume.", "Convert it to NIfTI.")
    header = image.header
    if int(header["intent_code"]) in _CIFTI_INTENTS:
        raise _cifti_error(path)
    _check_scalar(path, header)
    _check_size(path, header)
    return image


def _check_scalar(path: Path, header: Any) -> None:
    """Refuse voxels that are not one number each: RGB/RGBA colours, complex values."""
    try:
        stored = np.dtype(header.get_data_dtype())
    except (TypeError, ValueError, HeaderDataError):
        return  # an unknown datatype code: reading the voxels names it
    if stored.fields is not None:
        raise ImageError(
            path,
            f"stores colour voxels ({', '.join(stored.names or ())}; NIfTI datatype {int(header['datatype'])}), not one intensity per voxel.",
            "Give the scan as a greyscale (scalar) image; an RGB NIfTI is usually a rendering or an overlay, not the scan.",
        )
    if stored.kind == "c":
        raise ImageError(
            path,
            f"stores complex voxels ({stored}); neurodl reads one real intensity per voxel.",
            "Give the magnitude image (e.g. `fslcomplex -realabs in.nii.gz out.nii.gz`).",
        )


def _cifti_error(path: Path) -> ImageError:
    return ImageError(
        path,
        "is a CIFTI file (surface/grayordinate data), not a voxel volume.",
        "Use the volumetric NIfTI of the same data (e.g. the *_T1w.nii.gz, not a .dscalar.nii).",
    )


def _as_3d(path: Path, data: np.ndarray) -> np.ndarray:
    require_3d_shape(path, data.shape)
    return data if data.ndim == 3 else data.reshape(data.shape[:3])


def require_3d_shape(path: str | Path, shape: tuple[int, ...]) -> None:
    """Refuse a shape that is not one 3D volume (axes of length 1 beyond the third are fine).

    Raises:
        ImageError: a 2D image, or a 4D/5D image holding several volumes.
    """
    if len(shape) < 3:
        raise ImageError(
            path,
            f"is {len(shape)}D (shape {tuple(shape)}); a 3D volume is expected.",
            "Give a 3D volume (a 2D slice cannot be used).",
        )
    if len(shape) > 3 and any(s != 1 for s in shape[3:]):
        raise ImageError(
            path,
            f"is {len(shape)}D (shape {tuple(shape)}; {describe_extra_axes(tuple(shape))}); "
            "a single 3D volume is expected.",
            "Extract one volume first, e.g. `fslroi in.nii.gz out.nii.gz 0 1` "
            "or nibabel's `image.slicer[..., 0]`.",
        )


def describe_extra_axes(shape: tuple[int, ...]) -> str:
    """Name the axes beyond the third that hold more than one volume (1-based, as in viewers).

    Example:
        >>> describe_extra_axes((64, 64, 40, 120))
        'axis 4 has 120 volumes'
    """
    return ", ".join(
        f"axis {i + 1} has {size} volumes" for i, size in enumerate(shape) if i >= 3 and size > 1
    )


def load_volume(
    path: str | Path,
    *,
    dtype: Any = np.float32,
    require_3d: bool = True,
    require_finite: bool = False,
) -> Volume:
    """Load a NIfTI file with its affine and header.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        dtype: dtype of the returned array (scaling applied); ``None`` keeps the stored type.
        require_3d: refuse 2D/4D/5D images (4D with one volume is squeezed to 3D).
        require_finite: refuse NaN or Inf voxels.

    Raises:
        ImageError: naming the file and what to do about it.

    Example:
        >>> vol = load_volume("sub-001_T1w.nii.gz")
        >>> vol.shape, vol.orientation, vol.spacing
        ((64, 64, 64), 'LAS', (1.0, 1.0, 1.0))
    """
    path = Path(path)
    image = read_image(path)
    try:
        data = np.asanyarray(image.dataobj) if dtype is None else image.get_fdata(dtype=dtype)
    except (
        EOFError,
        OSError,
        ValueError,
        gzip.BadGzipFile,
        MemoryError,
        struct.error,
        HeaderDataError,
    ) as exc:
        raise ImageError(
            path,
            f"voxel data cannot be read ({exc}); the file is truncated or corrupt.",
            "Re-copy or re-export the file.",
        ) from exc
    data = np.asarray(data)
    if require_3d:
        data = _as_3d(path, data)
    if require_finite and data.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise ImageError(
                path,
                f"has {bad} NaN/Inf voxels.",
                "Fix the image (e.g. replace NaN by 0 with fslmaths -nan) before using it.",
            )
    affine = image.affine
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ImageError(
            path,
            "has no usable affine (missing, NaN or singular).",
            "Fix the header's qform/sform (e.g. with fslorient) before using it.",
        )
    return Volume(data=data, affine=np.asarray(affine, dtype=np.float64), header=image.header, path=path)


def save_volume(
    data: np.ndarray,
    path: str | Path,
    *,
    like: Volume,
    dtype: Any = None,
) -> Path:
    """Write ``data`` atomically as NIfTI in the grid of ``like`` (its affine, codes, units).

    Values are stored as given, never rescaled: an integer ``dtype`` rounds to the nearest
    integer and refuses values it cannot hold, so a label map stays exact. 64-bit integers,
    which many viewers cannot read, are stored as int32 when the values fit.

    Args:
        data: array whose first three axes match ``like``'s grid; extra axes are kept.
        path: output file (``.nii`` or ``.nii.gz``).
        like: the volume this output belongs to; never an identity affine by default.
        dtype: stored dtype (default: ``data``'s dtype).

    Example:
        >>> save_volume(mask.astype("uint8"), "sub-001_dseg.nii.gz", like=t1)
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise ImageError(path, "output name must end in .nii or .nii.gz.")
    data = np.asarray(data)
    if data.shape[:3] != like.shape[:3]:
        raise ValueError(f"data shape {data.shape} does not match the reference grid {like.shape[:3]}")
    data = _storable(data, None if dtype is None else np.dtype(dtype), path)
    header = like.header.copy()
    header.set_data_dtype(data.dtype)
    image = nib.Nifti1Image(data, like.affine, header=header)
    # Store values as given: no inherited intensity scaling (data already has the stored dtype,
    # so nibabel has nothing to rescale).
    image.header.set_slope_inter(None, None)
    qform, qcode = like.header.get_qform(coded=True)
    sform, scode = like.header.get_sform(coded=True)
    header_affine = sform if sform is not None else qform
    if header_affine is not None and np.allclose(header_affine, like.affine, atol=1e-4):
        # The header describes this grid: keep its qform/sform pair and codes as they were.
        _set_forms(
            image.header,
            like.affine if qform is None else qform,
            like.affine if sform is None else sform,
            int(qcode),
            int(scode),
        )
    else:
        # The affine changed since the header was read (e.g. after to_ras): the header's
        # qform/sform describe another grid, so write the affine itself into both.
        _set_forms(image.header, like.affine, like.affine, int(qcode), int(scode))
    with atomic_output(path) as tmp:
        nib.save(image, str(tmp))
    return path


def _set_forms(header: Any, qform: np.ndarray, sform: np.ndarray, qcode: int, scode: int) -> None:
    """Write qform and sform keeping the input's codes (a qform code 0 stays 0, see docs/data.md).

    Only a header whose codes are both 0 and whose fallback affine (voxel sizes alone)
    differs from the grid gets sform code 1, or readers would lose the affine.
    """
    header.set_qform(qform, qcode)
    header.set_sform(sform, scode)
    if qcode == 0 and scode == 0 and not np.allclose(header.get_base_affine(), sform, atol=1e-4):
        header.set_sform(sform, 1)


def _storable(data: np.ndarray, dtype: np.dtype | None, path: Path) -> np.ndarray:
    """Cast ``data`` to the dtype it will be stored as, so that nibabel never rescales it."""
    if dtype is None:
        if data.dtype == np.float64:
            return data.astype(np.float32)
        if data.dtype == np.bool_:
            return data.astype(np.uint8)
        if data.dtype.kind in "iu" and data.dtype.itemsize == 8:
            target = np.dtype(np.int32)
            info = np.iinfo(target)
            if data.size == 0 or (data.min() >= info.min and data.max() <= info.max):
                return data.astype(target)
        return data
    if dtype.kind in "iu" and data.dtype.kind not in "iu":
        if data.size and not np.all(np.isfinite(data)):
            raise ImageError(
                path,
                f"cannot store NaN/Inf values as {dtype}.",
                "Replace them first, or save as float32.",
            )
        data = np.rint(data)
    if dtype.kind in "iu" and data.size:
        info = np.iinfo(dtype)
        low, high = data.min(), data.max()
        if low < info.min or high > info.max:
            raise ImageError(
                path,
                f"values {low}..{high} do not fit in {dtype} ({info.min}..{info.max}).",
                "Save with a wider dtype (e.g. int32 or float32).",
            )
    return data.astype(dtype, copy=False)


def ras_transform(affine: np.ndarray) -> np.ndarray:
    """Orientation transform (nibabel ``ornt``) taking arrays from ``affine``'s axes to RAS."""
    return ornt_transform(io_orientation(affine), axcodes2ornt("RAS"))


def to_ras(volume: Volume) -> Volume:
    """Reorder/flip axes so the array is in RAS orientation (no resampling).

    The returned volume's affine maps the reordered array to the same world
    coordinates, so ``from_ras(to_ras(v).data, like=v)`` gives back ``v.data``.
    """
    transform = ras_transform(volume.affine)
    data = apply_orientation(volume.data, transform)
    affine = volume.affine @ inv_ornt_aff(transform, volume.shape[:3])
    header = volume.header.copy()
    header.set_data_shape(data.shape)
    # Keep the header consistent with the new axes, so saving with like=this volume is correct.
    _, qcode = header.get_qform(coded=True)
    _, scode = header.get_sform(coded=True)
    _set_forms(header, affine, affine, int(qcode), int(scode))
    return Volume(data=np.ascontiguousarray(data), affine=affine, header=header, path=volume.path)


def from_ras(data: np.ndarray, *, like: Volume) -> np.ndarray:
    """Undo :func:`to_ras`: bring an array computed in RAS back to ``like``'s axes."""
    back = ornt_transform(axcodes2ornt("RAS"), io_orientation(like.affine))
    return np.ascontiguousarray(apply_orientation(data, back))


@dataclass(frozen=True)
class ImageSummary:
    """What ``neurodl info`` shows about one NIfTI file.

    Attributes:
        path: the file.
        shape: array shape (4D files keep their 4th axis).
        voxel_size: mm along each of the first three array axes.
        orientation: orientation code such as ``LAS``.
        dtype: the type stored on disk.
        minimum, maximum, mean: over finite voxels (None when there are none).
        n_nan, n_inf: NaN and Inf voxel counts.
        affine: the voxel-to-world matrix.
        qform_code, sform_code: NIfTI codes saying which space the affine maps to.
    """

    path: Path
    shape: tuple[int, ...]
    voxel_size: tuple[float, float, float]
    orientation: str
    dtype: str
    minimum: float | None
    maximum: float | None
    mean: float | None
    n_nan: int
    n_inf: int
    affine: tuple[tuple[float, ...], ...]
    qform_code: int
    sform_code: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "shape": list(self.shape),
            "voxel_size_mm": list(self.voxel_size),
            "orientation": self.orientation,
            "dtype": self.dtype,
            "min": self.minimum,
            "max": self.maximum,
            "mean": self.mean,
            "nan": self.n_nan,
            "inf": self.n_inf,
            "affine": [list(row) for row in self.affine],
            "qform_code": self.qform_code,
            "sform_code": self.sform_code,
        }


def finite_values(data: np.ndarray) -> tuple[np.ndarray, int, int]:
    """``data``'s finite values (all of it when there is no NaN or infinity), and its NaN and infinity counts."""
    if data.dtype.kind not in "fc":
        return data, 0, 0
    n_nan = int(np.count_nonzero(np.isnan(data)))
    n_inf = int(np.count_nonzero(np.isinf(data)))
    return (data[np.isfinite(data)] if n_nan or n_inf else data), n_nan, n_inf


def summarize_image(path: str | Path) -> ImageSummary:
    """Read a NIfTI file (2D to 5D) and summarise its header and intensities.

    Raises:
        ImageError: the file cannot be read (missing, empty, truncated, not NIfTI, CIFTI...).

    Example:
        >>> summarize_image("sub-001_T1w.nii.gz").orientation
        'LAS'
    """
    volume = load_volume(path, dtype=None, require_3d=False)
    finite, n_nan, n_inf = finite_values(volume.data)
    has_values = finite.size > 0
    header = volume.header
    return ImageSummary(
        path=Path(path),
        shape=volume.shape,
        voxel_size=volume.spacing,
        orientation=volume.orientation,
        dtype=str(header.get_data_dtype()),
        minimum=float(finite.min()) if has_values else None,
        maximum=float(finite.max()) if has_values else None,
        mean=float(finite.mean(dtype=np.float64)) if has_values else None,
        n_nan=n_nan,
        n_inf=n_inf,
        affine=tuple(tuple(float(v) for v in row) for row in volume.affine),
        qform_code=int(header["qform_code"]),
        sform_code=int(header["sform_code"]),
    )


def find_nifti_files(folder: str | Path) -> list[Path]:
    """Every ``.nii``/``.nii.gz`` file under ``folder`` (recursively, sorted).

    Hidden files are skipped: macOS ``._name.nii`` copies and neurodl's own temporary
    files are not images.
    """
    folder = Path(folder)
    return sorted(
        path
        for path in folder.rglob("*")
        if is_nifti_path(path)
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
