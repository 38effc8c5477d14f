"""A tune directory explained in one HTML page, and its trials as run directories for ``compare``."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from neurodl.io.atomic import write_text_atomic
from neurodl.tune.results import TUNE_FILE, TUNE_KIND

REPORT_FILE = "report.html"
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; color: #222; }
table { border-collapse: collapse; font-size: 0.9rem; } td, th { padding: 0.2rem 0.6rem; border-bottom: 1px solid #ddd; }
th { text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.best { background: #e8f5e9; font-weight: bold; } figure { display: inline-block; margin: 0.5rem; }
img { max-width: 34rem; } code { background: #f4f4f4; padding: 0.1rem 0.3rem; }
"""


def read_tune(path: str | Path) -> dict[str, Any] | None:
    """The ``tune.json`` of a tune directory, or None when ``path`` is not one."""
    file = Path(path) / TUNE_FILE
    if not file.is_file():
        return None
    try:
        summary = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return summary if isinstance(summary, dict) and summary.get("kind") == TUNE_KIND else None


def trial_runs(path: str | Path) -> list[Path]:
    """The trials' run directories of a tune directory, best first (as in ``trials.csv``)."""
    import pandas as pd  # heavy: only for a tune directory

    folder = Path(path)
    table = folder / "trials.csv"
    if not table.is_file():
        return []
    runs = pd.read_csv(table)["run"].dropna().astype(str)
    return [folder / run for run in runs if (folder / run / "config.json").is_file()]


def _image(path: Path, caption: str) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def build_tune_report(path: str | Path) -> str:
    """The HTML of a tune directory: the study, the best trial and its options, every trial, the plots."""
    import pandas as pd  # heavy: only when a report is written

    folder = Path(path)
    summary = read_tune(folder)
    if summary is None:
        raise ValueError(f"{folder} is not a tune directory")
    monitor = summary["monitor"]
    best = summary.get("best") or {}
    parts = [
        f"<h1>Hyper-parameter search: {html.escape(summary['task'])}, study {html.escape(summary['study'])}</h1>",
        f"<p>Objective: <b>{html.escape(monitor)}</b> ({summary['direction']}), the validation monitor at each trial's best epoch; "
        f"input <code>{html.escape(summary['input'])}</code>; storage <code>{html.escape(summary['storage'])}</code>; "
        f"trials: {html.escape(', '.join(f'{n} {s}' for s, n in summary['trials'].items()))}.</p>",
    ]
    if best:
        parts.append(
            f"<h2>Best: trial {best['trial']}, {html.escape(monitor)} = {best['value']:.6g}</h2>"
            f"<p>Run directory <code>best/</code> ({html.escape(best['run'])}); its options in "
            f"<code>best_params.yaml</code>: <code>neurodl {html.escape(summary['task'])} train ... --config best_params.yaml</code>.</p>"
        )
        rows = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in best["params"].items()
        )
        parts.append(f"<table>{rows}</table>")
    parts.append("<h2>Search space</h2><table>")
    parts += [
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary["space"].items()
    ]
    parts.append("</table>")
    parts.append("<h2>Plots</h2>")
    parts.append(_image(folder / "optimization_history.png", "optimisation history"))
    parts.append(_image(folder / "param_importances.png", "hyper-parameter importances"))
    table = folder / "trials.csv"
    if table.is_file():
        frame = pd.read_csv(table)
        header = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
        body = []
        for _, row in frame.iterrows():
            cells = "".join(
                f'<td class="n">{v:.4g}</td>' if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>"
                for v in row
            )
            chosen = ' class="best"' if best and row["trial"] == best["trial"] else ""
            body.append(f"<tr{chosen}>{cells}</tr>")
        parts.append(f"<h2>Trials, best first</h2><table><tr>{header}</tr>{''.join(body)}</table>")
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>neurodl tune: {html.escape(summary['study'])}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n{''.join(parts)}\n</body>\n</html>\n"
    )


def write_tune_report(path: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of the tune directory ``path`` (default ``DIR/report.html``), atomically."""
    target = Path(out) if out is not None else Path(path) / REPORT_FILE
    return write_text_atomic(target, build_tune_report(path))
