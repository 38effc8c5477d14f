"""How long a BIDS dataset root takes to become a manifest: neurodl's reader vs pybids.

Generates a dataset of N subjects x 2 sessions with a T1w and a T2w per session
(``.nii.gz`` plus a JSON sidecar each, a ``sessions.tsv`` per subject and a
``participants.tsv``), then times, alternating, neurodl's reader (the scan, the
resolved table with the tables joined, and ``load_manifest`` as every command
calls it) and, when it is installed, pybids' ``BIDSLayout`` (with and without
metadata indexing) followed by ``get(suffix="T1w")``. Nothing is asserted.

    python benchmarks/bids_index.py                  # 1,000 subjects (~1 min with pybids)
    python benchmarks/bids_index.py --subjects 100   # quick

Results go to ``benchmarks/results/bids_index.json`` and are summarised in
``docs/benchmarks.md`` and ``docs/data.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path


def generate(root: Path, subjects: int) -> int:
    """Write the dataset; the images are stubs (the readers only look at names). Returns the file count."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "timing", "BIDSVersion": "1.9.0"}))
    stub = gzip.compress(b"\0" * 352)
    rows = ["participant_id\tdiagnosis\tage"]
    files = 2
    for i in range(1, subjects + 1):
        sub = f"sub-{i:04d}"
        rows.append(f"{sub}\t{'AD' if i % 2 else 'CN'}\t{60 + i % 30}")
        sessions = ["session_id\tage"]
        for ses in ("01", "02"):
            anat = root / sub / f"ses-{ses}" / "anat"
            anat.mkdir(parents=True, exist_ok=True)
            for suffix in ("T1w", "T2w"):
                (anat / f"{sub}_ses-{ses}_{suffix}.nii.gz").write_bytes(stub)
                (anat / f"{sub}_ses-{ses}_{suffix}.json").write_text('{"RepetitionTime": 2.3}')
                files += 2
            sessions.append(f"ses-{ses}\t{60 + i % 30 + int(ses)}")
        (root / sub / f"{sub}_sessions.tsv").write_text("\n".join(sessions) + "\n")
        files += 1
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return files


def time_neurodl(root: Path) -> dict[str, float]:
    from neurodl.io.bids import resolve_bids, scan_bids
    from neurodl.io.manifest import load_manifest

    start = time.perf_counter()
    files = scan_bids(root)
    scanned = time.perf_counter()
    resolve_bids(root, ["T1w", "T2w"], files=files)
    resolved = time.perf_counter()
    manifest = load_manifest(root, ["T1w", "T2w"], "diagnosis")
    loaded = time.perf_counter()
    return {
        "scan_s": scanned - start,
        "resolve_s": resolved - scanned,
        "load_manifest_s": loaded - resolved,
        "rows": len(manifest),
    }


def time_pybids(root: Path, index_metadata: bool) -> dict[str, float] | None:
    try:
        from bids import BIDSLayout, BIDSLayoutIndexer
    except ImportError:
        return None
    start = time.perf_counter()
    layout = BIDSLayout(root, indexer=BIDSLayoutIndexer(validate=False, index_metadata=index_metadata))
    built = time.perf_counter()
    found = layout.get(suffix="T1w", extension=[".nii", ".nii.gz"])
    return {"layout_s": built - start, "get_s": time.perf_counter() - built, "rows": len(found)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bids_index.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        n_files = generate(root, args.subjects)
        runs: dict[str, list[dict[str, float]]] = {"neurodl": [], "pybids": [], "pybids_metadata": []}
        for _ in range(args.repeats):  # alternating, so a busy machine slows every reader alike
            runs["neurodl"].append(time_neurodl(root))
            for key, metadata in (("pybids", False), ("pybids_metadata", True)):
                result = time_pybids(root, metadata)
                if result is not None:
                    runs[key].append(result)

    def median(key: str, field: str) -> float | None:
        values = [r[field] for r in runs[key]]
        return statistics.median(values) if values else None

    summary = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "subjects": args.subjects,
        "images": 4 * args.subjects,
        "files": n_files,
        "neurodl_scan_s": median("neurodl", "scan_s"),
        "neurodl_resolve_s": median("neurodl", "resolve_s"),
        "neurodl_load_manifest_s": median("neurodl", "load_manifest_s"),
        "pybids_layout_s": median("pybids", "layout_s"),
        "pybids_layout_with_metadata_s": median("pybids_metadata", "layout_s"),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{args.subjects} subjects, {summary['images']} images, {n_files} files")
    for label, key in [
        ("neurodl: scan", "neurodl_scan_s"),
        ("neurodl: resolve (tables joined)", "neurodl_resolve_s"),
        ("neurodl: load_manifest (what a command runs)", "neurodl_load_manifest_s"),
        ("pybids BIDSLayout, no metadata", "pybids_layout_s"),
        ("pybids BIDSLayout, defaults (metadata)", "pybids_layout_with_metadata_s"),
    ]:
        value = summary[key]
        print(f"{label:48s} {'not installed' if value is None else f'{value:.2f} s'}")


if __name__ == "__main__":
    main()
