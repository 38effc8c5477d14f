"""A small BIDS dataset with the cases a real one has: sessions, runs, acquisitions, derivatives,
a subject missing from participants.tsv, a participants.tsv row without images, a .bidsignore."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from neurodl_testing import make_nifti

# participant -> diagnosis (participants.tsv); sub-09 has no images, sub-07 has images but no row.
DIAGNOSIS = {
    "01": "AD",
    "02": "CN",
    "03": "AD",
    "04": "CN",
    "05": "AD",
    "06": "CN",
    "08": "AD",
    "09": "CN",
    "10": "CN",
}
# T1w images a BIDS reader must find (relative paths); sub-04 also has an acq-spgr one.
T1W = [
    "sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz",
    "sub-01/ses-02/anat/sub-01_ses-02_T1w.nii.gz",
    "sub-02/anat/sub-02_run-1_T1w.nii.gz",
    "sub-02/anat/sub-02_run-2_T1w.nii.gz",
    "sub-03/ses-01/anat/sub-03_ses-01_T1w.nii.gz",
    "sub-03/ses-02/anat/sub-03_ses-02_T1w.nii.gz",
    "sub-04/anat/sub-04_acq-mprage_T1w.nii.gz",
    "sub-05/anat/sub-05_T1w.nii.gz",
    "sub-06/anat/sub-06_T1w.nii.gz",
    "sub-07/anat/sub-07_T1w.nii.gz",
    "sub-08/anat/sub-08_T1w.nii.gz",
    "sub-10/anat/sub-10_T1w.nii.gz",
]
# Images the reader must skip.
SKIPPED = [
    "derivatives/fmriprep/sub-01/anat/sub-01_desc-preproc_T1w.nii.gz",
    "sourcedata/sub-01/anat/sub-01_T1w.nii.gz",
    "sub-05/.hidden/sub-05_T1w.nii.gz",
    "sub-06/extra/sub-06_T1w.nii.gz",  # .bidsignore: extra/
    "sub-08/anat/sub-08_acq-defaced_T1w.nii.gz",  # .bidsignore: *_acq-defaced_*
]


def _volume(seed: int, ad: bool) -> np.ndarray:
    """A 16^3 'head' whose dark core (ventricles) is larger for AD, so a classifier has something to learn."""
    rng = np.random.default_rng(seed)
    grid = np.indices((16, 16, 16)).astype(np.float32) - 7.5
    radius = np.sqrt((grid**2).sum(axis=0))
    data = np.where(radius < 7, 100.0, 0.0) + rng.normal(0, 5, (16, 16, 16))
    data[radius < (3.5 if ad else 1.5)] = 20.0
    return data.astype(np.float32)


def make_bids_dataset(root: Path) -> Path:
    """Write the dataset under ``root`` and return ``root``.

    Every T1w has a T2w and a dseg (labels 0-2) of the same session and run, except
    sub-10 (T1w only); sub-04 also has an ``acq-spgr`` T1w; sub-01 has a sessions.tsv
    with a per-session age.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "test", "BIDSVersion": "1.9.0"}))
    rows = ["participant_id\tdiagnosis\tage"]
    rows += [f"sub-{p}\t{dx}\t{60 + int(p)}" for p, dx in DIAGNOSIS.items()]
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    (root / "sub-01").mkdir()
    (root / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tage\nses-01\t70\nses-02\t72.5\n")
    (root / ".bidsignore").write_text("# not raw data\nextra/\n*_acq-defaced_*\n")
    paths = [*T1W, "sub-04/anat/sub-04_acq-spgr_T1w.nii.gz"]
    for i, rel in enumerate(paths):
        participant = rel.split("/")[0].removeprefix("sub-")
        ad = DIAGNOSIS.get(participant) == "AD"
        t1 = _volume(i, ad)
        make_nifti(root / rel, t1)
        if participant != "10":
            make_nifti(root / rel.replace("_T1w", "_T2w"), 150.0 - t1)
            mask = np.digitize(t1, [50.0, 90.0]).astype(np.uint8)
            make_nifti(root / rel.replace("_T1w", "_dseg"), mask, dtype=np.uint8)
    for i, rel in enumerate(SKIPPED):
        make_nifti(root / rel, _volume(100 + i, False))
    return root
