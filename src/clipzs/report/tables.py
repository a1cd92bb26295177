"""The results as tables: `results.csv` (every row, full precision) and `summary.md` (the rows worth reading).

`tables` builds plain-text tables once; markdown here and the HTML page both render them.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

from ..results import EvalResult, Row, subset_label
from .views import (
    BEST_PER_METHOD,
    all_rows,
    all_template_rows,
    best_line,
    best_per_method,
    interval_lines,
    level_label,
    run_lines,
    subsets,
    template_text,
)

METRICS = ("acc1", "acc5", "mean_per_class_recall")
METRIC_LABELS = {"acc1": "acc1", "acc5": "acc5", "mean_per_class_recall": "mpcr"}
INTERVALS = ("acc1_ci", "acc5_ci")
# left-aligned table columns
TEXT_COLUMNS = frozenset({"template", "method", "templates", "A", "B", "dataset", "model", "headline", "best"})
FOOTER = "Accuracies in %; mpcr = mean per-class recall; templates are 1-based."


def interval_fields(result: EvalResult) -> list[str]:
    """The interval fields (`acc1_ci`, `acc5_ci`) that at least one row has."""
    return [key for key in INTERVALS if any(getattr(row, key) is not None for row in all_rows(result))]


def csv_rows(result: EvalResult) -> list[dict[str, object]]:
    """One row per single template, then per ensemble; templates 1-based joined by '+'; a missing value is ''."""
    keys = interval_fields(result)

    def row(src: Row) -> dict[str, object]:
        single = src.method is None
        out: dict[str, object] = {
            "kind": "single" if single else "ensemble",
            "method": src.method or "",
            "templates": "+".join(str(t + 1) for t in src.templates),
            "template": template_text(result, src) if single else "",
        }
        out.update({m: getattr(src, m) for m in METRICS})
        for key in keys:
            out[f"{key}_lo"], out[f"{key}_hi"] = getattr(src, key) or (None, None)
        return {k: "" if v is None else v for k, v in out.items()}

    return [row(r) for r in all_rows(result)]


def format_csv(result: EvalResult) -> str:
    """`results.csv`: `csv_rows` with floats at full precision (`repr`), so they parse back to the JSON values."""
    return csv_text(csv_rows(result))


def csv_text(rows: list[dict]) -> str:
    """CSV of dict rows, the first row's keys as the header."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


@dataclass(frozen=True)
class Table:
    """A titled table of plain-text cells."""

    title: str
    header: list[str]
    rows: list[list[str]]


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _fmt_ci(value: tuple[float, float] | None) -> str:
    return "–" if value is None else f"{100 * value[0]:.2f}–{100 * value[1]:.2f}"


def tables(result: EvalResult, best: int = BEST_PER_METHOD) -> dict[str, Table]:
    """`single` templates; `best_subsets` of each method (when subsets were swept); each method on
    `all_templates`; the paired `comparisons`. Cells are plain text, accuracies in %, '–' where missing."""
    keys = interval_fields(result)
    metric_head = [METRIC_LABELS[m] for m in METRICS]
    metric_head += [f"{METRIC_LABELS[k.removesuffix('_ci')]} {level_label(result)} CI" for k in keys]

    def cells(row: Row) -> list[str]:
        return [_fmt(getattr(row, m)) for m in METRICS] + [_fmt_ci(getattr(row, k)) for k in keys]

    out = {
        "single": Table(
            "Single templates",
            ["#", "template", *metric_head],
            [[str(i), template_text(result, row), *cells(row)] for i, row in enumerate(result.single, 1)],
        )
    }
    if result.swept():
        shown = min(best, len(subsets(result)))
        out["best_subsets"] = Table(
            f"Best {shown} template subsets per method (by acc1; chosen on these same images, so optimistic: "
            "`clipzs select` chooses on held-out images)",
            ["method", "rank", "templates", *metric_head],
            [
                [method, str(rank), subset_label(row.templates), *cells(row)]
                for method, group in best_per_method(result, best).items()
                for rank, row in enumerate(group, 1)
            ],
        )
    full = all_template_rows(result)
    if full:
        out["all_templates"] = Table(
            "All templates, per method", ["method", *metric_head], [[m, *cells(row)] for m, row in full.items()]
        )
    if result.comparisons:
        out["comparisons"] = Table(
            "Paired test (exact McNemar)",
            ["A", "B", "acc1 A", "acc1 B", "right only with A", "right only with B", "p"],
            [
                [c.a, c.b, _fmt(c.acc1_a), _fmt(c.acc1_b), str(c.a_only), str(c.b_only), f"{c.p_value:.3g}"]
                for c in result.comparisons
            ],
        )
    return out


def header_lines(result: EvalResult) -> list[str]:
    """The facts above the tables of `summary.md` and `report.html`."""
    best = best_line(result)
    return [*run_lines(result.run), *([best] if best else []), *interval_lines(result)]


def _md_cell(text: str) -> str:
    """Text as a markdown code span inside a table cell: pipes escaped, a fence longer than any backtick run."""
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text.replace('|', chr(92) + '|')}{pad}{fence}"


def markdown_table(table: Table, code: frozenset[str] = frozenset({"template", "method"})) -> list[str]:
    """`table` as markdown lines: text columns left-aligned, numbers right; cells of `code` columns as code."""
    lines = [
        "| " + " | ".join(table.header) + " |",
        "|" + "|".join("---" if h in TEXT_COLUMNS else "---:" for h in table.header) + "|",
    ]
    for row in table.rows:
        cells = [_md_cell(c) if h in code else c.replace("|", "\\|") for c, h in zip(row, table.header, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def format_markdown(result: EvalResult) -> str:
    """`summary.md`: the header lines, then `tables` as markdown (templates and method names as code spans)."""
    run = result.run
    lines = [f"# clipzs report: {run.dataset}/{run.split}", ""]
    lines += [f"- {line}" for line in header_lines(result)]
    for table in tables(result).values():
        lines += ["", f"## {table.title}", "", *markdown_table(table)]
    return "\n".join([*lines, "", FOOTER, ""])
