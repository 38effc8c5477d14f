"""A procedural brain phantom and a synthetic CN/AD cohort, seeded and byte-reproducible.

Each subject's anatomy is defined in world (mm) coordinates, deformed by a
random affine and a smooth random displacement field, and sampled at the voxel
centres of that subject's own grid (its orientation and voxel size), so a
subject's T1w, T2w and tissue labels overlay in any viewer whatever their
array layout. Dementia (AD) is simulated as the lecture describes it: more
fluid (enlarged ventricles, wider sulci, a wider subarachnoid space, thinner
cortex) and lower brain metabolism.

Coordinates below are "normalised": world millimetres divided by half the
field of view (``size / 2``), so the anatomy scales with ``size`` and the head
fills most of the field of view at any size.
"""

from __future__ import annotations

import gzip
import logging
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform
from scipy import ndimage
from scipy.spatial.transform import Rotation

from neurodl import __version__
from neurodl.errors import OutputError, UsageError
from neurodl.io.atomic import write_bytes_atomic, write_text_atomic
from neurodl.io.nifti import Volume

logger = logging.getLogger(__name__)

DIAGNOSES = ("CN", "AD")
LABELS = {0: "background", 1: "CSF", 2: "GM", 3: "WM"}
PARTICIPANT_COLUMNS = (
    "participant_id",
    "diagnosis",
    "severity",
    "age",
    "sex",
    "csf_volume_ml",
    "brain_volume_ml",
    "brain_metabolism",
    "t1",
    "t2",
    "dseg",
)
MIN_SIZE = 16
MAX_SIZE = 256
MIN_SUBJECTS = 2

# Acquisition protocols, cycled within each diagnosis so that no protocol is a
# shortcut to the diagnosis: (orientation code, voxel size in mm along R, A, S).
PROTOCOLS: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("RAS", (1.0, 1.0, 1.0)),
    ("LAS", (1.0, 1.0, 1.0)),
    ("RAS", (1.0, 1.0, 1.5)),
    ("LPS", (1.0, 1.0, 1.5)),
    ("RAS", (1.0, 1.0, 1.0)),
)

# Extended tissue classes used to render images; labels keep only 0-3.
_AIR, _CSF, _GM, _WM, _SKULL, _SCALP = range(6)
_TISSUE_TO_LABEL = np.array([0, 1, 2, 3, 0, 0], dtype=np.uint8)
# Mean intensities per extended class (air, CSF, GM, WM, skull, scalp).
_T1_MEANS = np.array([0.0, 45.0, 125.0, 190.0, 20.0, 165.0])
_T2_MEANS = np.array([0.0, 230.0, 130.0, 88.0, 15.0, 135.0])
_NOISE_FRACTION = 0.025  # Rician sigma relative to the brightest brain tissue

# Brain (intracranial) ellipsoid semi-axes and layer depths, normalised units.
_BRAIN_AXES = np.array([0.62, 0.76, 0.58])
_MEAN_RADIUS = 0.65
_SKULL_THICKNESS = 0.045
_SCALP_THICKNESS = 0.04
_FIELD_EXTENT = 1.3  # random fields cover [-1.3, 1.3]^3, beyond any deformed voxel
_CHUNK = 1 << 20  # voxels evaluated at once: bounds memory at large sizes


@dataclass(frozen=True)
class Participant:
    """Demographics and disease state of one synthetic subject.

    Attributes:
        diagnosis: ``"CN"`` (cognitively normal) or ``"AD"`` (Alzheimer's disease).
        severity: clinical severity score, 0 (none) to 10; 0 or 1 for CN, 2-10 for AD.
        age: years.
        sex: ``"M"`` or ``"F"``.
        atrophy: 0 (none) to 1 (severe); drives ventricles, sulci and cortical thickness.
        brain_metabolism: glucose-uptake ratio (FDG-PET SUVR-like), lower in AD.
        head_scale: overall head size relative to the template (males larger).
    """

    diagnosis: str
    severity: int
    age: int
    sex: str
    atrophy: float
    brain_metabolism: float
    head_scale: float


@dataclass(frozen=True)
class Phantom:
    """One subject's images on its own grid.

    Attributes:
        labels: tissue labels (uint8): 0 background, 1 CSF, 2 GM, 3 WM.
        t1: T1-weighted image (int16): WM > GM > CSF.
        t2: T2-weighted image (int16): CSF > GM > WM.
        affine: 4x4 voxel-to-world (RAS+, mm) matrix shared by the three arrays.
        participant: the subject's demographics and disease state.
    """

    labels: np.ndarray
    t1: np.ndarray
    t2: np.ndarray
    affine: np.ndarray
    participant: Participant

    @property
    def shape(self) -> tuple[int, int, int]:
        return (int(self.labels.shape[0]), int(self.labels.shape[1]), int(self.labels.shape[2]))

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (mm^3 / 1000)."""
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    @property
    def csf_volume_ml(self) -> float:
        """CSF volume from the label map, in mL."""
        return int(np.count_nonzero(self.labels == 1)) * self.voxel_volume_ml

    @property
    def brain_volume_ml(self) -> float:
        """Grey plus white matter volume from the label map, in mL."""
        return int(np.count_nonzero(self.labels >= 2)) * self.voxel_volume_ml

    def volume(self, name: Literal["t1", "t2", "labels"]) -> Volume:
        """One image as a :class:`~neurodl.io.nifti.Volume` (with affine and header).

        Example:
            >>> phantom = make_phantom(np.random.default_rng(0), size=32)
            >>> save_volume(phantom.labels == 1, "csf.nii.gz", like=phantom.volume("t1"))
        """
        data = {"t1": self.t1, "t2": self.t2, "labels": self.labels}[name]
        return Volume(data=data, affine=self.affine.copy(), header=_nifti_image(data, self.affine).header)


@dataclass(frozen=True)
class SubjectRecord:
    """One row of ``participants.tsv``: what was written for a subject."""

    participant_id: str
    diagnosis: str
    severity: int
    age: int
    sex: str
    csf_volume_ml: float
    brain_volume_ml: float
    brain_metabolism: float
    t1: str
    t2: str
    dseg: str
    orientation: str
    voxel_size: tuple[float, float, float]
    shape: tuple[int, int, int]


@dataclass(frozen=True)
class CohortSummary:
    """What :func:`generate_cohort` wrote.

    Attributes:
        out: the cohort folder.
        n: number of participants.
        size: voxels per axis at 1 mm isotropic.
        seed: random seed.
        subjects: one record per participant, in ``participants.tsv`` order.
        seconds: wall-clock generation time.
        removed: images of a previous cohort deleted by ``overwrite`` (relative paths).
    """

    out: Path
    n: int
    size: int
    seed: int
    subjects: tuple[SubjectRecord, ...]
    seconds: float = 0.0
    removed: tuple[str, ...] = field(default=())

    @property
    def manifest(self) -> Path:
        return self.out / "participants.tsv"

    def count(self, diagnosis: str) -> int:
        """Number of participants with this diagnosis."""
        return sum(1 for s in self.subjects if s.diagnosis == diagnosis)

    def mean_csf_ml(self, diagnosis: str) -> float:
        """Mean CSF volume (mL) of participants with this diagnosis (NaN if none)."""
        values = [s.csf_volume_ml for s in self.subjects if s.diagnosis == diagnosis]
        return float(np.mean(values)) if values else float("nan")

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready summary."""
        return {
            "out": str(self.out),
            "manifest": str(self.manifest),
            "n": self.n,
            "size": self.size,
            "seed": self.seed,
            "seconds": round(self.seconds, 3),
            "groups": {
                d: {"n": self.count(d), "mean_csf_volume_ml": round(self.mean_csf_ml(d), 3)}
                for d in DIAGNOSES
            },
            "removed": list(self.removed),
            "subjects": [asdict(s) for s in self.subjects],
        }


def draw_participant(rng: np.random.Generator, diagnosis: str = "CN") -> Participant:
    """Draw the demographics and disease state of one subject.

    AD subjects have a disease stage that raises severity and atrophy and lowers
    metabolism; age adds a little atrophy to everyone. Head size and noise make
    the biomarkers overlap between groups, as real ones do.

    Example:
        >>> draw_participant(np.random.default_rng(0), "AD").severity
        9
    """
    if diagnosis not in DIAGNOSES:
        raise UsageError(f"Unknown diagnosis {diagnosis!r}.", f"Use one of {', '.join(DIAGNOSES)}.")
    ad = diagnosis == "AD"
    sex = "M" if rng.random() < 0.5 else "F"
    age = int(np.clip(np.rint(rng.normal(75.0 if ad else 71.0, 6.5)), 55, 95))
    stage = float(rng.beta(2.0, 2.0)) if ad else 0.0
    if ad:
        severity = int(np.clip(np.rint(2.0 + 8.0 * stage + rng.normal(0.0, 0.8)), 2, 10))
    else:
        severity = int(rng.random() < 0.2)
    aging = 0.006 * (age - 60)
    atrophy = aging + (0.12 + 0.45 * stage if ad else 0.0) + rng.normal(0.0, 0.1)
    metabolism = 1.32 - (0.06 + 0.15 * stage if ad else 0.0) - 0.003 * (age - 70) + rng.normal(0.0, 0.075)
    head_scale = (1.03 if sex == "M" else 0.97) * (1.0 + rng.normal(0.0, 0.03))
    return Participant(
        diagnosis=diagnosis,
        severity=severity,
        age=age,
        sex=sex,
        atrophy=float(np.clip(atrophy, 0.0, 1.0)),
        brain_metabolism=round(float(metabolism), 3),
        head_scale=float(np.clip(head_scale, 0.9, 1.1)),
    )


def _check_size(size: int) -> None:
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise UsageError(
            f"--size {size} is out of range: the phantom needs {MIN_SIZE} to {MAX_SIZE} voxels per axis.",
            f"Use --size {MIN_SIZE} or more (e.g. 64; 32 is enough for quick tests).",
        )


@dataclass(frozen=True)
class _Grid:
    """A voxel grid covering ``size`` mm per axis, centred on the origin, in RAS order."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    half_fov: float

    @classmethod
    def centred(cls, size: int, spacing: np.ndarray) -> _Grid:
        shape = tuple(max(1, int(round(size / s))) for s in spacing)
        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = -(np.asarray(shape) - 1) / 2.0 * spacing
        return cls((shape[0], shape[1], shape[2]), affine, size / 2.0)

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalised world coordinate of the voxel centres along each (R, A, S) axis."""
        x, y, z = (
            (self.affine[k, k] * np.arange(self.shape[k]) + self.affine[k, 3]) / self.half_fov
            for k in range(3)
        )
        return x, y, z

    def evaluate(self, function: Callable[[_Slab], np.ndarray], dtype: type) -> np.ndarray:
        """Fill the grid slab by slab (bounded memory at large sizes) with ``function(slab)``."""
        x, y, z = self.axes()
        result: np.ndarray = np.empty(self.shape, dtype=dtype)
        step = max(1, _CHUNK // (self.shape[1] * self.shape[2]))
        for start in range(0, self.shape[0], step):
            result[start : start + step] = function(_Slab(x[start : start + step], y, z))
        return result


@dataclass(frozen=True)
class _Slab:
    """Voxel centres of a block of whole slices, as separable normalised coordinates."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.x), len(self.y), len(self.z))

    def points(self) -> np.ndarray:
        """All voxel centres, (3, N) in C order."""
        grids = np.meshgrid(self.x, self.y, self.z, indexing="ij")
        return np.stack([g.ravel() for g in grids])


def _cubic_bspline(t: np.ndarray) -> np.ndarray:
    t = np.abs(t)
    return np.where(t < 1.0, 2.0 / 3.0 - t**2 + 0.5 * t**3, np.where(t < 2.0, (2.0 - t) ** 3 / 6.0, 0.0))


@dataclass(frozen=True)
class _SmoothField:
    """A random smooth field: a cubic B-spline with random coefficients over [-extent, extent]^3.

    On a voxel grid it is evaluated separably (three small matrix products), which
    is much faster than interpolating at every voxel.
    """

    coefficients: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, knots: int, scale: float) -> _SmoothField:
        return cls(rng.normal(0.0, scale, (knots + 2,) * 3))

    def _weights(self, t: np.ndarray) -> np.ndarray:
        knots = self.coefficients.shape[0] - 2
        index = (t + _FIELD_EXTENT) * ((knots - 1) / (2.0 * _FIELD_EXTENT)) + 1.0
        return _cubic_bspline(index[:, None] - np.arange(knots + 2)[None, :])

    def on_slab(self, slab: _Slab) -> np.ndarray:
        wx, wy, wz = (self._weights(t) for t in (slab.x, slab.y, slab.z))
        # One axis at a time, with plain einsum (no BLAS): cheap, and the summation order
        # does not depend on the BLAS build or thread count, so files stay reproducible.
        field = np.einsum("ia,abc->ibc", wx, self.coefficients)
        field = np.einsum("jb,ibc->ijc", wy, field)
        return np.einsum("kc,ijc->ijk", wz, field)


def _random_field(rng: np.random.Generator, points: int, smooth: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal((points,) * 3), smooth, mode="wrap")
    return field / field.std()


def _sample(field: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of a field on [-extent, extent]^3 at normalised points (3, N)."""
    index = (u + _FIELD_EXTENT) * ((field.shape[0] - 1) / (2.0 * _FIELD_EXTENT))
    return ndimage.map_coordinates(field, index, order=1, mode="nearest", prefilter=False)


def _ellipsoid(q: np.ndarray, centre: Sequence[float], axes: Sequence[float] | np.ndarray) -> np.ndarray:
    c = np.asarray(centre, dtype=np.float64)[:, None]
    a = np.asarray(axes, dtype=np.float64)[:, None]
    return (((q - c) / a) ** 2).sum(axis=0) < 1.0


@dataclass(frozen=True)
class _Anatomy:
    """One subject's random anatomy: a deformation and the cortical folding pattern."""

    rotation: np.ndarray
    scale: np.ndarray
    shift: np.ndarray
    displacement: tuple[_SmoothField, _SmoothField, _SmoothField]
    folds: np.ndarray
    fold_gradient: tuple[np.ndarray, np.ndarray, np.ndarray]
    atrophy: float

    @classmethod
    def draw(cls, rng: np.random.Generator, participant: Participant) -> _Anatomy:
        rotation = Rotation.from_euler("xyz", rng.normal(0.0, 3.0, 3), degrees=True).as_matrix()
        scale = participant.head_scale * (1.0 + rng.normal(0.0, 0.02, 3))
        shift = rng.normal(0.0, 0.015, 3)
        # Coarse random displacements, spline-interpolated: a smooth per-subject shape change.
        dx, dy, dz = (_SmoothField.draw(rng, 7, 0.09) for _ in range(3))
        # Zero-level sheets of band-limited noise form a labyrinth, like sulci on a cortex.
        folds = _random_field(rng, 48, 1.9)
        step = 2.0 * _FIELD_EXTENT / (folds.shape[0] - 1)
        gx, gy, gz = np.gradient(folds, step)
        return cls(
            rotation=rotation,
            scale=scale,
            shift=shift,
            displacement=(dx, dy, dz),
            folds=folds,
            fold_gradient=(gx, gy, gz),
            atrophy=participant.atrophy,
        )

    def template_coordinates(self, slab: _Slab) -> np.ndarray:
        """Template points (3, N) at the slab's voxel centres: world -> subject-free anatomy."""
        u = slab.points()
        q = self.rotation.T @ ((u - self.shift[:, None]) / self.scale[:, None])
        for axis in range(3):
            q[axis] += self.displacement[axis].on_slab(slab).ravel()
        return q

    def tissue(self, slab: _Slab) -> np.ndarray:
        """Extended tissue class (air, CSF, GM, WM, skull, scalp) at the slab's voxel centres."""
        a = self.atrophy
        q = self.template_coordinates(slab)
        x, y, z = q
        rho = np.sqrt(((q / _BRAIN_AXES[:, None]) ** 2).sum(axis=0))
        depth = (1.0 - rho) * _MEAN_RADIUS

        outer_csf = 0.018 + 0.035 * a
        thickness = 0.075 - 0.03 * a
        sulcus_width = 0.012 + 0.02 * a
        sulcus_depth = 0.13 + 0.03 * a

        g = _sample(self.folds, q)
        gradient = np.sqrt(sum(_sample(gi, q) ** 2 for gi in self.fold_gradient))
        sheet = np.abs(g) / np.maximum(gradient, 1e-6)
        sheet_depth = np.full_like(sheet, sulcus_depth)
        # The interhemispheric fissure: a midline sheet down to the corpus callosum.
        above_callosum = (y / 0.4) ** 2 + ((z - 0.03) / 0.2) ** 2 > 1.0
        fissure = above_callosum & ((z > 0.0) | (np.abs(y) > 0.4)) & (np.abs(x) < sheet)
        sheet = np.where(fissure, np.abs(x), sheet)
        sheet_depth[fissure] = 1.0

        tissue = np.full(q.shape[1], _WM, dtype=np.uint8)
        grey = (depth < outer_csf + thickness) | (
            (sheet < sulcus_width + thickness) & (depth < sheet_depth + thickness)
        )
        tissue[grey] = _GM
        fluid = (depth < outer_csf) | ((sheet < sulcus_width) & (depth < sheet_depth))
        tissue[fluid] = _CSF

        deep_grey = np.zeros_like(fluid)
        ventricles = np.zeros_like(fluid)
        hippocampus_scale = 1.0 - 0.3 * a
        horn = 0.015 * (1.0 + 2.0 * a)
        for side in (-1.0, 1.0):
            deep_grey |= _ellipsoid(q, (side * 0.13, -0.06, -0.03), (0.07, 0.12, 0.08))
            deep_grey |= _ellipsoid(
                q, (side * 0.2, -0.12, -0.22), np.array([0.04, 0.12, 0.045]) * hippocampus_scale
            )
            # Lateral ventricles arc over the thalamus and diverge posteriorly.
            centre_z = 0.06 - 0.8 * (y + 0.03) ** 2
            centre_x = side * (0.065 + 0.12 * np.maximum(0.0, -y - 0.08))
            ventricles |= (
                ((x - centre_x) / (0.045 * (1.0 + 1.1 * a))) ** 2
                + ((y + 0.03) / (0.24 * (1.0 + 0.25 * a))) ** 2
                + ((z - centre_z) / (0.06 * (1.0 + 0.8 * a))) ** 2
            ) < 1.0
            ventricles |= _ellipsoid(q, (side * 0.23, -0.1, -0.17), (horn, 0.1, horn))
        ventricles |= _ellipsoid(q, (0.0, -0.04, -0.03), (0.012 * (1.0 + a), 0.09, 0.06))
        inside = depth > outer_csf + thickness
        tissue[deep_grey & inside] = _GM
        tissue[ventricles & inside] = _CSF

        tissue[depth < 0.0] = _SKULL
        tissue[depth < -_SKULL_THICKNESS] = _SCALP
        tissue[depth < -_SKULL_THICKNESS - _SCALP_THICKNESS] = _AIR
        return tissue.reshape(slab.shape)


def _render(
    rng: np.random.Generator,
    tissue: np.ndarray,
    grid: _Grid,
    means: np.ndarray,
) -> np.ndarray:
    """Intensities from tissue classes: contrast jitter, blur, bias field, Rician noise."""
    gain = rng.uniform(0.85, 1.15)
    values = means * gain * (1.0 + rng.normal(0.0, 0.03, means.shape))
    values[_AIR] = 0.0
    image = values[tissue]
    # A point-spread function of about one voxel: partial volume at tissue borders.
    image = ndimage.gaussian_filter(image, 0.5, mode="nearest")
    bias = _SmoothField.draw(rng, 4, 0.3)
    slope = rng.normal(0.0, 0.05, 3)
    x, y, z = grid.axes()
    linear = slope[0] * x[:, None, None] + slope[1] * y[None, :, None] + slope[2] * z[None, None, :]
    image *= np.exp(grid.evaluate(bias.on_slab, np.float64) + linear)
    sigma = _NOISE_FRACTION * float(values[1:4].max())
    real = image + rng.normal(0.0, sigma, image.shape)
    imaginary = rng.normal(0.0, sigma, image.shape)
    magnitude = np.sqrt(real * real + imaginary * imaginary)
    return np.clip(np.rint(magnitude), 0, np.iinfo(np.int16).max).astype(np.int16)


def _reorient(data: np.ndarray, affine: np.ndarray, orientation: str) -> tuple[np.ndarray, np.ndarray]:
    """Re-lay an RAS array out in ``orientation`` with the affine that keeps world geometry."""
    transform = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(orientation)))
    new_affine = affine @ inv_ornt_aff(transform, data.shape)
    return np.ascontiguousarray(apply_orientation(data, transform)), new_affine


def make_phantom(
    rng: np.random.Generator,
    size: int = 64,
    diagnosis: str = "CN",
    *,
    participant: Participant | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    orientation: str = "RAS",
) -> Phantom:
    """Generate one subject in memory: tissue labels, T1w, T2w and their affine.

    Args:
        rng: random generator (the subject is a pure function of its state).
        size: field of view in mm along each axis, i.e. voxels per axis at 1 mm.
        diagnosis: ``"CN"`` or ``"AD"``; ignored when ``participant`` is given.
        participant: demographics and disease state; drawn from ``diagnosis`` if omitted.
        spacing: voxel size in mm along the R, A and S axes (e.g. ``(1, 1, 1.5)``).
        orientation: axis code of the stored arrays (``"RAS"``, ``"LAS"``, ``"LPS"``...).

    Raises:
        UsageError: size out of range, bad spacing or orientation code.

    Example:
        >>> phantom = make_phantom(np.random.default_rng(0), size=32, diagnosis="AD")
        >>> phantom.labels.shape, np.unique(phantom.labels).tolist()
        ((32, 32, 32), [0, 1, 2, 3])
    """
    _check_size(size)
    spacing_array = np.asarray(spacing, dtype=np.float64)
    if spacing_array.shape != (3,) or not np.all(spacing_array > 0):
        raise UsageError(f"Bad voxel spacing {tuple(spacing)}.", "Give three positive sizes in mm.")
    code = orientation.upper()
    if sorted(code.translate(str.maketrans("LPI", "RAS"))) != ["A", "R", "S"]:
        raise UsageError(
            f"Bad orientation code {orientation!r}.", "Use three letters such as RAS, LAS or LPS."
        )
    if participant is None:
        participant = draw_participant(rng, diagnosis)
    anatomy = _Anatomy.draw(rng, participant)

    grid = _Grid.centred(size, spacing_array)
    tissue = grid.evaluate(anatomy.tissue, np.uint8)
    t1 = _render(rng, tissue, grid, _T1_MEANS)
    t2 = _render(rng, tissue, grid, _T2_MEANS)
    labels = _TISSUE_TO_LABEL[tissue]
    arrays = []
    for data in (labels, t1, t2):
        reoriented, new_affine = _reorient(data, grid.affine, code)
        arrays.append(reoriented)
    return Phantom(labels=arrays[0], t1=arrays[1], t2=arrays[2], affine=new_affine, participant=participant)


def _nifti_image(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    image = nib.Nifti1Image(data, affine)
    image.header.set_data_dtype(data.dtype)
    image.header.set_xyzt_units("mm", "sec")
    image.header["descrip"] = b"neurodl synthetic phantom"
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return image


def write_nifti_gz(data: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """Write a ``.nii.gz`` atomically and byte-reproducibly (no timestamp or name in the gzip header).

    Example:
        >>> write_nifti_gz(phantom.t1, phantom.affine, Path("sub-001_T1w.nii.gz"))
    """
    raw = _nifti_image(data, affine).to_bytes()
    return write_bytes_atomic(path, gzip.compress(raw, compresslevel=6, mtime=0))


_OUR_FILE = re.compile(r"sub-(\d+)_(T1w|T2w|dseg)\.nii\.gz")


def _prepare_output(out: Path, overwrite: bool, keep: set[str]) -> tuple[str, ...]:
    """Refuse a non-empty folder unless ``overwrite``; then remove a previous cohort's extra subjects."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder.", "Give the name of a new or empty folder.")
    if not out.exists() or not any(out.iterdir()):
        return ()
    if not overwrite:
        raise OutputError(
            f"{out}: folder is not empty; refusing to write a cohort over its contents.",
            "Give a new or empty folder, or add --overwrite to replace the cohort in it.",
        )
    removed = []
    # Only files with our naming pattern are removed, so that participants.tsv stays
    # the complete list of subjects; anything else in the folder is left alone.
    for subject_dir in sorted(out.glob("sub-*")):
        if not subject_dir.is_dir() or subject_dir.name in keep:
            continue
        anat = subject_dir / "anat"
        for image in sorted(anat.glob("*.nii.gz")):
            match = _OUR_FILE.fullmatch(image.name)
            if match and f"sub-{match.group(1)}" == subject_dir.name:
                image.unlink()
                removed.append(str(image.relative_to(out)))
        for folder in (anat, subject_dir):
            if folder.is_dir() and not any(folder.iterdir()):
                shutil.rmtree(folder)
    return tuple(removed)


def _format(value: object) -> str:
    if isinstance(value, float):
        return repr(round(value, 4))
    return str(value)


def _participants_json() -> str:
    import json

    columns = {
        "participant_id": {"Description": "Participant identifier."},
        "diagnosis": {
            "Description": "Clinical diagnosis.",
            "Levels": {"CN": "cognitively normal", "AD": "Alzheimer's disease dementia"},
        },
        "severity": {"Description": "Clinical severity score: 0-1 in CN, 2-10 in AD; higher is worse."},
        "age": {"Description": "Age at scan.", "Units": "year"},
        "sex": {"Description": "Sex.", "Levels": {"M": "male", "F": "female"}},
        "csf_volume_ml": {"Description": "CSF volume counted on the dseg label map.", "Units": "mL"},
        "brain_volume_ml": {
            "Description": "Grey plus white matter volume counted on the dseg label map.",
            "Units": "mL",
        },
        "brain_metabolism": {
            "Description": "Whole-brain glucose metabolism (FDG-PET SUVR-like), lower in AD.",
            "Units": "ratio",
        },
        "t1": {"Description": "T1-weighted image, relative to this file's folder."},
        "t2": {"Description": "T2-weighted image, relative to this file's folder."},
        "dseg": {"Description": "Tissue labels (see dseg.tsv), relative to this file's folder."},
    }
    return json.dumps(columns, indent=2) + "\n"


def _dataset_description(n: int, size: int, seed: int) -> str:
    import json

    description = {
        "Name": "neurodl synthetic brain phantom cohort",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "License": "CC0",
        "GeneratedBy": [
            {
                "Name": "neurodl",
                "Version": __version__,
                "Description": f"neurodl sample-data OUT --n {n} --size {size} --seed {seed}",
            }
        ],
    }
    return json.dumps(description, indent=2) + "\n"


def generate_cohort(
    out: str | Path,
    n: int = 40,
    size: int = 64,
    seed: int = 0,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> CohortSummary:
    """Write a synthetic CN/AD cohort in a BIDS-like layout.

    Writes ``OUT/sub-XXX/anat/sub-XXX_{T1w,T2w,dseg}.nii.gz``, ``participants.tsv``
    (diagnosis, severity, age, sex, biomarkers and relative image paths),
    ``participants.json``, ``dseg.tsv`` and ``dataset_description.json``. Diagnoses
    are balanced (one more CN when ``n`` is odd); orientation and voxel size vary
    between subjects. The same arguments give byte-identical files.

    Args:
        out: folder to create (or an empty one).
        n: number of participants.
        size: voxels per axis at 1 mm isotropic (the field of view in mm).
        seed: random seed.
        overwrite: write into a non-empty folder, replacing a previous cohort there.
        progress: called as ``progress(done, total)`` once the arguments are checked
            (``done == 0``) and after each subject.

    Raises:
        UsageError: ``n`` or ``size`` out of range, negative seed.
        OutputError: ``out`` is a file, or a non-empty folder without ``overwrite``.

    Example:
        >>> summary = generate_cohort("sample_data", n=40, size=48, seed=0)
        >>> summary.count("AD"), summary.manifest
        (20, PosixPath('sample_data/participants.tsv'))
    """
    started = time.perf_counter()
    out = Path(out)
    if n < MIN_SUBJECTS:
        raise UsageError(
            f"--n {n} is too small: a cohort needs at least {MIN_SUBJECTS} participants (one CN, one AD).",
            "Use --n 2 or more (the default, 40, suits training examples).",
        )
    _check_size(size)
    if seed < 0:
        raise UsageError(f"--seed {seed} is negative.", "Use a seed of 0 or more.")
    width = max(3, len(str(n)))
    ids = [f"sub-{i + 1:0{width}d}" for i in range(n)]
    removed = _prepare_output(out, overwrite, keep=set(ids))

    streams = np.random.SeedSequence(seed).spawn(n + 1)
    cohort_rng = np.random.default_rng(streams[0])
    diagnoses = cohort_rng.permutation(["CN"] * (n - n // 2) + ["AD"] * (n // 2))
    seen = dict.fromkeys(DIAGNOSES, 0)
    if progress is not None:
        progress(0, n)

    records = []
    for i, (participant_id, diagnosis) in enumerate(zip(ids, diagnoses, strict=True)):
        orientation, spacing = PROTOCOLS[seen[diagnosis] % len(PROTOCOLS)]
        seen[diagnosis] += 1
        phantom = make_phantom(
            np.random.default_rng(streams[i + 1]),
            size,
            str(diagnosis),
            spacing=spacing,
            orientation=orientation,
        )
        anat = Path(participant_id) / "anat"
        paths = {
            kind: (anat / f"{participant_id}_{suffix}.nii.gz").as_posix()
            for kind, suffix in (("t1", "T1w"), ("t2", "T2w"), ("dseg", "dseg"))
        }
        write_nifti_gz(phantom.t1, phantom.affine, out / paths["t1"])
        write_nifti_gz(phantom.t2, phantom.affine, out / paths["t2"])
        write_nifti_gz(phantom.labels, phantom.affine, out / paths["dseg"])
        p = phantom.participant
        records.append(
            SubjectRecord(
                participant_id=participant_id,
                diagnosis=p.diagnosis,
                severity=p.severity,
                age=p.age,
                sex=p.sex,
                csf_volume_ml=round(phantom.csf_volume_ml, 4),
                brain_volume_ml=round(phantom.brain_volume_ml, 4),
                brain_metabolism=p.brain_metabolism,
                t1=paths["t1"],
                t2=paths["t2"],
                dseg=paths["dseg"],
                orientation=orientation,
                voxel_size=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
                shape=phantom.shape,
            )
        )
        logger.debug("%s: %s %s %s", participant_id, diagnosis, orientation, phantom.shape)
        if progress is not None:
            progress(i + 1, n)

    rows = ["\t".join(PARTICIPANT_COLUMNS)]
    for record in records:
        rows.append("\t".join(_format(getattr(record, c)) for c in PARTICIPANT_COLUMNS))
    write_text_atomic(out / "participants.tsv", "\n".join(rows) + "\n")
    write_text_atomic(out / "participants.json", _participants_json())
    lookup = ["index\tname\tdescription"] + [
        f"{i}\t{name}\t{full}"
        for i, name, full in (
            (1, "CSF", "cerebrospinal fluid"),
            (2, "GM", "grey matter"),
            (3, "WM", "white matter"),
        )
    ]
    write_text_atomic(out / "dseg.tsv", "\n".join(lookup) + "\n")
    write_text_atomic(out / "dataset_description.json", _dataset_description(n, size, seed))
    return CohortSummary(
        out=out,
        n=n,
        size=size,
        seed=seed,
        subjects=tuple(records),
        seconds=time.perf_counter() - started,
        removed=removed,
    )
