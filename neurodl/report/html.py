"""The per-run HTML report: one self-contained page that explains a run.

Every image is embedded as a base64 ``data:`` URI and the styles are inline: the
file needs no network, no JavaScript and no other file, so it can be mailed,
archived or opened on a machine without neurodl. Each section appears only when
the run holds its data, so the report works for every task (including ones added
later: unknown metrics and figures are still shown) and for a run whose training
did not finish.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from neurodl import __version__
from neurodl.errors import NeurodlError
from neurodl.io.atomic import write_text_atomic
from neurodl.report.compare import option_text
from neurodl.report.summary import RunSummary, format_value, scalar_metrics, summarize_run

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Figures under sub-folders (evaluate --out, predict --preview...): enough to see, not a gallery.
MAX_PREVIEWS = 12
MAX_IMAGE_BYTES = 5 * 1024 * 1024

_FIGURES = {
    "roc": "ROC curve",
    "confusion_matrix": "Confusion matrix",
    "predicted_vs_true": "Predicted vs true",
    "latent_space": "Latent space (first two principal components)",
}
_SPLITS = {
    "validation_": "validation split",
    "oof_": "out-of-fold predictions",
    "test_": "held-out test participants",
}
_GROUPS = {"train": "Training engine", "images": "Images and preprocessing"}

_CSS = """
body { font: 15px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1d2329; background: #f6f7f9; margin: 0; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 26px; margin: 4px 0 2px; }
h2 { font-size: 19px; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 2px solid #e3e6ea; }
h3 { font-size: 15px; margin: 18px 0 6px; color: #3d4650; }
.subtitle { color: #56616c; margin: 0 0 10px; }
.banner { padding: 10px 14px; border-radius: 6px; margin: 12px 0; }
.banner.warn { background: #fff4e0; border-left: 5px solid #e69500; }
.banner.ok { background: #eaf6ec; border-left: 5px solid #2e9e4f; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 14px; }
th, td { border: 1px solid #dde1e6; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { width: 14em; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 8px 0 4px; }
.card { border: 1px solid #dde1e6; border-radius: 6px; padding: 8px 14px; min-width: 110px; }
.card .value { font-size: 21px; font-weight: 600; }
.card .name { color: #56616c; font-size: 13px; }
.blocks { display: flex; flex-wrap: wrap; gap: 8px 36px; align-items: flex-start; }
.figures { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
figure { margin: 0; max-width: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e6ea; }
figure.small img { max-width: 520px; }
figcaption { color: #56616c; font-size: 13px; margin-top: 3px; }
code { background: #f0f2f5; padding: 1px 4px; border-radius: 3px; }
.muted { color: #56616c; }
footer { margin-top: 36px; color: #8a949e; font-size: 12px; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric_from: int = 1) -> str:
    """An HTML table; cells from column ``numeric_from`` on are right-aligned."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{_e(c)}</td>' if j >= numeric_from else f"<td>{_e(c)}</td>"
            for j, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _key_values(pairs: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in pairs)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def _image(data: bytes, caption: str, *, small: bool = False) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    size = ' class="small"' if small else ""
    return (
        f'<figure{size}><img src="data:image/png;base64,{encoded}" alt="{_e(caption)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _png_file(path: Path) -> bytes | None:
    """The bytes of a PNG file, or None for a file too large, unreadable or not a PNG."""
    try:
        if path.stat().st_size > MAX_IMAGE_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    return data if data.startswith(PNG_SIGNATURE) else None


def _figure_png(figure: Any) -> bytes:
    import matplotlib.pyplot as plt  # heavy: only when a figure is drawn

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _caption(stem: str) -> str:
    """``test_roc`` -> ``ROC curve (held-out test participants)``; unknown names are spelled out."""
    for prefix, split in _SPLITS.items():
        if stem.startswith(prefix) and stem[len(prefix) :] in _FIGURES:
            return f"{_FIGURES[stem[len(prefix) :]]} ({split})"
    return _FIGURES.get(stem, stem.replace("_", " "))


# -- sections ------------------------------------------------------------------------------------


def _title(summary: RunSummary) -> str:
    options = summary.options
    facts = [f"model <b>{_e(summary.model)}</b>"]
    if summary.target:
        facts.append(f"predicts <b>{_e(summary.target)}</b>")
    if options.get("input"):
        facts.append(f"trained on <code>{_e(options['input'])}</code>")
    created = summary.config.get("created", "")
    parts = [
        f"<h1>{_e(summary.task)} run: {_e(summary.name)}</h1>",
        f'<p class="subtitle">{", ".join(facts)}</p>',
        f'<p class="subtitle">Run directory <code>{_e(summary.path.resolve())}</code>'
        + (f"; created {_e(created)}" if created else "")
        + "</p>",
    ]
    if summary.finished:
        test = (summary.metrics or {}).get("test")
        held_out = (
            f"held-out test participants ({test['participants']}, never trained or selected on); "
            if isinstance(test, dict) and "participants" in test
            else ""
        )
        if summary.evaluation or held_out:
            parts.append(f'<div class="banner ok">Evaluation: {_e(held_out + summary.evaluation)}.</div>')
    else:
        epochs = len(summary.history)
        done = f"{epochs} epochs are saved in its checkpoints" if epochs else "no epoch was completed"
        parts.append(
            '<div class="banner warn"><b>Training did not finish</b> (no <code>metrics.json</code>): '
            f"{done}. This report shows what the run holds so far. Continue it with "
            f"<code>neurodl {_e(summary.task)} train --resume --out {_e(summary.path)}</code>.</div>"
        )
    return "\n".join(parts)


def _headline(summary: RunSummary) -> str:
    values, stds = summary.headline()
    if not values:
        return ""
    cards = "".join(
        f'<div class="card"><div class="value">{_e(format_value(v, stds.get(k)))}</div>'
        f'<div class="name">{_e(k)}</div></div>'
        for k, v in values.items()
    )
    metrics = summary.metrics or {}
    if isinstance(metrics.get("test"), dict):
        source = "on the held-out test participants"
    elif isinstance(metrics.get("mean_std"), dict):
        source = f"mean ± sd over {len(metrics.get('folds') or [])} cross-validation folds"
    else:
        source = "on the validation split, at the best epoch"
    best = f"best epoch {summary.best_epoch}" if summary.best_epoch is not None else ""
    run = (
        f"{summary.epochs_run} epoch{'' if summary.epochs_run == 1 else 's'} for the final model"
        if summary.epochs_run is not None
        else ""
    )
    note = "; ".join(x for x in (f"Headline metrics {source}", best, run) if x)
    return f'<div class="cards">{cards}</div><p class="muted">{_e(note)}.</p>'


def _resolved_option(name: str, value: Any, resolved: dict[str, Any]) -> str:
    """An option as typed; an empty spacing/size shows what the run chose from its training images."""
    chosen = resolved.get(name) if name in ("spacing", "size") and not value else None
    if chosen:
        unit = " mm" if name == "spacing" else ""
        return f"{'x'.join(f'{float(c):g}' for c in chosen)}{unit} (from the training images)"
    return option_text(name, value)


def _configuration(summary: RunSummary) -> str:
    options = dict(summary.config.get("options") or {})
    if not options:
        return ""
    digest = options.pop("input_sha256", None)
    plain = [(k, v) for k, v in options.items() if not isinstance(v, dict)]
    groups = [(k, v) for k, v in options.items() if isinstance(v, dict)]
    rows = [(k, str(v) if k == "input" else option_text(k, v)) for k, v in plain]
    if digest:
        rows.append(("input SHA-256", str(digest)))
    blocks = [f"<div><h3>Task and model</h3>{_key_values(rows)}</div>"]
    resolved = (
        ((summary.preprocessing or {}).get("images") or {}) if isinstance(summary.preprocessing, dict) else {}
    )
    for name, values in groups:
        blocks.append(
            f"<div><h3>{_e(_GROUPS.get(name, name))}</h3>"
            + _key_values(
                (k, _resolved_option(k, v, resolved if name == "images" else {})) for k, v in values.items()
            )
            + "</div>"
        )
    return (
        '<h2>Configuration</h2><p class="muted">The resolved options (config.json): built-in defaults, '
        "then the --config file, then the flags typed.</p>"
        f'<div class="blocks">{"".join(blocks)}</div>'
    )


def _input_table(summary: RunSummary, participant_column: str) -> Any:
    """The table the run was trained on, or None when it has moved or cannot be read."""
    source = summary.options.get("input")
    if not source or not Path(str(source)).is_file():
        return None
    from neurodl.io.tables import read_table

    try:
        return read_table(str(source), text_columns=[participant_column] if participant_column else [])
    except NeurodlError as exc:
        log.debug("input table not read: %s", exc)
        return None


def _data(summary: RunSummary) -> str:
    splits = summary.splits or {}
    sets: list[tuple[str, list[str]]] = []
    for key, title in (("train", "training"), ("validation", "validation"), ("test", "held-out test")):
        if isinstance(splits.get(key), list) and splits[key]:
            sets.append((title, [str(p) for p in splits[key]]))
    for fold in splits.get("folds") or []:
        if isinstance(fold, dict) and isinstance(fold.get("test"), list):
            sets.append((f"fold {fold.get('fold', '?')} (held out)", [str(p) for p in fold["test"]]))
    if not sets:
        return ""
    everyone = sorted({p for _, ids in sets for p in ids})
    sets.append(("all", everyone))
    column = str(splits.get("participant_column") or splits.get("group_column") or "")
    table = _input_table(summary, column)
    unit = "images" if summary.options.get("image") else "rows"
    target = summary.target
    header = ["split", "participants"]
    rows: list[list[Any]] = []
    classes: list[str] = []
    numeric = False
    if table is not None and column in table.columns:
        ids = table[column].astype(str)
        label = table[target] if target in table.columns else None
        if label is not None:
            from neurodl.io.manifest import looks_like_nifti_column

            if looks_like_nifti_column(label.dropna().astype(str)):
                label = None  # a mask column: no classes to count
        if label is not None:
            values = label.dropna()
            numeric = values.dtype.kind in "fiu" and values.nunique() > 10
            if not numeric:
                classes = summary.classes or sorted(values.astype(str).unique().tolist())
        header.append(unit)
        header += [f"{target} = {c}" for c in classes]
        if numeric:
            header.append(f"{target} (mean ± sd)")
        for name, members in sets:
            chosen = ids.isin(members)
            row: list[Any] = [name, len(members), int(chosen.sum())]
            if label is not None and not numeric:
                counts = label[chosen].dropna().astype(str).value_counts()
                row += [int(counts.get(c, 0)) for c in classes]
            if label is not None and numeric:
                selected = label[chosen].dropna().astype(float)
                row.append(
                    format_value(float(selected.mean()), float(selected.std())) if len(selected) else "—"
                )
            rows.append(row)
    else:
        rows = [[name, len(members)] for name, members in sets]
    note = f"Participants (column <code>{_e(column)}</code>) per split, from splits.json" + (
        f"; {unit} and classes counted in <code>{_e(summary.options.get('input'))}</code>."
        if table is not None
        else " (the input table is not available to count rows and classes)."
    )
    return "\n".join(["<h2>Data</h2>", f'<p class="muted">{note}</p>', _table(header, rows)])


def _learning_curves(summary: RunSummary) -> str:
    run_file = summary.path / "learning_curves.png"
    data = _png_file(run_file) if run_file.is_file() else None
    source = "learning_curves.png"
    if data is None and summary.history and all("train_loss" in r and "epoch" in r for r in summary.history):
        from neurodl.report import plots  # heavy (matplotlib): only when curves are redrawn

        try:
            data = _figure_png(
                plots.learning_curves(summary.history, title=f"{summary.task}: {summary.model}")
            )
            source = f"drawn from {summary.history_source}"
        except (KeyError, ValueError, TypeError) as exc:
            log.debug("learning curves not drawn: %s", exc)
    if data is None:
        return ""
    epochs = {(r.get("fold", 0), r.get("epoch")) for r in summary.history}
    caption = f"Loss and validation metrics per epoch ({source}; {len(epochs)} epochs recorded)"
    return "\n".join(["<h2>Learning curves</h2>", f'<div class="figures">{_image(data, caption)}</div>'])


def _metric_rows(values: dict[str, Any], stds: dict[str, Any] | None = None) -> list[list[str]]:
    return [[k, format_value(v, (stds or {}).get(k))] for k, v in scalar_metrics(values).items()]


def _confusion(matrix: Any, classes: Sequence[str], split: str) -> str:
    if not (isinstance(matrix, list) and matrix and all(isinstance(r, list) for r in matrix)):
        return ""
    names = list(classes) if len(classes) == len(matrix) else [str(i) for i in range(len(matrix))]
    rows = [[f"true {names[i]}", *row] for i, row in enumerate(matrix)]
    return f"<h3>Confusion matrix ({_e(split)})</h3>" + _table(["", *[f"predicted {n}" for n in names]], rows)


def _metrics(summary: RunSummary) -> str:
    metrics = summary.metrics
    if not metrics:
        return ""
    parts = ["<h2>Metrics</h2>", _headline(summary), '<div class="blocks">']
    handled = {"evaluation", "validation", "mean_std", "folds", "out_of_fold", "test"}
    validation = metrics.get("validation")
    if isinstance(validation, dict):
        best = metrics.get("best_epoch")
        parts.append(
            f"<div><h3>Validation split{f' (best epoch {best})' if best else ''}</h3>"
            + _table(["metric", "value"], _metric_rows(validation))
            + _confusion(validation.get("confusion_matrix"), summary.classes, "validation")
            + "</div>"
        )
    folds = [f for f in metrics.get("folds") or [] if isinstance(f, dict)]
    summary_std: dict[str, Any] = metrics["mean_std"] if isinstance(metrics.get("mean_std"), dict) else {}
    if folds:
        names = list(summary_std) or list(scalar_metrics(folds[0]))
        if "best_epoch" in names:
            names = [n for n in names if n != "best_epoch"] + ["best_epoch"]
        oof: dict[str, Any] = metrics["out_of_fold"] if isinstance(metrics.get("out_of_fold"), dict) else {}
        header = ["metric", *[f"fold {i}" for i in range(1, len(folds) + 1)], "mean ± sd"]
        header += ["out-of-fold"] if oof else []
        rows = []
        for name in names:
            stats = summary_std.get(name) or {}
            row = [name, *[format_value(f.get(name)) for f in folds]]
            row.append(format_value(stats.get("mean"), stats.get("std")) if stats else "—")
            if oof:
                row.append(format_value(oof.get(name)) if name in oof else "—")
            rows.append(row)
        parts.append(
            f"<div><h3>Cross-validation: {len(folds)} folds</h3>"
            '<p class="muted">Each fold is scored on participants it never saw; out-of-fold pools '
            "every fold's predictions into one score.</p>" + _table(header, rows) + "</div>"
        )
        if oof:
            parts.append(
                f"<div>{_confusion(oof.get('confusion_matrix'), summary.classes, 'out-of-fold')}</div>"
            )
    test = metrics.get("test")
    if isinstance(test, dict):
        counts = ", ".join(f"{test[k]} {k}" for k in ("participants", "images", "rows") if k in test)
        parts.append(
            f"<div><h3>Held-out test{f' ({counts})' if counts else ''}</h3>"
            + _table(["metric", "value"], _metric_rows(test))
            + _confusion(test.get("confusion_matrix"), summary.classes, "test")
            + "</div>"
        )
    for key, value in metrics.items():
        if key in handled:
            continue
        if isinstance(value, dict) and scalar_metrics(value):
            parts.append(
                f"<div><h3>{_e(key.replace('_', ' '))}</h3>"
                + _table(["metric", "value"], _metric_rows(value))
                + "</div>"
            )
    parts.append("</div>")
    facts = [
        (k.replace("_", " "), format_value(v))
        for k, v in metrics.items()
        if k not in handled | {"best_epoch", "final_model_epochs"} and not isinstance(v, dict | list)
    ]
    if facts:
        parts.append(_key_values(facts))
    return "\n".join(p for p in parts if p)


def _figures(summary: RunSummary) -> str:
    figures = []
    order = list(_SPLITS)
    for path in sorted(
        summary.path.glob("*.png"),
        key=lambda p: (next((i for i, x in enumerate(order) if p.name.startswith(x)), len(order)), p.name),
    ):
        if path.name == "learning_curves.png" or path.name.startswith("."):
            continue
        data = _png_file(path)
        if data is not None:
            figures.append(_image(data, f"{_caption(path.stem)} — {path.name}"))
    if not figures:
        return ""
    return "\n".join(["<h2>Figures</h2>", f'<div class="figures">{"".join(figures)}</div>'])


def _input_preview(summary: RunSummary) -> str:
    """Three slices of the first input image (with the mask over it, for a segmentation)."""
    options = summary.options
    columns = options.get("image")
    if not isinstance(columns, list) or not columns:
        return ""
    column = str(options.get("participant", "participant_id"))
    table = _input_table(summary, column)
    if table is None or str(columns[0]) not in table.columns or not len(table):
        return ""
    root = Path(str(options["input"])).parent
    row = table.iloc[0]
    try:
        from neurodl.io.nifti import load_volume
        from neurodl.report.slices import orthogonal_slices

        image = load_volume(root / str(row[columns[0]]))
        overlay = None
        mask = options.get("mask")
        if mask and mask in table.columns and isinstance(row[mask], str):
            labels = load_volume(root / row[mask], dtype=None)
            overlay = labels.data if labels.shape == image.shape else None
        who = str(row[column]) if column in table.columns else Path(str(row[columns[0]])).name
        label = summary.target if summary.target in table.columns and not mask else ""
        if label and str(row[label]).lower().endswith((".nii", ".nii.gz")):
            label = ""  # an image target (translate): its path says nothing in a title
        title = f"{who} ({columns[0]})" + (f", {label} = {row[label]}" if label else "")
        named = ((summary.preprocessing or {}).get("labels") or {}) if overlay is not None else {}
        names = (
            dict(zip((int(v) for v in named["values"]), (str(n) for n in named["names"]), strict=False))
            if isinstance(named, dict) and "values" in named and "names" in named
            else None
        )
        data = _figure_png(
            orthogonal_slices(image, overlay, title=title, labels=overlay is not None, label_names=names)
        )
    except (NeurodlError, OSError, ValueError) as exc:
        log.debug("input preview not drawn: %s", exc)
        return ""
    caption = f"First input image of the manifest, as stored (before preprocessing): {who}"
    return _image(data, caption + (" with its label map" if overlay is not None else ""))


def _previews(summary: RunSummary) -> str:
    figures = [_input_preview(summary)] if summary.options.get("image") else []
    found = sorted(
        p
        for p in summary.path.rglob("*.png")
        if p.parent != summary.path and "checkpoints" not in p.relative_to(summary.path).parts
    )
    # Evenly spaced, first and last included: of per-epoch previews, the last epochs matter most.
    step = (len(found) - 1) / (MAX_PREVIEWS - 1) if len(found) > MAX_PREVIEWS else 1
    shown = [found[round(i * step)] for i in range(min(len(found), MAX_PREVIEWS))]
    for path in shown:
        data = _png_file(path)
        if data is not None:
            figures.append(_image(data, str(path.relative_to(summary.path)), small=True))
    figures = [f for f in figures if f]
    if not figures:
        return ""
    more = (
        f'<p class="muted">{len(found) - MAX_PREVIEWS} more PNG files in sub-folders are not shown '
        "(evenly spaced ones are).</p>"
        if len(found) > MAX_PREVIEWS
        else ""
    )
    return "\n".join(["<h2>Previews</h2>", f'<div class="figures">{"".join(figures)}</div>', more])


def _environment(summary: RunSummary) -> str:
    environment = dict(summary.config.get("environment") or {})
    device = summary.options.get("device")
    rows = list(environment.items())
    if device is not None and "device" not in environment:
        rows.append(("device (requested)", device))
    precision = summary.options.get("precision")
    if precision:
        rows.append(("precision", precision))
    if not rows:
        return ""
    return "\n".join(
        ["<h2>Environment</h2>", '<p class="muted">Recorded when the run started.</p>', _key_values(rows)]
    )


def _files(summary: RunSummary) -> str:
    rows = []
    for path in sorted(summary.path.iterdir()):
        if path.name.startswith(".") or path.name == REPORT_FILE:
            continue
        if path.is_dir():
            count = sum(1 for p in path.rglob("*") if p.is_file())
            rows.append([f"{path.name}/", f"{count} file" if count == 1 else f"{count} files"])
        else:
            rows.append([path.name, _size(path.stat().st_size)])
    return "\n".join(["<h2>Files</h2>", _table(["file", "size"], rows)]) if rows else ""


def _size(n: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


# -- the page ------------------------------------------------------------------------------------


def build_report(path: str | Path) -> str:
    """The HTML report of a run directory, as a string.

    Raises:
        RunDirectoryError: the folder is missing, not a run directory or damaged.
    """
    summary = summarize_run(path)
    sections = [
        _title(summary),
        _metrics(summary),
        _learning_curves(summary),
        _figures(summary),
        _data(summary),
        _previews(summary),
        _configuration(summary),
        _environment(summary),
        _files(summary),
    ]
    generated = time.strftime("%Y-%m-%d %H:%M:%S")
    body = "\n".join(s for s in sections if s)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(summary.task)} run {_e(summary.name)} — neurodl report</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n<main>\n{body}\n"
        f"<footer>Written by neurodl {_e(__version__)} on {_e(generated)} from the files of the run "
        f"directory (<code>neurodl report {_e(summary.path)}</code> writes it again).</footer>\n"
        "</main>\n</body>\n</html>\n"
    )


def write_report(path: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of the run in ``path`` to ``out`` (default ``RUN/report.html``), atomically.

    Example:
        >>> write_report("runs/dx")
        PosixPath('runs/dx/report.html')
    """
    text = build_report(path)
    target = Path(out) if out is not None else Path(path) / REPORT_FILE
    return write_text_atomic(target, text)
