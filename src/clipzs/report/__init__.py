"""Human-readable views of the typed results: the terminal text (`console`), CSV and markdown (`tables`), PNG plots
(`plots`), one self-contained HTML page (`html`) and a datasets x models grid (`grid`).

Every function is a pure function of the results except the writers, `write_report` and `write_grid`, which write
each file atomically. matplotlib is imported only when a plot is drawn, so printing a summary never imports it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ClipzsError, ClipzsWarning
from ..results import EvalResult, Result, write_result
from ..storage import write_atomic
from .console import format_comparison, format_selection, format_summary
from .grid import format_grid_csv, format_grid_markdown, plot_grid, write_grid
from .html import evaluated_positions, format_html
from .plots import PLOTS, plot_pngs
from .tables import format_csv, format_markdown

if TYPE_CHECKING:
    from ..sources.base import ImageSource

REPORT_FILES = {"json": "results.json", "csv": "results.csv", "markdown": "summary.md", "html": "report.html"}
WHAT = {"select": "templates chosen on held-out images", "compare": "two classifiers compared"}


def require_eval(result: Result, source: str = "this") -> EvalResult:
    """`result` if it is an evaluation; else a one-line ClipzsError saying what `source` holds and what a report
    needs."""
    if isinstance(result, EvalResult):
        return result
    what = WHAT.get(result.KIND, result.KIND)
    raise ClipzsError(
        f"{source} is the result of `clipzs {result.KIND}` ({what}); a report needs the result of `clipzs eval` "
        "(its --out JSON)"
    )


def write_report(result: Result, out_dir: str | Path, images: ImageSource | None = None) -> dict[str, Path]:
    """Write results.json, results.csv, summary.md, one PNG per plot and report.html into `out_dir` (created if
    needed) and return their paths by key (json, csv, markdown, html, and each plot's name).

    `images` is the source the evaluated images came from (skipped ones included), for the page's examples.
    Everything is computed before the first file is written, and each file is replaced atomically, so a failure
    leaves every report file either old or new, never truncated.
    """
    result = require_eval(result)
    if images is not None:
        try:
            evaluated_positions(result, images)  # the cheap check before the plots
        except ClipzsError as e:
            warnings.warn(ClipzsWarning(f"report without example images: {e}"), stacklevel=2)
            images = None
    plots = plot_pngs(result)
    data = {
        "csv": format_csv(result).encode(),
        "markdown": format_markdown(result).encode(),
        "html": format_html(result, plots, images).encode(),
        **plots,
    }
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ClipzsError(f"cannot write the report to {out}: {e.strerror or e}") from e
    paths = {"json": out / REPORT_FILES["json"]}
    write_result(result, paths["json"])
    for key, payload in data.items():
        paths[key] = out / REPORT_FILES.get(key, f"{key}.png")
        write_atomic(paths[key], payload)
    return paths


__all__ = [
    "PLOTS",
    "REPORT_FILES",
    "format_comparison",
    "format_csv",
    "format_grid_csv",
    "format_grid_markdown",
    "format_html",
    "format_markdown",
    "format_selection",
    "format_summary",
    "plot_grid",
    "plot_pngs",
    "require_eval",
    "write_grid",
    "write_report",
]
