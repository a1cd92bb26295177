"""Several evaluations at once (a datasets x models grid run): one table line per (dataset, model) with the
headline row and the best method, as CSV and markdown, and a heat map of the best method's acc1.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ClipzsError
from ..results import EvalResult, Row
from ..storage import write_atomic
from .plots import plain, to_png
from .tables import Table, csv_text, markdown_table
from .views import best_label, shown_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

GRID_FILES = {"csv": "grid.csv", "markdown": "grid.md", "heatmap": "grid.png"}
OPTIMISTIC_NOTE = "* chosen among swept template subsets on these same images: optimistic (see `clipzs select`)"


def _dataset(result: EvalResult) -> str:
    return f"{result.run.dataset}/{result.run.split}"


def _models(results: Sequence[EvalResult]) -> list[str]:
    """Each result's model as a column name: with its pretrained weights where one model has several, and numbered
    (`m.json [2]`) where config files in other folders share a file name (a report shows no folder)."""
    weights: dict[str, set[str]] = {}
    for r in results:
        weights.setdefault(r.run.model, set()).add(r.run.pretrained)
    sharing: dict[str, list[str]] = {}  # a shown name -> the models shown so, in order
    for model in weights:
        sharing.setdefault(shown_path(model), []).append(model)
    names = []
    for r in results:
        same = sharing[shown_path(r.run.model)]
        name = shown_path(r.run.model) + (f" [{same.index(r.run.model) + 1}]" if len(same) > 1 else "")
        names.append(name + (f" ({shown_path(r.run.pretrained)})" if len(weights[r.run.model]) > 1 else ""))
    return names


def _templates(row: Row) -> str:
    return "+".join(str(t + 1) for t in row.templates)


def _headline_name(result: EvalResult, row: Row) -> str:
    """`embedding, all 18 templates` for the usual headline, else the row's label."""
    if row.method is not None and row.templates == tuple(range(len(result.single))):
        return f"{row.method}, all {len(result.single)} templates"
    return row.label


def grid_rows(results: Sequence[EvalResult]) -> list[dict[str, object]]:
    """One row per result: what was evaluated, the headline row's metrics, the best ensemble and its acc1 (a
    missing value is ''). ClipzsError if two results share a (dataset, model) cell."""
    out, seen = [], set()
    for result, model in zip(results, _models(results), strict=True):
        if (_dataset(result), model) in seen:
            raise ClipzsError(f"two results for {_dataset(result)} x {model}: give each (dataset, model) once")
        seen.add((_dataset(result), model))
        head, best, ci = result.headline(), result.best, result.headline().acc1_ci or ("", "")
        out.append(
            {
                "dataset": result.run.dataset,
                "split": result.run.split,
                "model": model,
                "images": result.run.num_images,
                "classes": len(result.run.classes),
                "templates": len(result.single),
                "headline_method": head.method or "",
                "headline_templates": _templates(head),
                "acc1": head.acc1,
                "acc1_ci_lo": ci[0],
                "acc1_ci_hi": ci[1],
                "acc5": "" if head.acc5 is None else head.acc5,
                "mean_per_class_recall": head.mean_per_class_recall,
                "best_method": best.method if best else "",
                "best_templates": "+".join(str(t + 1) for t in best.templates) if best else "",
                "best_acc1": best.acc1 if best else "",
                "best_optimistic": result.swept() if best else "",
            }
        )
    return out


def format_grid_csv(results: Sequence[EvalResult]) -> str:
    """`grid.csv`: `grid_rows` with floats at full precision."""
    return csv_text(grid_rows(results))


def _pct(value: object) -> str:
    return "–" if value == "" else f"{100 * float(value):.2f}"


def grid_table(results: Sequence[EvalResult]) -> Table:
    """The grid as a plain-text table (accuracies in %; the best's acc1 starred when optimistic)."""
    rows = []
    for result, row in zip(results, grid_rows(results), strict=True):
        star = "*" if row["best_optimistic"] is True else ""
        rows.append(
            [
                _dataset(result),
                str(row["model"]),
                str(row["images"]),
                _headline_name(result, result.headline()),
                _pct(row["acc1"]),
                _pct(row["acc5"]),
                _pct(row["mean_per_class_recall"]),
                best_label(result),
                _pct(row["best_acc1"]) + star,
            ]
        )
    header = ["dataset", "model", "images", "headline", "acc1", "acc5", "mpcr", "best", "best acc1"]
    return Table("Datasets x models: the headline row (CLIP_benchmark's) and the best ensemble", header, rows)


def format_grid_markdown(results: Sequence[EvalResult]) -> str:
    """`grid.md`: the grid table, with the note on optimistic bests when any result swept subsets."""
    table = grid_table(results)
    lines = [f"# {table.title}", "", *markdown_table(table, frozenset({"headline", "best"}))]
    if any(r.swept() and r.best for r in results):
        lines += ["", OPTIMISTIC_NOTE]
    return "\n".join([*lines, "", "Accuracies in %; mpcr = mean per-class recall; templates are 1-based.", ""])


def plot_grid(results: Sequence[EvalResult]) -> Figure:
    """Heat map of datasets (rows) x models (columns): the best ensemble's name and acc1 in each cell."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    models = _models(results)
    datasets = list(dict.fromkeys(_dataset(r) for r in results))
    columns = list(dict.fromkeys(models))
    acc = np.full((len(datasets), len(columns)), np.nan)
    text = np.full(acc.shape, "not run", dtype=object)
    for result, model in zip(results, models, strict=True):
        i, j = datasets.index(_dataset(result)), columns.index(model)
        best = result.best
        if best is None:
            lines, value = [result.headline().label], result.headline().acc1
        else:
            lines, value = [best.method, best_label(result).removeprefix(best.method)], best.acc1
        star = "*" if best and result.swept() else ""
        acc[i, j] = 100 * value
        text[i, j] = "\n".join([*(plain(line, 24) for line in lines), f"{100 * value:.2f}%{star}"])
    fig = Figure(figsize=(2.0 + 2.1 * len(columns), 1.4 + 0.9 * len(datasets)), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(acc), cmap=cmap, aspect="auto", vmin=0, vmax=100)
    for (i, j), label in np.ndenumerate(text):
        dark = np.isnan(acc[i, j]) or acc[i, j] > 60
        ax.text(j, i, label, ha="center", va="center", fontsize=8, color="black" if dark else "white")
    ax.set_xticks(range(len(columns)), [plain(c, 30) for c in columns], rotation=20, ha="right")
    ax.set_yticks(range(len(datasets)), [plain(d, 30) for d in datasets])
    title = "Best ensemble and its top-1 accuracy per dataset and model"
    if any(r.swept() and r.best for r in results):
        title += "\n* chosen on the evaluation images: optimistic"
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="top-1 accuracy (%)")
    return fig


def write_grid(results: Sequence[EvalResult], out_dir: str | Path) -> dict[str, Path]:
    """Write grid.csv, grid.md and grid.png into `out_dir` (created if needed), each atomically; return the
    paths by key (csv, markdown, heatmap)."""
    if not results:
        raise ClipzsError("no results to put in a grid")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "csv": format_grid_csv(results).encode(),
        "markdown": format_grid_markdown(results).encode(),
        "heatmap": to_png(plot_grid(results)),
    }
    paths = {key: out / GRID_FILES[key] for key in data}
    for key, payload in data.items():
        write_atomic(paths[key], payload)
    return paths
