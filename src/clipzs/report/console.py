"""The text the CLI prints: `eval`'s summary, `select`'s choices and `compare`'s test (accuracies in %).

Imports nothing heavier than numpy, so printing a summary never pays for matplotlib.
"""

from __future__ import annotations

from ..results import CompareResult, EvalResult, Row, SelectResult, subset_label
from .views import (
    BEST_PER_METHOD,
    all_template_rows,
    best_per_method,
    interval_lines,
    level_label,
    method_groups,
    run_lines,
    run_notes,
    shown_path,
    subsets,
    template_text,
)

MATRIX_SUBSETS = 63  # every subset is printed as a row of the method matrix up to 6 templates (63 subsets)
CI_WIDTH = 16
OPTIMISTIC = "chosen on these same images: optimistic, see `clipzs select`"


def _pct(value: float | None) -> str:
    return "  -   " if value is None else f"{100 * value:6.2f}"


def _ci(ci: tuple[float, float] | None) -> str:
    return "-" if ci is None else f"[{100 * ci[0]:5.2f}, {100 * ci[1]:5.2f}]"


def _metrics_head(result: EvalResult) -> str:
    return f"{'acc1':>6}  {level_label(result) + ' CI':<{CI_WIDTH}} {'acc5':>6}  {'mpcr':>6}"


def _metrics(row: Row) -> str:
    return f"{_pct(row.acc1)}  {_ci(row.acc1_ci):<{CI_WIDTH}} {_pct(row.acc5)}  {_pct(row.mean_per_class_recall)}"


def _matrix(result: EvalResult) -> list[str]:
    """acc1 of every template subset (rows) by method (columns)."""
    groups = method_groups(result)
    widths = {m: max(9, len(m) + 2) for m in groups}
    acc = {(m, row.templates): row.acc1 for m, group in groups.items() for row in group}
    lines = [f"{'templates':<16}" + "".join(f"{m:>{widths[m]}}" for m in groups)]
    for subset in subsets(result):
        cells = "".join(f"{_pct(acc.get((m, subset))):>{widths[m]}}" for m in groups)
        lines.append(f"{subset_label(subset):<16}{cells}")
    return lines


def _method_rows(result: EvalResult, chosen: dict[str, list[Row]]) -> list[str]:
    """A line per row; a subset of every template shows as `all N`, not as N numbers (80 for ImageNet's set)."""
    everything = tuple(range(len(result.single)))
    lines = [f"{'method':<18} {_metrics_head(result)}  templates"]
    for method, group in chosen.items():
        for row in group:
            templates = f"all {len(everything)}" if row.templates == everything else subset_label(row.templates)
            lines.append(f"{method:<18} {_metrics(row)}  {templates}")
    return lines


def _ensembles(result: EvalResult, best: int) -> list[str]:
    """The ensembles: a matrix of every subset when it fits, else each method's best subsets and all templates."""
    found = subsets(result)
    if not found:
        return []
    if len(found) == 1:
        everything = found[0] == tuple(range(len(result.single)))
        title = "ensembles of all templates" if everything else f"ensembles of templates {subset_label(found[0])}"
        return ["", title, "", *_method_rows(result, method_groups(result))]
    if len(found) <= MATRIX_SUBSETS:
        return [
            "",
            f"acc1 of every template subset (rows) by method (columns); the best of each column was {OPTIMISTIC}",
            "",
            *_matrix(result),
            "",
            f"the best template subset of each method, {OPTIMISTIC}",
            "",
            *_method_rows(result, best_per_method(result, 1)),
        ]
    lines = [
        "",
        f"the best {best} of the {len(found)} template subsets of each method by acc1 (the matrix of every subset "
        f"is printed up to {MATRIX_SUBSETS} subsets, 6 templates), {OPTIMISTIC}",
        "",
        *_method_rows(result, best_per_method(result, best)),
    ]
    full = all_template_rows(result)
    if full:
        lines += [
            "",
            f"every method on all {len(result.single)} templates",
            "",
            *_method_rows(result, {m: [row] for m, row in full.items()}),
        ]
    return lines


def format_summary(result: EvalResult, best: int = BEST_PER_METHOD) -> str:
    """`clipzs eval`'s summary: the run, each template, the ensembles, the paired test, the cache and the time."""
    run = result.run
    lines = [*run_lines(run), "", f"{'#':>3}  {_metrics_head(result)}  template"]
    lines += [f"{i:>3}  {_metrics(row)}  {template_text(result, row)}" for i, row in enumerate(result.single, 1)]
    lines += _ensembles(result, best)
    for c in result.comparisons:
        lines += [
            "",
            f"McNemar {c.a} vs {c.b}: {100 * c.acc1_a:.2f}% vs {100 * c.acc1_b:.2f}%, {c.a_only} images right only "
            f"in the first, {c.b_only} only in the second, p = {c.p_value:.3g}",
        ]
    lines += ["", *interval_lines(result)]
    if run.encoded:
        prompts = len(run.templates) * len(run.classes)
        lines.append(
            f"encoded now: {run.encoded.get('images', 0)} of {run.num_images + len(run.skipped)} images, "
            f"{run.encoded.get('prompts', 0)} of {prompts} prompts (the rest came from the feature cache)"
        )
    seconds = ", ".join(f"{k} {v:.1f}" for k, v in run.seconds.items())
    lines.append("accuracies in %; mpcr = mean per-class recall" + (f"; seconds: {seconds}" if seconds else ""))
    return "\n".join(lines)


CHOOSERS = (
    ("greedy", "greedy forward"),
    ("best_subset", "best subset"),
    ("all_templates", "all templates"),
    ("test_set_best", "test-set best"),
)


def format_selection(result: SelectResult) -> str:
    """`clipzs select`: each chooser's subset, its accuracy where it was chosen, and on the evaluation images."""
    run, sel = result.run, result.selection
    lines = [
        f"templates chosen on {sel.num_images} images of {run.dataset}/{sel.split} (seed {sel.seed}), reported on "
        f"{run.num_images} other images of {run.dataset}/{run.split}; {shown_path(run.model)} "
        f"({shown_path(run.pretrained)}, {run.precision})",
        *run_notes(run),
        "",
        f"{'method':<12} {'chooser':<15} {'templates':<22} {'chosen on':>9}  acc1 [95% CI] on evaluation images",
    ]
    for selection in result.methods:
        for key, name in CHOOSERS:
            choice = getattr(selection, key)
            if choice is None:
                continue
            chosen = " " * 9 if choice.selection_acc1 is None else f"{100 * choice.selection_acc1:8.2f}%"
            note = "  (optimistic: chosen on the evaluation images)" if choice.optimistic else ""
            lines.append(
                f"{selection.method:<12} {name:<15} {subset_label(choice.templates):<22} {chosen}  "
                f"{_pct(choice.acc1)} {_ci(choice.acc1_ci)}{note}"
            )
        if selection.note:
            lines.append(f"{selection.method:<12} note: {selection.note}")
    return "\n".join(lines)


def format_comparison(result: CompareResult) -> str:
    """`clipzs compare`: both accuracies with intervals and the exact McNemar test."""
    run, a, b = result.run, result.a, result.b
    return "\n".join(
        [
            f"{run.dataset}/{run.split}: {run.num_images} images; {shown_path(run.model)}",
            *run_notes(run),
            f"A {a.label:<24} acc1 {_pct(a.acc1)} {_ci(a.acc1_ci)}",
            f"B {b.label:<24} acc1 {_pct(b.acc1)} {_ci(b.acc1_ci)}",
            f"right only with A: {result.a_only}, only with B: {result.b_only}; exact McNemar p = {result.p_value:.3g}",
        ]
    )
